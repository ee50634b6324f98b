/**
 * `stepwise`: run distillation pipelines, serve workers, start dev services, check recorded teacher outputs.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { demoSpec, parseSpec, SpecError, type PipelineSpecInput } from '../lib/pipeline/spec';
import { openStore } from '../lib/store';
import { listModels, listVersions, getVersion } from '../lib/registry/registry';
import { validateRecorded } from '../lib/data/validate';
import { InputError } from '../lib/errors';
import { setup } from '../infra/setup';
import { ensureCudaLibraries, withCudaLibraryPath } from '../infra/cuda';
import { freePort } from '../infra/cache';
import { startTemporalDevServer } from '../infra/temporal';
import { startS3Server, ensureBucket } from '../infra/s3-server';
import { clusterConfigured, temporalTarget } from '../workers/connection';
import { connectTemporal, runWorker, type QueueKind } from '../workers/pipeline-worker';
import { defaultStoreLocation, startEmbedded, stateDir } from '../workers/embedded';
import { CPU_TASK_QUEUE, progressQuery, type PipelineProgress } from '../workflows/definitions';
import type { PipelineResult } from '../workflows/distillation-pipeline';
import { join } from 'node:path';

const log = (line: string) => process.stderr.write(`${line}\n`);

function number(name: string) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got '${value}'`);
    return n;
  };
}

interface RunFlags {
  demo?: boolean;
  name?: string;
  dataDir?: string;
  task?: string;
  train?: string;
  test?: string;
  teacher?: string;
  teacherUrl?: string;
  teacherModel?: string;
  teacherMode?: string;
  teacherConcurrency?: number;
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  samples?: number;
  maxCost?: number;
  prices?: string;
  method?: string;
  alpha?: number;
  preset?: string;
  steps?: number;
  batchSize?: number;
  learningRate?: number;
  fraction?: number;
  seed?: number;
  backend?: string;
  store?: string;
  detach?: boolean;
  json?: boolean;
  id?: string;
}

/** A spec from a file (if given), the demo otherwise, with flags layered on top. Validated before anything starts. */
async function specFrom(file: string | undefined, flags: RunFlags): Promise<PipelineSpecInput> {
  const base: Record<string, any> = file
    ? JSON.parse(await readFile(file, 'utf8'))
    : flags.dataDir || flags.train
      ? {}
      : demoSpec();
  const spec: Record<string, any> = { ...base, student: { ...base.student }, sample: { ...base.sample } };
  if (flags.name) spec.name = flags.name;
  if (flags.dataDir) spec.data = { kind: 'reference', dir: flags.dataDir, task: flags.task };
  else if (flags.train) spec.data = { kind: 'jsonl', train: flags.train, test: flags.test };
  if (flags.teacher === 'openai' || flags.teacherUrl) {
    spec.teacher = { kind: 'openai', url: flags.teacherUrl, model: flags.teacherModel };
  } else if (flags.teacher) {
    spec.teacher = { kind: flags.teacher };
  }
  if (!spec.name && spec.data?.kind === 'reference') spec.name = `${spec.data.task}-student`;
  await teacherFlags(spec, flags);
  const student: [keyof RunFlags, string][] = [
    ['method', 'method'],
    ['alpha', 'alpha'],
    ['preset', 'preset'],
    ['steps', 'steps'],
    ['batchSize', 'batchSize'],
    ['learningRate', 'learningRate'],
    ['backend', 'backend'],
  ];
  for (const [flag, field] of student) if (flags[flag] !== undefined) spec.student[field] = flags[flag];
  if (flags.fraction !== undefined) spec.sample.fraction = flags.fraction;
  if (flags.seed !== undefined) spec.sample.seed = spec.student.seed = flags.seed;
  return spec as PipelineSpecInput;
}

/** Teacher flags onto `spec.teacher` (the spec's validation then checks them like any field). */
async function teacherFlags(spec: Record<string, any>, flags: RunFlags): Promise<void> {
  const fields: [keyof RunFlags, string][] = [
    ['teacherMode', 'mode'],
    ['teacherConcurrency', 'concurrency'],
    ['requestsPerMinute', 'requestsPerMinute'],
    ['tokensPerMinute', 'tokensPerMinute'],
    ['samples', 'samples'],
    ['maxCost', 'maxCost'],
  ];
  const given = fields.filter(([flag]) => flags[flag] !== undefined);
  if (given.length === 0 && !flags.prices) return;
  spec.teacher = { ...spec.teacher };
  for (const [flag, field] of given) spec.teacher[field] = flags[flag];
  if (flags.prices) {
    // A price list shared by a team: { "<model>": { "inputPerMillionTokens": …, "outputPerMillionTokens": … } }.
    const list = JSON.parse(await readFile(flags.prices, 'utf8')) as Record<string, unknown>;
    const model = spec.teacher.kind === 'openai' ? spec.teacher.model : undefined;
    if (model === undefined || !(model in list)) {
      throw new InputError(
        `--prices ${flags.prices} has no entry for the teacher model ${JSON.stringify(model ?? spec.teacher.kind)}; ` +
          `it lists ${Object.keys(list).join(', ') || 'nothing'}`,
        '--prices'
      );
    }
    spec.teacher.price = list[model];
  }
}

const STAGE_LABELS: Record<string, string> = {
  sample: 'sample',
  promptTeacher: 'prompt teacher',
  validateRationales: 'validate rationales',
  trainStudent: 'train student',
  evaluate: 'evaluate',
  registerModel: 'register model',
};

/** One bar per stage: finished stages stay printed with their summary, the running one is redrawn in place. */
class ProgressView {
  private printed = new Set<string>();
  private live = false;
  constructor(private readonly tty: boolean) {}

  update(p: PipelineProgress) {
    for (const s of p.stages) {
      if ((s.status === 'done' || s.status === 'skipped' || s.status === 'failed') && !this.printed.has(s.name)) {
        this.printed.add(s.name);
        const mark = s.status === 'done' ? '✔' : s.status === 'skipped' ? '-' : '✖';
        this.write(
          `${mark} ${STAGE_LABELS[s.name].padEnd(20)} ${s.status === 'skipped' ? 'skipped' : (s.summary ?? s.status)}`,
          true
        );
      }
    }
    const current = p.stages.find((s) => s.status === 'running');
    if (current && this.tty) {
      const width = 30;
      const frac = p.total > 0 ? Math.min(1, p.step / p.total) : 0;
      const bar = '█'.repeat(Math.round(frac * width)).padEnd(width, '░');
      const count = p.total > 0 ? ` ${p.step}/${p.total}` : '';
      this.write(`… ${STAGE_LABELS[current.name].padEnd(20)} ${bar}${count}`, false);
    }
  }

  private write(line: string, permanent: boolean) {
    if (this.tty) {
      process.stderr.write(`\r\x1b[2K${line}${permanent ? '\n' : ''}`);
      this.live = !permanent;
    } else if (permanent) {
      process.stderr.write(`${line}\n`);
    }
  }

  end() {
    if (this.live) process.stderr.write('\r\x1b[2K');
  }
}

async function follow(handle: WorkflowHandle, json: boolean): Promise<PipelineResult> {
  const view = new ProgressView(Boolean(process.stderr.isTTY) && !json);
  const resultPromise = handle.result() as Promise<PipelineResult>;
  let finished = false;
  resultPromise.then(
    () => (finished = true),
    () => (finished = true)
  );
  while (!finished) {
    try {
      view.update(await handle.query(progressQuery));
    } catch {
      // The workflow may not have started its first task yet, or just closed: the next poll tells.
    }
    await Promise.race([resultPromise.catch(() => undefined), new Promise((r) => setTimeout(r, 500))]);
  }
  try {
    view.update(await handle.query(progressQuery));
  } catch {
    /* a closed workflow still answers queries; if not, the result below says enough */
  }
  view.end();
  return resultPromise;
}

function describeFailure(err: unknown): string {
  if (err instanceof WorkflowFailedError) {
    let cause: any = err.cause;
    const parts = [err.message];
    while (cause) {
      parts.push(cause.message);
      cause = cause.cause;
    }
    return parts.filter(Boolean).join(': ');
  }
  return err instanceof Error ? err.message : String(err);
}

async function runCommand(file: string | undefined, flags: RunFlags) {
  const specInput = await specFrom(file, flags);
  let spec;
  try {
    spec = parseSpec(specInput);
  } catch (err) {
    if (err instanceof SpecError) {
      log(`stepwise run: invalid spec: ${err.message}`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
  const store = flags.store ?? defaultStoreLocation();
  const workflowId = flags.id ?? `stepwise-${spec.name}-${new Date().toISOString().replace(/[-:.]/g, '').slice(0, 15)}`;
  const started = Date.now();

  let client: Client;
  let uiUrl: string | undefined;
  let namespace: string;
  let stop = async () => {};
  if (clusterConfigured()) {
    const target = temporalTarget();
    const temporal = await connectTemporal(target);
    client = temporal.client;
    namespace = target.namespace;
    stop = () => temporal.close();
  } else {
    if (flags.detach) {
      log(
        'stepwise run --detach needs a Temporal cluster (set TEMPORAL_ADDRESS): the embedded server stops with this process'
      );
      process.exitCode = 2;
      return;
    }
    const dir = stateDir();
    log(`stepwise: preparing embedded services (state in ${dir})`);
    await setup({ temporal: true, tfjsNative: true, log });
    const embedded = await startEmbedded({ stateDir: dir, store, log });
    client = embedded.client;
    uiUrl = embedded.uiUrl;
    namespace = embedded.namespace;
    stop = () => embedded.stop();
    log(
      `stepwise: Temporal dev server at ${embedded.address}${uiUrl ? `, UI ${uiUrl}` : ''}; artifacts in ${embedded.store.location}`
    );
  }
  try {
    const handle = await client.workflow.start('distillationPipeline', {
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
    const wallS = ((Date.now() - started) / 1000).toFixed(1);
    const link = uiUrl ? `${uiUrl}/namespaces/${namespace}/workflows/${workflowId}` : undefined;
    if (flags.json) {
      console.log(JSON.stringify({ ...result, wallSeconds: Number(wallS), temporalUi: link, store }));
      return;
    }
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
    else console.log(`  Temporal        namespace ${namespace}, workflow ${result.workflowId}`);
    console.log(`  wall time       ${wallS} s`);
  } finally {
    await stop();
  }
}

async function main() {
  const program = new Command()
    .name('stepwise')
    .description('Distilling step-by-step as durable Temporal workflows')
    .showHelpAfterError();

  program
    .command('run')
    .description('start a distillation pipeline and follow it (embedded services unless TEMPORAL_ADDRESS is set)')
    .argument('[spec]', 'pipeline spec (JSON file); flags override its fields; the demo when omitted')
    .option('--demo', 'the zero-config demo: a generated task, the scripted teacher, the tiny student')
    .option('--name <name>', 'registry model name')
    .option('--data-dir <dir>', 'dataset in the reference layout (<dir>/<task>/<task>_<split>.json)')
    .addOption(new Option('--task <task>', 'benchmark task of --data-dir').choices(['cqa', 'svamp', 'esnli', 'anli1']))
    .option('--train <file>', 'JSONL training data (fields input, label)')
    .option('--test <file>', 'JSONL test data')
    .addOption(new Option('--teacher <kind>', 'teacher kind').choices(['scripted', 'openai', 'replay']))
    .option('--teacher-url <url>', 'OpenAI-compatible base URL (key from OPENAI_API_KEY)')
    .option('--teacher-model <model>', 'teacher model name')
    .addOption(
      new Option('--teacher-mode <mode>', "'batch' uses the provider's batch API (OpenAI /v1/batches)").choices([
        'direct',
        'batch',
      ])
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
    .addOption(
      new Option('--method <method>').choices(['distill-step-by-step', 'standard-finetune', 'standard-distill'])
    )
    .option('--alpha <alpha>', 'label-loss weight', number('--alpha'))
    .addOption(new Option('--preset <preset>', 'student size').choices(['tiny', 'small', 'base', 'large']))
    .option('--steps <n>', 'training steps', number('--steps'))
    .option('--batch-size <n>', 'training batch size', number('--batch-size'))
    .option('--learning-rate <lr>', 'peak learning rate', number('--learning-rate'))
    .option('--fraction <f>', 'fraction of the training split to use', number('--fraction'))
    .option('--seed <n>', 'seed for sampling and training', number('--seed'))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['auto', 'tensorflow', 'wasm', 'cpu']))
    .option('--store <location>', 'artifact store: a folder, file:///path or s3://bucket/prefix (env STEPWISE_STORE)')
    .option('--id <workflowId>', 'workflow id (default stepwise-<name>-<timestamp>)')
    .option('--detach', 'print the run id and return (needs TEMPORAL_ADDRESS)')
    .option('--json', 'print the result as one JSON line')
    .action(async (file: string | undefined, flags: RunFlags) => runCommand(file, flags));

  program
    .command('worker')
    .description(
      'run a long-lived worker against a Temporal cluster (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS / API key)'
    )
    .addOption(
      new Option('--queue <queue>', 'cpu: workflows, data, teacher, registry; gpu: training, evaluation')
        .choices(['cpu', 'gpu'])
        .makeOptionMandatory()
    )
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .action(async (flags: { queue: QueueKind; store?: string }) => {
      if (flags.queue === 'gpu') {
        await setup({ tfjsNative: true, log });
        // Training runs in child processes, whose dynamic loader reads LD_LIBRARY_PATH at start: putting the cached
        // CUDA libraries (`stepwise setup --cuda`) on it here lets every student child find them.
        process.env.LD_LIBRARY_PATH = (await withCudaLibraryPath(process.env)).LD_LIBRARY_PATH;
      }
      await runWorker({ queue: flags.queue, target: temporalTarget(), store: flags.store ?? defaultStoreLocation() });
    });

  program
    .command('dev')
    .description('start the dev services (Temporal; the S3 server with --s3) and print their addresses')
    .option('--s3', 'also start an S3-compatible server (versitygw)')
    .action(async (flags: { s3?: boolean }) => {
      await setup({ temporal: true, s3: Boolean(flags.s3), log });
      const dir = stateDir();
      const temporal = await startTemporalDevServer({ stateDir: dir, uiPort: await freePort(), log });
      console.log(`TEMPORAL_ADDRESS=${temporal.address}`);
      if (temporal.uiUrl) console.log(`Temporal UI: ${temporal.uiUrl}`);
      let s3: Awaited<ReturnType<typeof startS3Server>> | undefined;
      if (flags.s3) {
        s3 = await startS3Server({ dataDir: join(dir, 's3') });
        await ensureBucket(s3, 'stepwise');
        console.log(`AWS_ENDPOINT_URL_S3=${s3.endpoint}`);
        console.log(`AWS_ACCESS_KEY_ID=${s3.accessKey}`);
        console.log(`AWS_SECRET_ACCESS_KEY=${s3.secretKey}`);
        console.log(`STEPWISE_STORE=s3://stepwise/artifacts`);
      }
      console.log('Press Ctrl-C to stop.');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await s3?.stop();
      await temporal.stop();
    });

  program
    .command('validate')
    .description('parse the recorded teacher outputs of a dataset in the reference layout; print teacher accuracy')
    .requiredOption('--data-dir <dir>', 'dataset folder in the reference layout')
    .addOption(new Option('--task <task>').choices(['cqa', 'svamp', 'esnli', 'anli1']).makeOptionMandatory())
    .addOption(new Option('--split <split>').choices(['train', 'valid', 'test']).default('test'))
    .option('--json', 'end with one JSON object: task, split, total, correct, accuracy, unparsable')
    .action(
      async (flags: {
        dataDir: string;
        task: 'cqa' | 'svamp' | 'esnli' | 'anli1';
        split: 'train' | 'valid' | 'test';
        json?: boolean;
      }) => {
        const r = await validateRecorded(flags.dataDir, flags.task, flags.split);
        console.log(
          `${r.task} ${r.split}: teacher accuracy ${(100 * r.accuracy).toFixed(2)}% (${r.correct}/${r.total}), ${r.unparsable} unparsable`
        );
        if (flags.json) console.log(JSON.stringify(r));
      }
    );

  program
    .command('models')
    .description('list registered models, or the versions of one with their metrics and lineage')
    .argument('[name]')
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option('--json', 'print JSON')
    .action(async (name: string | undefined, flags: { store?: string; json?: boolean }) => {
      const store = openStore(flags.store ?? defaultStoreLocation());
      if (!name) {
        const models = await listModels(store);
        console.log(flags.json ? JSON.stringify(models) : models.join('\n') || '(no models registered)');
        return;
      }
      const versions = await Promise.all((await listVersions(store, name)).map((v) => getVersion(store, name, v)));
      if (flags.json) return console.log(JSON.stringify(versions));
      for (const v of versions) {
        if (!v) continue;
        console.log(
          `${v.name} v${v.version}  ${v.createdAt}  accuracy ${(100 * v.metrics.accuracy).toFixed(1)}%  ${v.lineage.training.method}  run ${v.lineage.workflowId}`
        );
      }
    });

  program
    .command('cancel')
    .description('cancel a running pipeline (needs TEMPORAL_ADDRESS)')
    .argument('<workflowId>')
    .action(async (workflowId: string) => {
      const temporal = await connectTemporal(temporalTarget());
      try {
        await temporal.client.workflow.getHandle(workflowId).cancel();
        console.log(`cancellation requested for ${workflowId}`);
      } finally {
        await temporal.close();
      }
    });

  program
    .command('setup')
    .description(
      'install what Stepwise runs on (pinned, cached): Temporal CLI, the native tfjs build, and versitygw for tests'
    )
    .option('--for-tests', 'also the S3 test server (versitygw)')
    .option('--no-native', 'skip the native tfjs build (wasm or cpu backends are used)')
    .option('--cuda', "also NVIDIA's CUDA 12 / cuDNN 9 runtime wheels for the native build's GPU use (about 3 GB)")
    .action(async (flags: { forTests?: boolean; native: boolean; cuda?: boolean }) => {
      const r = await setup({ temporal: true, s3: Boolean(flags.forTests), tfjsNative: flags.native, log });
      if (flags.cuda) {
        const libs = await ensureCudaLibraries(log);
        log(
          `stepwise setup: CUDA libraries in ${libs.root}; \`stepwise worker --queue gpu\` puts them on LD_LIBRARY_PATH`
        );
      }
      if (r.tfjsNative && !r.tfjsNative.ok)
        log(`stepwise setup: native tfjs unavailable (${r.tfjsNative.reason}); training falls back to wasm`);
    });

  program
    .command('import-t5')
    .description('read a Hugging Face T5 checkpoint folder (config.json, model.safetensors, tokenizer) into a student')
    .argument('<dir>', 'checkpoint folder as save_pretrained writes it (tokenizer.json, or spiece.model converted)')
    .requiredOption('--out <file>', 'Stepwise checkpoint to write (safetensors)')
    .action(async (dir: string, flags: { out: string }) => {
      // Loaded here, not at the top: the student library pulls in TensorFlow.js, which no other command needs.
      const { readT5 } = require('../lib/student/hf') as typeof import('../lib/student/hf');
      const { serializeWeights } = require('../lib/student/checkpoint') as typeof import('../lib/student/checkpoint');
      const t5 = await readT5(dir);
      const training = {
        method: 'pretrained',
        alpha: 0,
        steps: 0,
        backend: 'none',
        importedFrom: dir,
        notes: t5.notes,
      };
      await writeFile(flags.out, serializeWeights(t5.config, t5.weights, t5.tokenizer, training));
      const params = t5.weights.reduce((n, w) => n + w.data.length, 0);
      for (const note of t5.notes) log(`import-t5: ${note}`);
      console.log(
        `${flags.out}: T5 ${t5.config.feed_forward_proj}, ${t5.config.tie_word_embeddings ? 'tied' : 'untied'} lm_head, ` +
          `${params.toLocaleString('en')} parameters, ${t5.tokenizer.vocabSize} tokens (${t5.tokenizerSource})`
      );
    });

  program
    .command('export-t5')
    .description('write a student checkpoint as a Hugging Face T5 folder that T5ForConditionalGeneration loads')
    .argument('<checkpoint>', 'Stepwise checkpoint file (safetensors)')
    .requiredOption('--out <dir>', 'folder to write config.json, model.safetensors and the tokenizer into')
    .action(async (checkpoint: string, flags: { out: string }) => {
      const { exportT5 } = require('../lib/student/hf') as typeof import('../lib/student/hf');
      const files = await exportT5(await readFile(checkpoint), flags.out);
      console.log(files.join('\n'));
    });

  await program.parseAsync(process.argv);
}

main().catch((err) => {
  if (err instanceof SpecError) console.error(`invalid spec: ${err.message}`);
  else if (err instanceof InputError) console.error(`stepwise: ${err.message}`);
  else console.error(err);
  process.exit(1);
});
