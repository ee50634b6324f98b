/**
 * The MLflow export against a real `mlflow server` (the pinned one of infra/mlflow.ts, SQLite backend store, a temp
 * artifact root, a free loopback port), with real pipeline runs on the Temporal dev server and versitygw. Everything
 * is checked through MLflow's own REST API, not through the exporter's client. The in-process workers read
 * `STEPWISE_MLFLOW_URI` at each registration (infra/config.ts does not cache), so each test sets it before its run;
 * the tests are serial for that reason.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { CPU_TASK_QUEUE, type PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import { exportToMlflow } from '../activities/mlflow';
import { freePort } from '../infra/cache';
import { startMlflowServer, type MlflowServer } from '../infra/mlflow';
import type { PipelineSpecInput } from '../lib/pipeline/spec';
import { getAlias } from '../lib/registry/audit';
import { getVersion } from '../lib/registry/registry';
import type { LossPoint } from '../lib/student/train';
import { servicesForFile } from './helpers/services';

/**
 * What the workers log, kept to be read back: installed before the services start, so quietTemporalLogs
 * (workers/pipeline-worker.ts) keeps this logger. Warnings other than MLflow's still reach the console.
 */
const logged: { level: string; message: string }[] = [];
Runtime.install({
  logger: new DefaultLogger('INFO', (entry) => {
    logged.push({ level: entry.level, message: entry.message });
    if ((entry.level === 'WARN' || entry.level === 'ERROR') && !entry.message.startsWith('MLflow:')) {
      console.warn(entry.message);
    }
  }),
});

let server: MlflowServer | undefined;
let dataDir: string | undefined;
// Started before the Temporal and S3 services (the hooks run in order, this promise meanwhile): its first start
// creates the SQLite schema, which takes tens of seconds on a busy machine.
const starting = (async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'stepwise-mlflow-'));
  server = await startMlflowServer({ dataDir });
  return server;
})();
starting.catch(() => undefined); // awaited by the tests; a failure is reported there
test.after.always(async () => {
  await server?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const services = servicesForFile();

/** Tiny and quick, as test/gate-workflow.test.ts's runs: its first version beats the majority baseline. */
const spec = (name: string): PipelineSpecInput => ({
  name,
  data: { kind: 'demo', size: 150, seed: 11 },
  teacher: { kind: 'scripted', errorRate: 0.1 },
  // Validation every 10 steps: the train log then has a validation curve too.
  student: { preset: 'tiny', steps: 30, batchSize: 16, evalEvery: 10 },
  gate: {},
});

async function runPipeline(input: PipelineSpecInput): Promise<PipelineResult> {
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `mlflow-${input.name}-${Date.now()}`,
    args: [input],
  });
  return handle.result();
}

/** One call of MLflow's REST API, straight: GET with a query string, POST with JSON. */
async function mlflow<T>(endpoint: string, query: Record<string, string>, body?: unknown): Promise<T> {
  const url = `${(await starting).uri}/api/2.0/mlflow/${endpoint}${body ? '' : `?${new URLSearchParams(query)}`}`;
  const res = await fetch(url, {
    method: body ? 'POST' : 'GET',
    ...(body ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${endpoint}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

interface Run {
  info: { run_id: string; status: string };
  data: { params?: { key: string; value: string }[]; tags?: { key: string; value: string }[] };
}
interface ModelVersion {
  version: string;
  source: string;
  run_id: string;
  tags?: { key: string; value: string }[];
}

async function runsOf(experiment: string, runId: string): Promise<Run[]> {
  const { experiment: e } = await mlflow<{ experiment: { experiment_id: string } }>('experiments/get-by-name', {
    experiment_name: experiment,
  });
  const found = await mlflow<{ runs?: Run[] }>(
    'runs/search',
    {},
    { experiment_ids: [e.experiment_id], filter: `tags.\`stepwise.runId\` = '${runId}'` }
  );
  return found.runs ?? [];
}

const history = async (runId: string, key: string) =>
  (
    await mlflow<{ metrics?: { step: number; value: number }[] }>('metrics/get-history', {
      run_id: runId,
      metric_key: key,
    })
  ).metrics ?? [];

const versionsOf = async (name: string) =>
  (await mlflow<{ model_versions?: ModelVersion[] }>('model-versions/search', { filter: `name = '${name}'` }))
    .model_versions ?? [];

const value = (pairs: { key: string; value: string }[] | undefined, key: string) =>
  pairs?.find((p) => p.key === key)?.value;

test.serial(
  'a gated run is mirrored: its MLflow run, loss curve and lineage tags, and version 1 as champion',
  async (t) => {
    const { uri } = await starting;
    process.env.STEPWISE_MLFLOW_URI = uri;
    const store = services().store;
    const result = await runPipeline(spec('mlf'));
    t.is(result.promotion?.outcome, 'promoted', result.promotion?.reason);
    const v = (await getVersion(store, 'mlf', 1))!;
    t.is((await getAlias(store, 'mlf', 'champion'))?.version, 1);

    // The run: one, finished, with the spec's fields as params.
    const runs = await runsOf('mlf', v.lineage.runId);
    t.is(runs.length, 1);
    const run = runs[0];
    t.is(run.info.status, 'FINISHED');
    t.is(value(run.data.params, 'student.steps'), '30');
    t.is(value(run.data.params, 'student.preset'), 'tiny');
    t.is(value(run.data.params, 'student.evalEvery'), '10');
    t.is(value(run.data.params, 'data.kind'), 'demo');
    t.is(value(run.data.params, 'teacher.kind'), 'scripted');
    t.is(value(run.data.params, 'sample.fraction'), '1');

    // The loss curve: as many points, at the same steps, as the stored train log.
    const manifest = JSON.parse((await store.getKey(`runs/${v.lineage.workflowId}/manifest.json`))!.toString()) as {
      artifacts: { role: string; sha256: string; size: number }[];
    };
    const logRef = manifest.artifacts.find((a) => a.role === 'student/train-log')!;
    const trainLog = await store.getJson<{ lossHistory: LossPoint[]; validHistory: LossPoint[] }>(logRef);
    t.true(trainLog.lossHistory.length > 0);
    const loss = await history(run.info.run_id, 'train_loss');
    t.deepEqual(
      loss.map((p) => p.step),
      trainLog.lossHistory.map((p) => p.step)
    );
    t.deepEqual(
      loss.map((p) => p.value),
      trainLog.lossHistory.map((p) => p.loss)
    );
    t.true(trainLog.validHistory.length > 0);
    t.deepEqual(
      (await history(run.info.run_id, 'valid_loss')).map((p) => [p.step, p.value]),
      trainLog.validHistory.map((p) => [p.step, p.loss])
    );
    t.deepEqual(
      (await history(run.info.run_id, 'accuracy')).map((p) => p.value),
      [v.metrics.accuracy]
    );
    // Measured by the gate (after registration): added by the alias sync's export of the same version.
    t.is((await history(run.info.run_id, 'teacher_accuracy')).length, 1);

    // Lineage as tags.
    t.is(value(run.data.tags, 'stepwise.dataset.hash'), v.lineage.dataset.datasetHash);
    t.is(value(run.data.tags, 'stepwise.checkpoint.sha256'), v.checkpoint.sha256);
    t.is(value(run.data.tags, 'stepwise.specHash'), v.lineage.specHash);
    t.is(value(run.data.tags, 'stepwise.codeVersion'), v.lineage.codeVersion);
    t.is(value(run.data.tags, 'stepwise.workflowId'), v.lineage.workflowId);
    t.is(value(run.data.tags, 'stepwise.manifest'), v.lineage.manifest);

    // The Model Registry: version 1, the checkpoint's URI as its source, made by the run above, named by champion.
    const { model_version: champion } = await mlflow<{ model_version: ModelVersion }>('registered-models/alias', {
      name: 'mlf',
      alias: 'champion',
    });
    t.is(champion.version, '1');
    t.is(champion.source, v.checkpoint.uri);
    t.is(champion.run_id, run.info.run_id);
    t.is(value(champion.tags, 'stepwise.version'), '1');
    t.is((await versionsOf('mlf')).length, 1);
    t.true(
      logged.some((l) => l.message.startsWith('MLflow: mlf v1 mirrored')),
      'the registration logged its export'
    );

    // A retried export (as a retried registerModel activity makes) finds everything and writes nothing new.
    const before = Date.now();
    const again = await exportToMlflow({ store }, { name: 'mlf', version: 1 });
    t.log(`repeated export: ${Date.now() - before} ms`);
    t.true(again !== undefined && 'exported' in again, JSON.stringify(again));
    if (again && 'exported' in again) {
      t.deepEqual(again.exported.created, { run: false, modelVersion: false, params: 0, metricPoints: 0 });
      t.is(again.exported.runId, run.info.run_id);
    }
    t.is((await runsOf('mlf', v.lineage.runId)).length, 1);
    t.is((await versionsOf('mlf')).length, 1);
    t.is((await history(run.info.run_id, 'train_loss')).length, trainLog.lossHistory.length);
    for (const line of logged.filter((l) => l.message.startsWith('MLflow:'))) t.log(line.message);
  }
);

test.serial('`stepwise models promote` moves the alias in MLflow too', async (t) => {
  const { uri } = await starting;
  const { stdout, stderr } = await promisify(execFile)(
    process.execPath,
    [resolve(__dirname, '..', 'bin', 'stepwise.js'), 'models', 'promote', 'mlf@1', '--alias', 'staging'],
    {
      env: { ...process.env, STEPWISE_MLFLOW_URI: uri, STEPWISE_STORE: services().storeLocation, TEMPORAL_ADDRESS: '' },
    }
  );
  t.regex(stdout, /staging: .* → v1/);
  t.regex(stderr, /MLflow: alias staging of mlf mirrored/);
  const { model_version: staging } = await mlflow<{ model_version: ModelVersion }>('registered-models/alias', {
    name: 'mlf',
    alias: 'staging',
  });
  t.is(staging.version, '1');
  t.is((await versionsOf('mlf')).length, 1, 'the version was found, not mirrored again');
});

test.serial('an unreachable MLflow server leaves the pipeline succeeding, with a warning', async (t) => {
  await starting;
  // A port nothing listens on: every request is refused at once.
  process.env.STEPWISE_MLFLOW_URI = `http://127.0.0.1:${await freePort()}`;
  try {
    const result = await runPipeline(spec('mlf-down'));
    t.is(result.promotion?.outcome, 'promoted', result.promotion?.reason);
    t.is((await getAlias(services().store, 'mlf-down', 'champion'))?.version, 1);
  } finally {
    delete process.env.STEPWISE_MLFLOW_URI;
  }
  const warnings = logged.filter((l) => l.level === 'WARN' && l.message.startsWith('MLflow:')).map((l) => l.message);
  t.true(
    warnings.some((w) => w.startsWith('MLflow: could not mirror mlf-down v1') && /no answer/.test(w)),
    warnings.join('\n')
  );
  t.true(warnings.some((w) => w.startsWith('MLflow: could not mirror alias champion of mlf-down')));
  // Nothing of it reached the real server.
  const res = await fetch(`${(await starting).uri}/api/2.0/mlflow/registered-models/get?name=mlf-down`);
  t.is(res.status, 404);
});
