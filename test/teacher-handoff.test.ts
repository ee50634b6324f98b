/**
 * Shards hand their free slots on: a shard that has no call left to start tells the stage how many slots it keeps,
 * the stage starts the next shard at once in the rest, and that shard takes up the kept slots only once the first has
 * ended. Checked at the server (requests in flight never above the stage's concurrency; no call repeated), in the
 * library (lent slots, the tail's count, a retry bound by its mark) and through Temporal on the real dev server.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { defaultPayloadConverter } from '@temporalio/common';
import { CPU_TASK_QUEUE, type PromptTeacherResult } from '../contract';
import { startLocalTeacherServer, type LocalTeacherServer } from '../lib/teacher';
import { Journal } from '../lib/teacher/journal';
import type { CallRecord } from '../lib/teacher/shard';
import {
  journalPrefix,
  planShards,
  promptShard,
  readPlan,
  shardKeyOf,
  type StageDeps,
  type TeacherShardInput,
  type TeacherShardResult,
} from '../lib/teacher/stage';
import { ShardSlots } from '../lib/teacher/stage/handoff';
import { tailKey } from '../lib/teacher/stage/layout';
import { teacherStage } from '../workflows';
import { historyJson } from './helpers/history';
import { servicesForFile } from './helpers/services';
import { demoTeacherStage } from './helpers/teacher-stage';
import { sleep, waitFor } from './helpers/wait';

const MODEL = 'handoff-under-test';
const services = servicesForFile({ workers: ['cpu'] });
let runs = 0;

async function server(t: { teardown: (fn: () => Promise<void>) => void }, latencyMs: number) {
  const s = await startLocalTeacherServer({ model: MODEL, latencyMs, errorRate: 0 });
  t.teardown(() => s.close());
  return s;
}

/** `n` fresh demo examples as a stage of an openai teacher at `s`, with `teacher` settings on top. */
function stageInput(n: number, s: LocalTeacherServer, teacher: Record<string, unknown> = {}) {
  return demoTeacherStage(services().store, {
    n,
    seed: 7700 + 100 * runs++,
    name: 'handoff',
    teacher: { kind: 'openai', url: s.url, model: MODEL, ...teacher },
  });
}

const deps = (): StageDeps => ({
  store: services().store,
  scripted: () => Promise.reject(new Error('no scripted teacher here')),
  apiKey: () => undefined,
});

/** Shard 0 of a one-shard plan of `n` examples, ready to run outside Temporal. */
async function oneShard(n: number, s: LocalTeacherServer, concurrency: number, more: Partial<TeacherShardInput> = {}) {
  const stage = await stageInput(n, s, { shardSize: n });
  const plan = await planShards(deps(), stage);
  const input: TeacherShardInput = {
    stage,
    stageId: `handoff-lib-${runs}`,
    plan: plan.plan,
    index: 0,
    concurrency,
    ...more,
  };
  const doc = await readPlan(services().store, plan.plan);
  return { input, shardKey: shardKeyOf(doc.identity, doc.shards[0].ref) };
}

test('a shard lent slots starts without them, takes them up once they are back, and does not end before', async (t) => {
  const s = await server(t, 40);
  const { input } = await oneShard(60, s, 6);
  let giveBack!: () => void;
  const back = new Promise<void>((resolve) => (giveBack = resolve));
  const running = promptShard(deps(), input, { lent: { slots: 4, back } });
  await waitFor('a dozen answers', () => (s.counters().answered >= 12 ? true : undefined), 30_000, 5);
  t.is(s.counters().maxInFlight, 2, 'two slots of six at work while four are lent');
  giveBack();
  const result = await running;
  t.true(result.complete);
  t.is(result.sent, 60);
  t.is(s.counters().maxInFlight, 6, 'all six at work once the lent four came back');

  // A shard whose calls are all done still waits for its lent slots: what it hands on in turn includes them.
  const few = await oneShard(3, s, 6);
  let giveFewBack!: () => void;
  const fewBack = new Promise<void>((resolve) => (giveFewBack = resolve));
  let fewSettled = false;
  const fewRunning = promptShard(deps(), few.input, { lent: { slots: 4, back: fewBack } }).finally(
    () => (fewSettled = true)
  );
  await waitFor('its three answers', () => (s.counters().answered >= 63 ? true : undefined), 30_000, 5);
  await sleep(300);
  t.false(fewSettled, 'not ended while its lent slots are out');
  giveFewBack();
  t.true((await fewRunning).complete);
});

test('in one worker, a shard started in a tail takes up each slot as the holder frees it, around a straggler', async (t) => {
  const s = await server(t, 30);
  const first = await oneShard(24, s, 6, { handoff: true });
  const second = await oneShard(200, s, 6);
  const slots = new ShardSlots();
  const over = new AbortController();
  t.teardown(() => over.abort());
  // The first request hangs: the first shard's other calls end long before it, and so do their slots.
  const HANG_MS = 5000;
  s.setFaults({ hangMs: HANG_MS });
  let next: Promise<TeacherShardResult & { endedAt: number }> | undefined;
  let kept = -1;
  const a = promptShard(deps(), first.input, {
    onTail: (k) => {
      kept = k;
      next = promptShard(deps(), second.input, {
        lent: {
          slots: k,
          back: slots.whenEnded('first', over.signal),
          trickle: (take) => slots.trickle('first', take, over.signal),
        },
      }).then((result) => ({ ...result, endedAt: performance.now() }));
    },
    onFreed: (n) => slots.free('first', n),
  }).then((result) => {
    slots.end('first');
    return { ...result, endedAt: performance.now() };
  });
  await waitFor('the second shard to start', () => (next ? true : undefined), 30_000, 5);
  const secondDoneAt = await waitFor(
    'the second shard to have its 200 answers',
    () => (s.counters().answered >= 23 + 200 ? performance.now() : undefined),
    30_000,
    5
  );
  const [resultA, resultB] = await Promise.all([a, next!]);
  t.true(kept >= 1 && kept < 6, `the tail kept ${kept} of 6 slots`);
  t.true(
    secondDoneAt < resultA.endedAt,
    'the second shard made all its calls while the straggler held one slot (with only the slots free at the tail, ' +
      `one slot, they would take ${200 * 30} ms and more)`
  );
  t.true(resultB.endedAt >= resultA.endedAt, 'the second shard ended only once the first had');
  t.is(s.counters().maxInFlight, 6, 'six calls in flight at most: the share, never more');
  t.is(s.counters().requests, 224);
  t.true(resultA.complete && resultB.complete);
});

test('a shard tells its tail once, after marking it, with the slots that can still hold a call', async (t) => {
  const s = await server(t, 30);
  // 50 calls on 8 slots: the last round has two calls, so six slots are free at the tail.
  const { input, shardKey } = await oneShard(50, s, 8, { handoff: true });
  const told: { slots: number; answered: number; marked: unknown }[] = [];
  const result = await promptShard(deps(), input, {
    onTail: (slots) => {
      told.push({ slots, answered: s.counters().answered, marked: undefined });
      void services()
        .store.getKeyJson(tailKey(shardKey, input.stageId))
        .then((mark) => (told[told.length - 1].marked = mark));
    },
  });
  t.true(result.complete);
  await waitFor('the mark to be read back', () => (told[0]?.marked ? true : undefined), 10_000, 5);
  t.is(told.length, 1, 'told once');
  const [{ slots, answered, marked }] = told;
  t.deepEqual(marked, { slots }, 'the mark a retry reads was written before the stage was told');
  t.true(slots < 8, `slots kept ${slots} < 8`);
  t.true(
    50 - answered <= slots,
    `calls still to answer at the tail (${50 - answered}) fit in the slots kept (${slots})`
  );
  t.is(s.counters().requests, 50);
});

test('a retry of a shard that handed its slots on keeps within them, and leaves its journalled failures', async (t) => {
  const s = await server(t, 30);
  const { input, shardKey } = await oneShard(20, s, 8, { handoff: true });
  // An earlier attempt marked two slots kept and journalled one call as failed, then died.
  await services().store.putKey(tailKey(shardKey, input.stageId), Buffer.from(JSON.stringify({ slots: 2 })));
  const journal = (await Journal.open<CallRecord>(services().store, journalPrefix(shardKey))).journal;
  await journal.append({ i: 0, s: 0, id: 'x', promptHash: 'x', error: 'gave up', stage: input.stageId });
  await journal.flush();
  const told: number[] = [];
  const result = await promptShard(deps(), input, { onTail: (slots) => told.push(slots) });
  t.is(s.counters().maxInFlight, 2, 'at most the two slots kept');
  t.is(s.counters().requests, 19, 'the journalled failure is not sent again');
  t.is(result.failed, 1);
  t.is(told[0], 2, 'the stage is told again, in case the attempt that marked it died first');
});

test('through Temporal, each next shard starts in a tail, and the stage never has more calls in flight than its concurrency', async (t) => {
  const s = await server(t, 400);
  // 138 examples in shards of 23, two at a time on 10 slots: five each, so a shard's last round is three calls, and
  // the next shard can start in the slots that round leaves free.
  const input = await stageInput(138, s, { concurrency: 10, parallelShards: 2, shardSize: 23 });
  const workflowId = `handoff-${Date.now()}`;
  const handle = await services().client.workflow.start(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [input],
  });
  const result = (await handle.result()) as PromptTeacherResult;
  t.is(result.total, 138);
  t.is(result.failed, 0);
  const c = s.counters();
  t.true(c.maxInFlight <= 10, `at most 10 requests in flight; the server saw ${c.maxInFlight}`);
  t.is(c.repeatedAnswers, 0);
  t.is(c.requests, 138);

  // From the history: which shards started after which, and when each started and ended.
  const scheduled = new Map<string, TeacherShardInput>();
  const started = new Map<number, number>();
  const ended = new Map<number, number>();
  for (const e of (await handle.fetchHistory()).events ?? []) {
    const at = Number(e.eventTime?.seconds ?? 0) * 1000 + Math.floor((e.eventTime?.nanos ?? 0) / 1e6);
    const sch = e.activityTaskScheduledEventAttributes;
    if (sch?.activityType?.name === 'teacherShard') {
      scheduled.set(String(e.eventId), defaultPayloadConverter.fromPayload(sch.input!.payloads![0]));
    }
    const st = e.activityTaskStartedEventAttributes;
    if (st && scheduled.has(String(st.scheduledEventId)))
      started.set(scheduled.get(String(st.scheduledEventId))!.index, at);
    const done = e.activityTaskCompletedEventAttributes;
    if (done && scheduled.has(String(done.scheduledEventId))) {
      ended.set(scheduled.get(String(done.scheduledEventId))!.index, at);
    }
  }
  const inputs = [...scheduled.values()];
  t.is(inputs.length, 6);
  for (const shard of inputs) t.is(shard.concurrency, 5);
  const heirs = inputs.filter((shard) => shard.after !== undefined);
  t.true(heirs.length >= 3, `${heirs.length} of the 4 later shards started in a tail`);
  for (const heir of heirs) {
    const { shard, slots } = heir.after!;
    t.true(slots < 5, `shard ${heir.index} was lent ${slots} of 5 slots`);
    t.true(
      started.get(heir.index)! < ended.get(shard)!,
      `shard ${heir.index} started before shard ${shard}, whose tail it took, ended`
    );
  }

  if (process.env.STEPWISE_RECORD_HISTORY) {
    // The replay test's fixture: a stage whose shards started in each other's tails, as the Temporal CLI shows it.
    const history = await historyJson(services().temporal.address, workflowId);
    await writeFile(join(__dirname, 'fixtures', 'teacher-handoff-history.json'), history);
  }
});
