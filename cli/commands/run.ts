/**
 * `stepwise run`: start a distillation pipeline and follow it to its registered model.
 */
import { Command, Option } from 'commander';
import {
  BACKENDS,
  BENCHMARK_TASKS,
  METHODS,
  PRESETS,
  TEACHER_KINDS,
  TEACHER_MODES,
  parseSpec,
  SpecError,
  type PipelineSpec,
} from '../../lib/pipeline/spec';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import { CPU_TASK_QUEUE } from '../../contract';
import { settings } from '../../infra/config';
import { checkSpecPaths } from '../../lib/data/roots';
import { InputError } from '../../lib/errors';
import { checkRunId } from '../../lib/registry/names';
import { distillationPipeline } from '../../workflows';
import { log, number } from '../shared/options';
import { specFromFlags, type RunFlags } from '../shared/spec-flags';
import { openServices, type Services } from '../shared/services';
import { followToEnd } from '../shared/progress';
import { runWorkflowId } from '../../lib/pipeline/run-identity';
import type { InterruptedRun } from '../../workers/interrupted';
import { startPipelineRun } from '../../workers/search-attributes';

export function addRunCommand(program: Command): void {
  program
    .command('run')
    .description('start a distillation pipeline and follow it (embedded services unless TEMPORAL_ADDRESS is set)')
    .argument('[spec]', 'pipeline spec (JSON file); flags override its fields; the demo when omitted')
    .option('--demo', 'the zero-config demo: a generated task, the scripted teacher, the tiny student')
    .option('--name <name>', 'registry model name')
    .option('--data-dir <dir>', 'dataset in the reference layout (<dir>/<task>/<task>_<split>.json)')
    .addOption(new Option('--task <task>', 'benchmark task of --data-dir').choices(BENCHMARK_TASKS))
    .option('--train <file>', 'JSONL training data (fields input, label)')
    .option('--test <file>', 'JSONL test data')
    .addOption(new Option('--teacher <kind>', 'teacher kind').choices(TEACHER_KINDS))
    .option('--teacher-url <url>', 'OpenAI-compatible base URL (key from OPENAI_API_KEY)')
    .option('--teacher-model <model>', 'teacher model name')
    .addOption(
      new Option('--teacher-mode <mode>', "'batch' uses the provider's batch API (OpenAI /v1/batches)").choices(
        TEACHER_MODES
      )
    )
    .option('--teacher-concurrency <n>', 'teacher requests in flight at once', number('--teacher-concurrency'))
    .option('--requests-per-minute <n>', 'client-side teacher request limit', number('--requests-per-minute'))
    .option('--tokens-per-minute <n>', 'client-side teacher token limit', number('--tokens-per-minute'))
    .option(
      '--samples <k>',
      'self-consistency: teacher samples per example (needs temperature > 0)',
      number('--samples')
    )
    .option('--max-cost <usd>', 'stop sending teacher calls once this many dollars are spent', number('--max-cost'))
    .option('--prices <file>', 'JSON price list: { "<model>": { "inputPerMillionTokens", "outputPerMillionTokens" } }')
    .addOption(new Option('--method <method>').choices(METHODS))
    .option('--alpha <alpha>', 'label-loss weight', number('--alpha'))
    .addOption(new Option('--preset <preset>', 'student size').choices(PRESETS))
    .option('--steps <n>', 'training steps', number('--steps'))
    .option(
      '--checkpoint-every <n>',
      'training steps between resume checkpoints (at most this many are redone after a crash)',
      number('--checkpoint-every')
    )
    .option('--batch-size <n>', 'training batch size', number('--batch-size'))
    .option('--learning-rate <lr>', 'peak learning rate', number('--learning-rate'))
    .option('--fraction <f>', 'fraction of the training split to use', number('--fraction'))
    .option('--seed <n>', 'seed for sampling and training', number('--seed'))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(BACKENDS))
    .option('--store <location>', 'artifact store: a folder, file:///path or s3://bucket/prefix (env STEPWISE_STORE)')
    .option(
      '--id <workflowId>',
      'workflow id (default stepwise-<name>-<hash of the spec and its data>: the same spec attaches to its run)'
    )
    .option('--new-run', 'a new run even if this spec already completed on this data (the id gets a timestamp)')
    .option('--detach', 'print the run id and return (needs TEMPORAL_ADDRESS)')
    .option('--json', 'print the result as one JSON line')
    .option('--verbose', "embedded: also print the dev server's output and the workers' logs (always in <state>/logs)")
    .action(async (file: string | undefined, flags: RunFlags & { verbose?: boolean }) => runPipeline(file, flags));
}

/** Exit code 2 for anything refused before a run starts (a bad spec, a flag that cannot work), 1 for a failed run. */
async function runPipeline(file: string | undefined, flags: RunFlags & { verbose?: boolean }): Promise<void> {
  const spec = await validSpec(file, flags);
  if (!spec) return;
  if (flags.detach && !settings().clusterConfigured) {
    log(
      'stepwise run --detach needs a Temporal cluster (set TEMPORAL_ADDRESS): the embedded server stops with this process'
    );
    process.exitCode = 2;
    return;
  }
  const store = flags.store ?? settings().store;
  // An id becomes a store key segment (runs/<id>/…): refuse one that would escape it before anything starts.
  if (flags.id !== undefined) checkRunId(flags.id, '--id');
  const workflowId = flags.id ?? (await runWorkflowId(spec)) + (flags.newRun ? `-${timestamp()}` : '');
  const started = Date.now();
  const services = await openServices(store, { verbose: flags.verbose });
  try {
    const others = services.interrupted.filter((r) => r.workflowId !== workflowId);
    if (others.length > 0) {
      log(
        `stepwise: ${others.length} interrupted run(s) in ${services.where} continue alongside this one while it ` +
          `runs: ${others.map((r) => r.workflowId).join(', ')} (\`stepwise resume <id>\` follows one to its end)`
      );
    }
    const { handle, runId } = await startOrAttach(services, spec, workflowId);
    if (flags.detach) {
      console.log(flags.json ? JSON.stringify({ workflowId, runId }) : workflowId);
      return;
    }
    await followToEnd(handle, services, { json: Boolean(flags.json), started, store });
    await reportUnfinished(services, others);
  } finally {
    await services.stop();
  }
}

const timestamp = () => new Date().toISOString().replace(/[-:.]/g, '').slice(0, 15);

/**
 * Starts the run, or attaches to the one with this id: a run in flight is followed (USE_EXISTING), a completed one
 * is reported rather than trained again (same spec, same data, same deterministic training: `--new-run` trains anyway),
 * and one that failed, was cancelled or was terminated is started afresh (ALLOW_DUPLICATE_FAILED_ONLY).
 */
async function startOrAttach(services: Services, spec: PipelineSpec, workflowId: string) {
  const before = await services.client.workflow
    .getHandle(workflowId)
    .describe()
    .catch(() => undefined);
  try {
    // With its search attributes where the cluster has them (workers/search-attributes.ts), so `stepwise runs ls`
    // and `temporal workflow list --query` find it from its first second.
    const handle = await startPipelineRun(
      services.client,
      spec,
      {
        taskQueue: CPU_TASK_QUEUE,
        workflowId,
        workflowIdConflictPolicy: 'USE_EXISTING',
        workflowIdReusePolicy: 'ALLOW_DUPLICATE_FAILED_ONLY',
      },
      log
    );
    if (before?.status.name === 'RUNNING') {
      log(`stepwise: run ${workflowId} (started ${before.startTime.toISOString()}) is in flight: resuming it`);
    } else {
      log(`stepwise: run ${workflowId} started`);
    }
    return { handle, runId: handle.firstExecutionRunId };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    log(
      `stepwise: run ${workflowId} already completed this spec on this data: its result follows ` +
        '(--new-run trains it again)'
    );
    const handle = services.client.workflow.getHandle<typeof distillationPipeline>(workflowId);
    return { handle, runId: (await handle.describe()).runId };
  }
}

/** Interrupted runs this process served but did not finish stay open in the state, for a later command. */
async function reportUnfinished(services: Services, runs: InterruptedRun[]): Promise<void> {
  for (const run of runs) {
    const status = await services.client.workflow
      .getHandle(run.workflowId)
      .describe()
      .then((d) => d.status.name)
      .catch(() => undefined);
    if (status === 'RUNNING')
      log(`stepwise: run ${run.workflowId} is not finished: \`stepwise resume ${run.workflowId}\``);
  }
}

/**
 * The spec from the file and flags, checked; undefined (with the reason printed) when it is refused. Embedded, the
 * workers are this process, so the files the spec names are checked here too: a missing data folder is refused in a
 * second, before the services start, rather than as a failed first stage.
 */
async function validSpec(file: string | undefined, flags: RunFlags): Promise<PipelineSpec | undefined> {
  try {
    const spec = parseSpec(await specFromFlags(file, flags));
    if (!settings().clusterConfigured) await checkSpecPaths(spec, settings().dataRoots);
    return spec;
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    log(`stepwise run: ${err instanceof SpecError ? 'invalid spec: ' : ''}${err.message}`);
    process.exitCode = 2;
    return undefined;
  }
}
