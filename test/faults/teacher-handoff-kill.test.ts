/**
 * A shard that has handed its free slots on dies in its tail: its worker is SIGKILLed right after the stage started
 * the next shard in the rest of its share. The retry, on the other worker, keeps to the slots the mark says the shard
 * kept, and the next shard waits for the retry to end before it takes them up; so the server never sees more requests
 * in flight than the stage's concurrency, across the kill, the retry and both workers, and the stage completes.
 * Real worker processes, the real Temporal dev server and S3 server.
 */
import type { ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import test from 'ava';
import { defaultPayloadConverter } from '@temporalio/common';
import {
  CPU_TASK_QUEUE,
  teacherShardGrantsQuery,
  type PromptTeacherResult,
  type TeacherShardInput,
} from '../../contract';
import { startLocalTeacherServer } from '../../lib/teacher';
import { teacherStage } from '../../workflows';
import { recordFigures } from '../helpers/figures';
import { servicesForFile, startWorkerProcess } from '../helpers/services';
import { demoTeacherStage } from '../helpers/teacher-stage';
import { waitFor } from '../helpers/wait';

const MODEL = 'handoff-kill-under-test';
const CONCURRENCY = 8;
const workers = new Set<ChildProcess>();
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => {
  for (const w of workers) w.kill('SIGKILL');
});
const services = servicesForFile({ workers: [] });

test('a shard killed in its tail after handing slots on: its retry keeps to what it kept, and the total holds', async (t) => {
  const log: string[] = [];
  const pool: ChildProcess[] = [];
  for (let i = 0; i < 2; i++) {
    const w = await startWorkerProcess(services(), 'cpu', log);
    workers.add(w);
    pool.push(w);
  }
  const byIdentity = new Map(pool.map((w) => [`${w.pid}@${hostname()}`, w]));
  // Each answer takes a while, so the tail (the last two calls of 22 on four slots) lasts long enough to kill in.
  const server = await startLocalTeacherServer({ model: MODEL, latencyMs: 400, errorRate: 0 });
  t.teardown(() => server.close());
  const n = 22 * 6;
  const input = await demoTeacherStage(services().store, {
    n,
    seed: 4242,
    name: 'handoff-kill',
    teacher: {
      kind: 'openai',
      url: server.url,
      model: MODEL,
      concurrency: CONCURRENCY,
      parallelShards: 2,
      shardSize: 22,
      heartbeatTimeoutSeconds: 5,
    },
  });
  const handle = await services().client.workflow.start(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `handoff-kill-${Date.now()}`,
    args: [input],
  });

  // The first handoff: a shard holding fewer slots than its share of four, beside the shard started in its tail.
  const tailing = await waitFor(
    'a shard to hand its free slots on',
    async () => {
      const grants = await handle.query(teacherShardGrantsQuery);
      const short = Object.entries(grants).filter(([, held]) => held < CONCURRENCY / 2);
      return short.length >= 2 ? Math.min(...short.map(([shard]) => Number(shard))) : undefined;
    },
    60_000,
    25
  );
  // Which worker runs it: the pending activity scheduled with that shard's input.
  const history = await handle.fetchHistory();
  const activityId = (history.events ?? [])
    .map((e) => e.activityTaskScheduledEventAttributes)
    .find((a) => {
      if (a?.activityType?.name !== 'teacherShard') return false;
      return defaultPayloadConverter.fromPayload<TeacherShardInput>(a.input!.payloads![0]).index === tailing;
    })?.activityId;
  const pending = (await handle.describe()).raw.pendingActivities?.find((a) => a.activityId === activityId);
  const victim = byIdentity.get(pending?.lastWorkerIdentity ?? '');
  t.truthy(victim, `shard ${tailing} runs on one of the worker processes (${pending?.lastWorkerIdentity})`);
  const gone = new Promise((r) => victim!.once('exit', r));
  victim!.kill('SIGKILL');
  await gone;
  workers.delete(victim!);
  const inFlightAtKill = server.counters().inFlight;

  const result = (await handle.result()) as PromptTeacherResult;
  t.is(result.total, n);
  t.is(result.failed, 0);
  const c = server.counters();
  t.true(c.maxInFlight <= CONCURRENCY, `at most ${CONCURRENCY} requests in flight; the server saw ${c.maxInFlight}`);
  // The dead worker's calls in flight were answered to nobody and sent again; nothing else was.
  t.true(
    c.repeatedAnswers <= inFlightAtKill,
    `${c.repeatedAnswers} answers repeated, at most the ${inFlightAtKill} in flight at the kill`
  );
  const retried = (await handle.fetchHistory()).events?.some(
    (e) => (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1
  );
  t.true(retried, 'the killed shard was retried');
  recordFigures('teacher-handoff-kill', {
    faultsTried: 1,
    faultsSurvived: c.maxInFlight <= CONCURRENCY && result.failed === 0 ? 1 : 0,
    teacherCallsRepeated: c.repeatedAnswers,
    examplesLost: result.failed + result.notSent,
  });
});
