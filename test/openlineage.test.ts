/**
 * OpenLineage events of real pipeline runs (Temporal dev server, versitygw, in-process workers), received by a local
 * HTTP receiver, read back from the store, and validated against the published OpenLineage JSON schemas (fetched by
 * `stepwise setup --for-tests`, infra/openlineage-schemas.ts).
 */
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import { CPU_TASK_QUEUE, STAGES, type PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import { ensureOpenLineageSchemas } from '../infra/openlineage-schemas';
import { FACET_SCHEMA_URLS, RUN_EVENT_SCHEMA_URL, type RunEvent } from '../lib/lineage/openlineage';
import type { PipelineSpecInput } from '../lib/pipeline/spec';
import { servicesForFile } from './helpers/services';

interface Received {
  event: RunEvent;
  authorization?: string;
  status: number;
}

/** Every POST the receiver got, in arrival order. Events of a workflow whose id starts `ol-500-` are answered 500. */
const received: Received[] = [];
let receiver: Server;

// Registered before the services, so the workers' settings (read per event) already name the receiver.
test.before(async () => {
  receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const event = JSON.parse(Buffer.concat(chunks).toString('utf8')) as RunEvent;
      const failing = parentOf(event).startsWith('ol-500-');
      const status = req.method === 'POST' && req.url === '/api/lineage' ? (failing ? 500 : 201) : 404;
      received.push({ event, authorization: req.headers.authorization, status });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  process.env.STEPWISE_OPENLINEAGE_URL = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/`;
  process.env.STEPWISE_OPENLINEAGE_API_KEY = 'ol-test-key';
});
test.after.always(() => new Promise<void>((resolve) => (receiver ? receiver.close(() => resolve()) : resolve())));

const services = servicesForFile();

/** The published schemas: the core 2-0-2 and each facet schema the package ships, by `$id`. */
let ajv: Ajv2020;
test.before(async () => {
  const dir = await ensureOpenLineageSchemas();
  ajv = new Ajv2020({ allErrors: true });
  addFormats(ajv);
  ajv.addKeyword('example');
  ajv.addSchema(JSON.parse(await readFile(join(dir, 'OpenLineage.json'), 'utf8')));
  for (const file of await readdir(join(dir, 'facets'))) {
    ajv.addSchema(JSON.parse(await readFile(join(dir, 'facets', file), 'utf8')));
  }
});

const CORE = 'https://openlineage.io/spec/2-0-2/OpenLineage.json';

/**
 * Schema errors of one event: the event against `RunEvent`, and each facet against the schema its `_schemaURL`
 * names. The one facet whose schema the package does not ship (the dataset version) is checked against the core's
 * `DatasetFacet` and for its one field.
 */
function schemaErrors(event: RunEvent): string[] {
  const errors: string[] = [];
  const check = (url: string, value: unknown, what: string) => {
    const validate = ajv.getSchema(url);
    if (!validate) return errors.push(`${what}: no schema ${url}`);
    if (!validate(value)) errors.push(`${what}: ${ajv.errorsText(validate.errors)}`);
  };
  check(RUN_EVENT_SCHEMA_URL, event, 'event');
  const facetSets = [
    ['run', event.run.facets],
    ['job', event.job.facets],
    ...event.inputs.flatMap((d) => [
      [`input ${d.name}`, d.facets],
      [`input ${d.name}`, d.inputFacets ?? {}],
    ]),
    ...event.outputs.flatMap((d) => [
      [`output ${d.name}`, d.facets],
      [`output ${d.name}`, d.outputFacets ?? {}],
    ]),
  ] as const;
  for (const [where, facets] of facetSets) {
    for (const [name, facet] of Object.entries(facets)) {
      if (facet._schemaURL === FACET_SCHEMA_URLS.version) {
        check(`${CORE}#/$defs/DatasetFacet`, facet, `${where} ${name}`);
        if (!/^[0-9a-f]{64}$/.test(String(facet.datasetVersion))) errors.push(`${where} ${name}: not a sha256`);
      } else check(facet._schemaURL, facet, `${where} ${name}`);
    }
  }
  return errors;
}

function parentOf(event: RunEvent): string {
  return (event.run.facets.parent?.job as { name?: string } | undefined)?.name ?? '';
}

const spec = (seed: number): PipelineSpecInput => ({
  name: 'ol-demo',
  data: { kind: 'demo', size: 60, seed },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 5, batchSize: 8 },
  // The first version becomes the champion whatever its accuracy, so the second run is gated against it (and so
  // evaluates a second time, on the champion's set).
  gate: { firstVersion: 'always' },
});

async function run(workflowId: string, seed: number) {
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [spec(seed)],
  });
  const result = (await handle.result()) as PipelineResult;
  const history = await handle.fetchHistory();
  const activities = (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes).length;
  return { result, activities };
}

/** The events stored for a workflow, one per JSONL object, each object one line. */
async function stored(workflowId: string): Promise<Map<string, RunEvent>> {
  const events = new Map<string, RunEvent>();
  for (const key of await services().store.listKeys(`openlineage/${workflowId}/`)) {
    const text = (await services().store.getKey(key))!.toString('utf8');
    const lines = text.split('\n').filter(Boolean);
    if (lines.length !== 1 || !text.endsWith('\n')) throw new Error(`${key}: expected one JSONL line`);
    events.set(key, JSON.parse(lines[0]!) as RunEvent);
  }
  return events;
}

/** Stage runs by run id, each with its job and its event types in arrival order. */
function stageRuns(events: readonly RunEvent[]) {
  const runs = new Map<string, { job: string; types: string[]; events: RunEvent[] }>();
  for (const e of events) {
    const r = runs.get(e.run.runId) ?? { job: e.job.name, types: [], events: [] };
    if (r.job !== e.job.name) throw new Error(`run ${e.run.runId} is both ${r.job} and ${e.job.name}`);
    r.types.push(e.eventType);
    r.events.push(e);
    runs.set(e.run.runId, r);
  }
  return runs;
}

const sortedJson = (events: Iterable<RunEvent>) => [...events].map((e) => JSON.stringify(e)).sort();

test.serial(
  'every stage of a run sends START then COMPLETE under one run id, stored as sent and valid against the schema',
  async (t) => {
    const workflowId = `ol-ok-${Date.now()}`;
    const { result, activities } = await run(workflowId, 1);
    t.is(result.promotion?.outcome, 'promoted', 'the first version became the champion');

    const mine = received.filter((r) => parentOf(r.event) === workflowId);
    const events = mine.map((r) => r.event);
    t.true(
      mine.every((r) => r.status === 201 && r.authorization === 'Bearer ol-test-key'),
      'every event was accepted, with the API key'
    );

    // One stage run per activity the pipeline scheduled, plus the teacher's child workflow; each START then COMPLETE.
    const runs = stageRuns(events);
    t.is(runs.size, activities + 1);
    for (const [runId, r] of runs) {
      t.regex(runId, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      t.deepEqual(r.types, ['START', 'COMPLETE'], `${r.job}: START then COMPLETE`);
    }
    const jobs = [...runs.values()].map((r) => r.job);
    // The gate reports per activity (below); every other stage is one job of its own name.
    for (const stage of STAGES.filter((s) => s !== 'gate')) {
      t.is(jobs.filter((j) => j === stage).length, 1, `one ${stage} run`);
    }
    t.true(
      jobs.some((j) => j.startsWith('gate.')),
      'the gate reports its activities'
    );

    // One parent for all: the pipeline run, in the default namespace.
    t.is(new Set(events.map((e) => JSON.stringify(e.run.facets.parent))).size, 1);
    t.true(events.every((e) => e.job.namespace === 'stepwise'));

    // Datasets are the store's objects: namespace + name give back the URI, and the version is the content hash.
    const manifest = JSON.parse((await services().store.getKey(`runs/${workflowId}/manifest.json`))!.toString('utf8'));
    const artifact = (role: string) =>
      manifest.artifacts.find((a: { role: string }) => a.role === role) as { sha256: string; size: number };
    const hashOf = (role: string) => artifact(role).sha256;
    const completeOf = (job: string) => [...runs.values()].find((r) => r.job === job)!.events[1]!;
    const versions = (ds: RunEvent['outputs']) => ds.map((d) => d.facets.version!.datasetVersion);
    t.deepEqual(
      versions(completeOf('sample').outputs).sort(),
      [hashOf('split/train'), hashOf('split/valid'), hashOf('split/test')].sort()
    );
    t.true(versions(completeOf('promptTeacher').outputs).includes(hashOf('teacher/responses')));
    t.true(versions(completeOf('validateRationales').inputs).includes(hashOf('teacher/responses')));
    t.true(versions(completeOf('trainStudent').outputs).includes(hashOf('student/checkpoint')));
    t.true(versions(completeOf('evaluate').inputs).includes(hashOf('student/checkpoint')));
    const checkpoint = completeOf('trainStudent').outputs.find(
      (d) => d.facets.version!.datasetVersion === hashOf('student/checkpoint')
    )!;
    t.is(`${checkpoint.namespace}/${checkpoint.name}`, services().store.uri(artifact('student/checkpoint')));
    t.is(checkpoint.outputFacets?.outputStatistics?.size, artifact('student/checkpoint').size);

    // The store holds exactly what the receiver got.
    const kept = await stored(workflowId);
    t.deepEqual(sortedJson(kept.values()), sortedJson(events));
    t.true([...kept.keys()].every((k) => k.startsWith(`openlineage/${workflowId}/`)));

    for (const e of events) t.deepEqual(schemaErrors(e), [], `${e.job.name} ${e.eventType} validates`);
    // The validator does reject: a run id that is not a UUID, and a parent facet without its job.
    const e = events[0]!;
    t.not(schemaErrors({ ...e, run: { ...e.run, runId: 'sample-1' } }).length, 0);
    const parent = { ...e.run.facets.parent!, job: undefined };
    t.not(schemaErrors({ ...e, run: { ...e.run, facets: { parent } } }).length, 0);
  }
);

test.serial('a receiver that answers 500 does not fail the run; a second evaluate is a second stage run', async (t) => {
  const workflowId = `ol-500-${Date.now()}`;
  const { result, activities } = await run(workflowId, 2);
  t.is(result.version, 2);

  const mine = received.filter((r) => parentOf(r.event) === workflowId);
  t.true(mine.length > 0 && mine.every((r) => r.status === 500), 'every event was refused');
  const kept = await stored(workflowId);
  t.deepEqual(sortedJson(kept.values()), sortedJson(mine.map((r) => r.event)), 'the store kept every event');

  const runs = stageRuns([...kept.values()]);
  t.is(runs.size, activities + 1);
  const evaluations = [...runs.values()].filter((r) => r.job === 'evaluate');
  t.is(evaluations.length, 2, 'the candidate was evaluated on its split and on the champion set');
  for (const r of evaluations) t.deepEqual([...r.types].sort(), ['COMPLETE', 'START']);
});

test('a stage that fails sends START then FAIL with the error message', async (t) => {
  const workflowId = `ol-fail-${Date.now()}`;
  const missing = join(services().tmp, 'no-such-train.jsonl');
  // Never called: the sample stage fails first.
  const teacher = { kind: 'openai', url: 'http://127.0.0.1:9/v1', model: 'm' } as const;
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [{ name: 'ol-fail', data: { kind: 'jsonl', train: missing, test: missing }, teacher }],
  });
  await t.throwsAsync(handle.result());

  const events = received.filter((r) => parentOf(r.event) === workflowId).map((r) => r.event);
  // The failed run's report is written after the failure, from the run's artifacts: a job of its own.
  t.deepEqual(
    events.map((e) => `${e.job.name} ${e.eventType}`),
    ['sample START', 'sample FAIL', 'writeRunReport START', 'writeRunReport COMPLETE']
  );
  t.is(events[0]!.run.runId, events[1]!.run.runId);
  const error = events[1]!.run.facets.errorMessage!;
  t.regex(String(error.message), /no-such-train\.jsonl/);
  t.is(error.programmingLanguage, 'TypeScript');
  t.deepEqual(sortedJson((await stored(workflowId)).values()), sortedJson(events));
  for (const e of events) t.deepEqual(schemaErrors(e), [], `${e.job.name} ${e.eventType} validates`);
});
