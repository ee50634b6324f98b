/**
 * The teacher stage's limits are the stage's totals, across every shard and every worker: several shards on two
 * separate worker processes never have more requests in flight at the server than the stage's concurrency, and a
 * 429 with `retry-after` that one shard gets holds back every shard on every worker until the pause ends. Measured
 * at the server (its counters and arrival log), on the real Temporal dev server and S3 server.
 */
import type { ChildProcess } from 'node:child_process';
import test from 'ava';
import type { WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import {
  CPU_TASK_QUEUE,
  type PromptTeacherResult,
  type TeacherShardInput,
  type TeacherStageInput,
} from '../../contract';
import { startLocalTeacherServer } from '../../lib/teacher';
import { PAUSE_CACHE_MS } from '../../lib/teacher/stage';
import { teacherStage } from '../../workflows';
import { faultMode, recordFigures } from '../helpers/figures';
import { servicesForFile, startWorkerProcess } from '../helpers/services';
import { demoTeacherStage } from '../helpers/teacher-stage';

const MODEL = 'limits-under-test';
/** The stage's concurrency: what every shard in flight, on whichever worker, shares. */
const CONCURRENCY = 10;
/** Examples per shard: enough shards that both workers get some. */
const SHARD_SIZE = 30;
/** How long the injected 429 tells the client to wait. */
const PAUSE_MS = 4000;
/**
 * Requests that had already passed their pause check when the 429 was answered may still arrive: the pause reaches
 * other shards through one store write and a read at most {@link PAUSE_CACHE_MS} old. A second covers that on a
 * loaded machine with room to spare; the rest of the pause (3 s) must see no request at all.
 */
const GRACE_MS = 1000 + PAUSE_CACHE_MS;

const workers = new Set<ChildProcess>();
test.after.always(() => {
  for (const w of workers) w.kill('SIGKILL');
});
const services = servicesForFile({ workers: [] });

async function waitFor(what: string, probe: () => boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** `n` demo examples as a stage of an openai teacher at `url` with the stage-wide concurrency under test. */
function limitsStage(n: number, url: string): Promise<TeacherStageInput> {
  return demoTeacherStage(services().store, {
    n,
    seed: 9300,
    valid: 10,
    name: 'teacher-limits',
    teacher: {
      kind: 'openai',
      url,
      model: MODEL,
      concurrency: CONCURRENCY,
      // 10 over 4 shards: a split that rounds up would put 12 in flight.
      parallelShards: 4,
      shardSize: SHARD_SIZE,
    },
  });
}

/**
 * From the stage's history: the worker identities that started its activities, and each shard's share of the
 * concurrency as the workflow split it.
 */
function fromHistory(history: Awaited<ReturnType<WorkflowHandle['fetchHistory']>>) {
  const identities = new Set<string>();
  const shares: number[] = [];
  for (const e of history.events ?? []) {
    const identity = e.activityTaskStartedEventAttributes?.identity;
    if (identity) identities.add(identity);
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled?.activityType?.name === 'teacherShard') {
      const [shard] = scheduled.input?.payloads ?? [];
      shares.push(defaultPayloadConverter.fromPayload<TeacherShardInput>(shard!).concurrency);
    }
  }
  return { identities, shares };
}

test('shards on two workers keep the stage total in flight, and one 429 pauses every shard on every worker', async (t) => {
  const log: string[] = [];
  for (let i = 0; i < 2; i++) workers.add(await startWorkerProcess(services(), 'cpu', log));
  // Each answer takes a while, so every shard keeps its share of the concurrency busy.
  const server = await startLocalTeacherServer({ model: MODEL, latencyMs: 100, errorRate: 0 });
  t.teardown(() => server.close());
  const n = faultMode() === 'full' ? 600 : 300;
  const handle = await services().client.workflow.start(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `teacher-limits-${Date.now()}`,
    args: [await limitsStage(n, server.url)],
  });
  // Every shard in flight is sending: then the next request gets a 429 asking for a pause.
  await waitFor('the shards to be under way', () => server.counters().answered >= 40);
  server.setFaults({ status: { code: 429, count: 1, retryAfterMs: PAUSE_MS } });
  const result = (await handle.result()) as PromptTeacherResult;

  t.is(result.total, n);
  t.is(result.failed, 0);
  const c = server.counters();
  t.true(c.maxInFlight <= CONCURRENCY, `at most ${CONCURRENCY} requests in flight; the server saw ${c.maxInFlight}`);
  t.is(c.repeatedAnswers, 0);

  const injected = server.injectedStatuses();
  t.is(injected.length, 1, 'one 429 was answered');
  const t0 = injected[0].at;
  const duringPause = server.acceptedFrom(t0 + GRACE_MS).filter((at) => at < t0 + PAUSE_MS);
  t.deepEqual(
    duringPause.map((at) => Math.round(at - t0)),
    [],
    'no request from any shard arrived during the pause (ms after the 429)'
  );
  t.true(server.acceptedFrom(t0 + PAUSE_MS).length > 0, 'the shards resumed after the pause');

  // The shards really ran on both worker processes, and the workflow's split fits four in flight in the total.
  const { identities, shares } = fromHistory(await handle.fetchHistory());
  t.true(identities.size >= 2, `shards ran on ${identities.size} worker(s): ${[...identities].join(', ')}`);
  t.is(shares.length, Math.ceil(n / SHARD_SIZE));
  for (const share of shares) t.true(share * 4 <= CONCURRENCY, `a shard's share ${share} x 4 <= ${CONCURRENCY}`);
  recordFigures('teacher-429-pauses-all-workers', {
    faultsTried: 1,
    faultsSurvived: duringPause.length === 0 && c.maxInFlight <= CONCURRENCY && result.failed === 0 ? 1 : 0,
    teacherCallsRepeated: c.repeatedAnswers,
    examplesLost: result.failed + result.notSent,
  });
  for (const w of workers) {
    const gone = new Promise((r) => w.once('exit', r));
    w.kill('SIGKILL');
    await gone;
  }
});
