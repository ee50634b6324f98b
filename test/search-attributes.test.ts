import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { Connection } from '@temporalio/client';
import {
  CPU_TASK_QUEUE,
  progressQuery,
  rejectUpdate,
  STAGES,
  STEPWISE_SEARCH_ATTRIBUTES,
  StepwiseModel,
  type PipelineResult,
} from '../contract';
import { ensureTemporalCli, startTemporalDevServer } from '../infra/temporal';
import { parseSpec, type PipelineSpec } from '../lib/pipeline/spec';
import { getVersion } from '../lib/registry/registry';
import { listRuns, type RunListing } from '../cli/commands/runs';
import { connectTemporal, createPipelineWorkers } from '../workers/pipeline-worker';
import { ensureSearchAttributes, startPipelineRun } from '../workers/search-attributes';
import { servicesForFile } from './helpers/services';

const services = servicesForFile();
const exec = promisify(execFile);
const root = join(__dirname, '..');

/** The smallest pipeline that still runs every stage. */
const spec = (name: string, method: PipelineSpec['student']['method']): PipelineSpec =>
  parseSpec({
    name,
    data: { kind: 'demo', size: 60, seed: 5 },
    teacher: { kind: 'scripted' },
    student: { preset: 'tiny', steps: 20, batchSize: 16, method },
  });

const unique = (prefix: string) => `${prefix}-${Date.now()}`;

test('runs carry their model, task and method from the start: the temporal CLI and `runs ls` find exactly one', async (t) => {
  const { client, temporal } = services();
  // Model names unique to this test run, so a query can only match the run started here.
  const a = spec(unique('sa-a'), 'distill-step-by-step');
  const b = spec(unique('sa-b'), 'standard-finetune');
  const lines: string[] = [];
  const start = (s: PipelineSpec) =>
    startPipelineRun(client, s, { taskQueue: CPU_TASK_QUEUE, workflowId: unique(s.name) }, (l) => lines.push(l));
  const handleA = await start(a);
  const handleB = await start(b);
  t.deepEqual(lines, [], 'the dev server has them registered: nothing to add, nothing to say');

  // Findable at once: the start itself set the attributes, before any workflow code ran.
  const early = await listRuns(client, { model: a.name, limit: 10 });
  t.deepEqual(
    early.map((r) => [r.workflowId, r.model, r.task, r.method]),
    [[handleA.workflowId, a.name, 'demo', 'distill-step-by-step']]
  );
  // A running run names its stage from the progress query ("trainStudent 12/20"); it may have finished meanwhile.
  if (early[0].status === 'running') {
    t.regex(early[0].stage ?? '', new RegExp(`^(starting|done|${STAGES.join('|')})( \\d+/\\d+)?$`));
  }

  const [resultA, resultB] = (await Promise.all([handleA.result(), handleB.result()])) as PipelineResult[];
  t.is(resultA.name, a.name);
  t.is(resultB.name, b.name);

  // The real Temporal CLI, with the query a user would type.
  const { stdout } = await exec(await ensureTemporalCli(), [
    'workflow',
    'list',
    '--address',
    temporal.address,
    '--query',
    `StepwiseModel='${a.name}'`,
    '--output',
    'json',
  ]);
  const listed = parseCliList(stdout);
  t.deepEqual(
    listed.map((w) => w.execution.workflowId),
    [handleA.workflowId]
  );

  // `stepwise runs ls`, as a user runs it against a cluster.
  const env = { ...process.env, TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace };
  const ls = async (...args: string[]) =>
    JSON.parse(
      (await exec(process.execPath, [join(root, 'bin', 'stepwise.js'), 'runs', 'ls', ...args, '--json'], { env }))
        .stdout
    ) as RunListing[];
  const runsA = await ls('--model', a.name);
  t.is(runsA.length, 1);
  t.like(runsA[0], {
    workflowId: handleA.workflowId,
    status: 'completed',
    model: a.name,
    task: 'demo',
    method: 'distill-step-by-step',
    // Upserted by the workflow as it went: the gate's decision, and the hash the registry's lineage records.
    outcome: resultA.promotion?.outcome,
    datasetHash: (await getVersion(services().store, a.name, resultA.version))?.lineage.dataset.datasetHash,
  });
  t.regex(runsA[0].datasetHash ?? '', /^[0-9a-f]{64}$/);
  const completedB = await ls('--model', b.name, '--status', 'completed');
  t.deepEqual(
    completedB.map((r) => [r.workflowId, r.method]),
    [[handleB.workflowId, 'standard-finetune']]
  );
  t.deepEqual(await ls('--model', b.name, '--status', 'running'), []);
});

test('a run waiting for a person is listed as awaiting approval, then with the decision', async (t) => {
  const { client, temporal } = services();
  const d = parseSpec({
    ...spec(unique('sa-d'), 'distill-step-by-step'),
    gate: { firstVersion: 'always', approval: { timeoutSeconds: 600, onTimeout: 'reject' } },
  });
  const handle = await startPipelineRun(client, d, { taskQueue: CPU_TASK_QUEUE, workflowId: unique(d.name) }, () => {});
  let waiting: RunListing | undefined;
  for (let i = 0; i < 600 && !waiting; i++) {
    const [run] = await listRuns(client, { model: d.name, limit: 1 });
    if (run?.outcome === 'awaiting-approval') waiting = run;
    else await new Promise((r) => setTimeout(r, 250));
  }
  t.like(waiting, { workflowId: handle.workflowId, status: 'running', stage: 'awaiting approval' });
  const env = { ...process.env, TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace };
  const { stdout } = await exec(process.execPath, [join(root, 'bin', 'stepwise.js'), 'runs', 'ls', '--model', d.name], {
    env,
  });
  t.regex(stdout, new RegExp(`^${handle.workflowId}  awaiting approval  .*outcome awaiting-approval$`, 'm'));

  const { version } = (await handle.query(progressQuery)).awaitingApproval!;
  await handle.executeUpdate(rejectUpdate, { args: [{ version, identity: 'search-attributes test' }] });
  await handle.result();
  const [done] = await listRuns(client, { model: d.name, limit: 1 });
  t.like(done, { status: 'completed', outcome: 'rejected' });
});

test('a cluster without the attributes gets them added by the first client that starts a run', async (t) => {
  const server = await startTemporalDevServer({ stateDir: join(services().tmp, 'bare-temporal') });
  const connection = await Connection.connect({ address: server.address });
  try {
    const lines: string[] = [];
    t.true(await ensureSearchAttributes(connection, server.namespace, (l) => lines.push(l)));
    t.regex(lines.join('\n'), /registered search attributes StepwiseModel, .*StepwiseOutcome/);
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace: server.namespace });
    for (const key of STEPWISE_SEARCH_ATTRIBUTES) t.truthy(customAttributes[key.name], key.name);
    // Idempotent: a second worker or client finds them all and says nothing.
    const again: string[] = [];
    t.true(await ensureSearchAttributes(connection, server.namespace, (l) => again.push(l)));
    t.deepEqual(again, []);
  } finally {
    await connection.close();
    await server.stop();
  }
});

test('a run on a cluster that refuses the attributes starts without them, says how to add them, and completes', async (t) => {
  // Every Keyword slot of the dev server's SQLite visibility store taken: it refuses to add ours, as a namespace
  // without admin rights would.
  const fillers = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`Filler${i}`, 'Keyword' as const]));
  const server = await startTemporalDevServer({
    stateDir: join(services().tmp, 'full-temporal'),
    searchAttributes: fillers,
  });
  const temporal = await connectTemporal({
    connectionOptions: { address: server.address },
    namespace: server.namespace,
  });
  const workers = await createPipelineWorkers({
    connection: temporal.connection,
    client: temporal.client,
    namespace: server.namespace,
    queues: ['cpu', 'gpu'],
    store: services().storeLocation,
    workflowBundle: services().workflowBundle,
    dataConverter: temporal.dataConverter,
  });
  const running = workers.run();
  try {
    const c = spec(unique('sa-c'), 'distill-step-by-step');
    const lines: string[] = [];
    const handle = await startPipelineRun(
      temporal.client,
      c,
      { taskQueue: CPU_TASK_QUEUE, workflowId: unique(c.name) },
      (l) => lines.push(l)
    );
    t.is(lines.length, 1, lines.join('\n'));
    t.regex(lines[0], /not registered in namespace default and could not be added/);
    t.regex(
      lines[0],
      /temporal operator search-attribute create --namespace default --name StepwiseModel .*--type Keyword/
    );
    const result = (await handle.result()) as PipelineResult;
    t.is(result.name, c.name);
    const described = await handle.describe();
    t.is(described.typedSearchAttributes.get(StepwiseModel), undefined);
  } finally {
    workers.shutdown();
    await running.catch(() => undefined);
    await workers.deps.close();
    await temporal.close();
    await server.stop();
  }
});

/** `temporal workflow list --output json`: one JSON array, or one object per line depending on the CLI's version. */
function parseCliList(stdout: string): { execution: { workflowId: string } }[] {
  const text = stdout.trim();
  if (text === '') return [];
  if (text.startsWith('[')) return JSON.parse(text);
  return text.split('\n').map((line) => JSON.parse(line));
}
