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
import { CPU_TASK_QUEUE, type PipelineResult } from '../../contract';
import { settings } from '../../infra/config';
import { distillationPipeline } from '../../workflows';
import { log, number } from '../shared/options';
import { specFromFlags, type RunFlags } from '../shared/spec-flags';
import { openServices, type Services } from '../shared/services';
import { describeFailure, follow } from '../shared/progress';

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
    .option('--batch-size <n>', 'training batch size', number('--batch-size'))
    .option('--learning-rate <lr>', 'peak learning rate', number('--learning-rate'))
    .option('--fraction <f>', 'fraction of the training split to use', number('--fraction'))
    .option('--seed <n>', 'seed for sampling and training', number('--seed'))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(BACKENDS))
    .option('--store <location>', 'artifact store: a folder, file:///path or s3://bucket/prefix (env STEPWISE_STORE)')
    .option('--id <workflowId>', 'workflow id (default stepwise-<name>-<timestamp>)')
    .option('--detach', 'print the run id and return (needs TEMPORAL_ADDRESS)')
    .option('--json', 'print the result as one JSON line')
    .action(async (file: string | undefined, flags: RunFlags) => runPipeline(file, flags));
}

/** Exit code 2 for anything refused before a run starts (a bad spec, a flag that cannot work), 1 for a failed run. */
async function runPipeline(file: string | undefined, flags: RunFlags): Promise<void> {
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
  const workflowId = flags.id ?? `stepwise-${spec.name}-${new Date().toISOString().replace(/[-:.]/g, '').slice(0, 15)}`;
  const started = Date.now();
  const services = await openServices(store);
  try {
    const handle = await services.client.workflow.start(distillationPipeline, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId,
      args: [spec],
    });
    if (flags.detach) {
      console.log(flags.json ? JSON.stringify({ workflowId, runId: handle.firstExecutionRunId }) : workflowId);
      return;
    }
    log(`stepwise: run ${workflowId} started`);
    let result: PipelineResult;
    try {
      result = await follow(handle, Boolean(flags.json));
    } catch (err) {
      log(`stepwise: run ${workflowId} failed: ${describeFailure(err)}`);
      process.exitCode = 1;
      return;
    }
    const wallSeconds = Number(((Date.now() - started) / 1000).toFixed(1));
    const link = services.uiUrl
      ? `${services.uiUrl}/namespaces/${services.namespace}/workflows/${workflowId}`
      : undefined;
    if (flags.json) console.log(JSON.stringify({ ...result, wallSeconds, temporalUi: link, store }));
    else printResult(result, services, link, wallSeconds);
  } finally {
    await services.stop();
  }
}

/** The spec from the file and flags, checked; undefined (with the reason printed) when it is refused. */
async function validSpec(file: string | undefined, flags: RunFlags): Promise<PipelineSpec | undefined> {
  const specInput = await specFromFlags(file, flags);
  try {
    return parseSpec(specInput);
  } catch (err) {
    if (!(err instanceof SpecError)) throw err;
    log(`stepwise run: invalid spec: ${err.message}`);
    process.exitCode = 2;
    return undefined;
  }
}

function printResult(result: PipelineResult, services: Services, link: string | undefined, wallSeconds: number) {
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  console.log('');
  console.log(`Registered model ${result.name} version ${result.version}`);
  console.log(
    `  test accuracy   ${pct(result.accuracy)} (${result.correct}/${result.total}); majority-class baseline ${pct(result.majorityBaseline)}` +
      (result.teacherAccuracy === undefined ? '' : `; teacher ${pct(result.teacherAccuracy)}`)
  );
  console.log(`  run id          ${result.workflowId} (Temporal run ${result.runId})`);
  console.log(`  student backend ${result.backend}`);
  console.log(`  manifest        ${result.manifestUri}`);
  console.log(`  checkpoint      ${result.checkpointUri}`);
  if (link) console.log(`  Temporal UI     ${link}  (run \`npx stepwise dev\` to browse it after this exits)`);
  else console.log(`  Temporal        namespace ${services.namespace}, workflow ${result.workflowId}`);
  console.log(`  wall time       ${wallSeconds.toFixed(1)} s`);
}
