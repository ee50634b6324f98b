/**
 * The teacher stage as library code, without Temporal: plan, run shards directly or as provider batches against the
 * real local teacher server, and assemble, on a filesystem store in a temporary folder. Shard identity, reuse of a
 * finished shard, and budget accounting are checked here; the activities and workflow around them elsewhere. Tests
 * that count the server's requests run serially.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { generateDemoTask } from '../lib/data/demo-task';
import type { Example } from '../lib/data/types';
import { InputError } from '../lib/errors';
import { parseSpec } from '../lib/pipeline/spec';
import { openStore } from '../lib/store';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { startLocalTeacherServer, type LocalTeacherServer } from '../lib/teacher/local-server';
import { Journal } from '../lib/teacher/journal';
import { CANCELLED_WRITES_MS, type CallRecord, type ShardResponse } from '../lib/teacher/shard';
import {
  assembleResponses,
  batchKey,
  budgetFor,
  collectShardBatch,
  doneKey,
  endpointOf,
  identityOf,
  journalPrefix,
  journalUsage,
  planShards,
  pollShardBatch,
  promptShard,
  readPlan,
  shardKeyOf,
  submitShardBatch,
  successes,
  type StageDeps,
  type TeacherShardInput,
  type TeacherShardResult,
  type TeacherStageInput,
} from '../lib/teacher/stage';
import { waitFor } from './helpers/wait';

const MODEL = 'stage-lib-test';
let tmp: string;
let store: ArtifactStore;
let server: LocalTeacherServer;
let deps: StageDeps;
let runs = 0;

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-stage-lib-'));
  store = openStore(join(tmp, 'store'));
  // No injected faults: every call succeeds, so a finished shard is reusable by another stage.
  server = await startLocalTeacherServer({ model: MODEL, errorRate: 0 });
  deps = {
    store,
    scripted: async () => ({ url: server.url, model: MODEL }),
    apiKey: () => undefined,
  };
});

test.after.always(async () => {
  await server?.close();
  await store?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** Stores `n` fresh demo examples as train (the first 90%) and valid; each call gets examples no other test has. */
async function stageInput(n: number, teacher: Record<string, unknown> = {}): Promise<TeacherStageInput> {
  const examples = generateDemoTask({ n, seed: 1000 + runs++ });
  const cut = Math.ceil(n * 0.9);
  const [train, valid] = await Promise.all([
    store.putJsonl(examples.slice(0, cut)),
    store.putJsonl(examples.slice(cut)),
  ]);
  const spec = parseSpec({ name: 'stage-lib', data: { kind: 'demo' }, teacher: { kind: 'scripted', ...teacher } });
  return { task: 'demo', teacher: spec.teacher, train, valid };
}

/** The test store with some of its methods replaced: a fault or a delay where a test needs one. */
function storeWith(overrides: Partial<Pick<ArtifactStore, 'getKey' | 'putKey'>>): ArtifactStore {
  return new Proxy(store, {
    get(target, prop, receiver) {
      if (prop in overrides) return overrides[prop as keyof typeof overrides];
      const value: unknown = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

function shardInput(stage: TeacherStageInput, plan: TeacherShardInput['plan'], index: number, stageId: string) {
  return { stage, stageId, plan, index, concurrency: 4 };
}

test('planShards splits train then valid into shards of shardSize, and the same input gives the same plan', async (t) => {
  const stage = await stageInput(50, { shardSize: 20 });
  const plan = await planShards(deps, stage);
  t.is(plan.shards, 3);
  t.is(plan.examples, 50);
  t.is(plan.calls, 50);
  t.deepEqual(plan.teacher.kind, 'scripted');
  t.is(plan.teacher.model, MODEL);
  const doc = await readPlan(store, plan.plan);
  t.deepEqual(
    doc.shards.map((s) => s.examples),
    [20, 20, 10]
  );
  // Plan order is train then valid, examples in split order.
  const ids: string[] = [];
  for (const s of doc.shards) ids.push(...(await store.getJsonl<{ id: string }>(s.ref)).map((e) => e.id));
  const split = async (ref: typeof stage.train) => (await store.getJsonl<Example>(ref)).map((e) => e.id);
  t.deepEqual(ids, [...(await split(stage.train)), ...(await split(stage.valid))]);
  t.deepEqual(await planShards(deps, stage), plan);
});

test('shard keys are stable, and change with anything that changes the teacher or the examples', async (t) => {
  const stage = await stageInput(10);
  const { identity, samples } = identityOf(stage.teacher, 'demo', MODEL);
  t.is(samples, 1);
  t.is(identityOf(stage.teacher, 'demo', MODEL).identity, identity);
  const warmer = { ...stage.teacher, temperature: 0.7 } as typeof stage.teacher;
  t.not(identityOf(warmer, 'demo', MODEL).identity, identity);
  t.not(identityOf(stage.teacher, 'demo', 'other-model').identity, identity);
  t.not(identityOf(stage.teacher, 'cqa', MODEL).identity, identity);

  const key = shardKeyOf(identity, stage.train);
  t.regex(key, /^[0-9a-f]{64}$/);
  t.is(shardKeyOf(identity, stage.train), key);
  t.not(shardKeyOf(identity, stage.valid), key);
  t.is(journalPrefix(key), `teacher/journal/${key}/`);
  t.is(doneKey(key), `teacher/shards/${key}.json`);
  t.is(batchKey(key, 2), `teacher/batches/${key}/2.json`);
});

test.serial(
  'a shard run directly journals every call and is stored as done; a retry and another stage make no call',
  async (t) => {
    const stage = await stageInput(30, { shardSize: 12 });
    const plan = await planShards(deps, stage);
    const before = server.stats().requests;
    const progress: [number, number][] = [];
    const results: TeacherShardResult[] = [];
    for (let index = 0; index < plan.shards; index++) {
      const onProgress = (step: number, total: number) => progress.push([step, total]);
      results.push(await promptShard(deps, shardInput(stage, plan.plan, index, 'stage-a'), { onProgress }));
    }
    t.deepEqual(
      results.map((r) => [r.index, r.examples, r.complete, r.failed, r.notSent]),
      [
        [0, 12, true, 0, 0],
        [1, 12, true, 0, 0],
        [2, 6, true, 0, 0],
      ]
    );
    const sent = results.reduce((n, r) => n + r.sent, 0);
    t.is(sent, 30);
    t.is(server.stats().requests - before, sent);
    t.true(results.every((r) => r.usage.promptTokens > 0 && r.costUsd === 0));
    t.deepEqual(progress.at(-1), [6, 6]);

    const doc = await readPlan(store, plan.plan);
    const key = shardKeyOf(doc.identity, doc.shards[0].ref);
    const journal = await store.listKeys(journalPrefix(key));
    t.true(journal.length > 0);
    t.truthy(await store.getKey(doneKey(key)));

    // A retry by the stage that finished it gets the same answer; another stage reuses it, charged nothing.
    t.deepEqual(await promptShard(deps, shardInput(stage, plan.plan, 0, 'stage-a')), results[0]);
    const reused = await promptShard(deps, shardInput(stage, plan.plan, 0, 'stage-b'));
    t.like(reused, { complete: true, resumed: 12, sent: 0, cached: 0, costUsd: 0 });
    t.deepEqual(reused.usage, { promptTokens: 0, completionTokens: 0 });
    t.is(server.stats().requests - before, sent);

    const finished = await assembleResponses(store, { plan: plan.plan });
    t.like(finished, { total: 30, cached: 0, failed: 0, notSent: 0 });
    const responses = await store.getJsonl<ShardResponse>(finished.responses);
    const ids: string[] = [];
    for (const s of doc.shards) ids.push(...(await store.getJsonl<{ id: string }>(s.ref)).map((e) => e.id));
    t.deepEqual(
      responses.map((r) => r.id),
      ids
    );
    t.true(responses.every((r) => r.completion.length > 0 && r.error === undefined));

    // New shard boundaries make new shards, but the response cache answers every call.
    const replanned = await planShards(deps, { ...stage, teacher: { ...stage.teacher, shardSize: 30 } });
    const again = await promptShard(deps, shardInput(stage, replanned.plan, 0, 'stage-c'));
    t.like(again, { complete: true, cached: 30, sent: 0 });
    t.is(server.stats().requests - before, sent);
  }
);

test('a budget stops a shard part-way; assembly records the rest as not sent', async (t) => {
  const price = { inputPerMillionTokens: 1000, outputPerMillionTokens: 1000 };
  const stage = await stageInput(20, { shardSize: 20, price, maxTokens: 64 });
  const plan = await planShards(deps, stage);
  // Room for a few calls at their worst case (prompt estimate + 64 completion tokens at $1000 per million).
  const input = { ...shardInput(stage, plan.plan, 0, 'budgeted'), concurrency: 1, budgetUsd: 2.5 };
  const stopped = await promptShard(deps, input);
  t.false(stopped.complete);
  t.true(stopped.budgetStopped);
  t.true(stopped.sent > 0 && stopped.sent < 20, `sent ${stopped.sent}`);
  t.is(stopped.notSent, 20 - stopped.sent);
  t.true(stopped.costUsd > 0 && stopped.costUsd <= 2.5, `cost ${stopped.costUsd}`);

  const finished = await assembleResponses(store, { plan: plan.plan });
  t.is(finished.total, 20);
  t.is(finished.notSent, stopped.notSent);
  t.is(finished.failed, 0);

  // Relaunched with the spend reported: the journal is resumed and the rest is sent.
  const rest = await promptShard(deps, { ...input, budgetUsd: undefined, accountedUsd: stopped.costUsd });
  t.true(rest.complete);
  t.is(rest.resumed, stopped.sent);
  t.is(rest.sent, 20 - stopped.sent);
});

test('budget accounting charges a stage only its own records, less what earlier launches reported', (t) => {
  const usage = (promptTokens: number, completionTokens: number) => ({ promptTokens, completionTokens });
  const records: CallRecord[] = [
    { i: 0, s: 0, id: 'a', promptHash: 'h', completion: 'x', usage: usage(100, 50), stage: 'mine' },
    { i: 1, s: 0, id: 'b', promptHash: 'h', error: 'timeout', usage: usage(100, 0), stage: 'mine' },
    { i: 1, s: 0, id: 'b', promptHash: 'h', completion: 'y', usage: usage(100, 50), stage: 'other' },
    { i: 2, s: 0, id: 'c', promptHash: 'h', error: 'timeout', stage: 'mine' },
  ];
  t.deepEqual(journalUsage(records, 'mine'), usage(200, 50));
  t.deepEqual(journalUsage(records, 'other'), usage(100, 50));
  // Example 1 failed once, then succeeded: a success is final.
  t.is(successes(records), 2);

  const price = { inputPerMillionTokens: 1_000_000, outputPerMillionTokens: 1_000_000 };
  const teacher = parseSpec({ name: 'b', data: { kind: 'demo' }, teacher: { kind: 'scripted', price } }).teacher;
  const input = { stage: { teacher } as TeacherStageInput, stageId: 'mine', budgetUsd: 1000 } as TeacherShardInput;
  // $1 a token: this stage's journal spent 250, none of it reported yet.
  t.is(budgetFor(input, records).limitUsd, 750);
  t.is(budgetFor({ ...input, accountedUsd: 100 }, records).limitUsd, 850);
  t.is(budgetFor({ ...input, accountedUsd: 400 }, records).limitUsd, 1000);
  t.is(budgetFor({ ...input, budgetUsd: 100 }, records).limitUsd, 0);
  t.is(budgetFor({ ...input, budgetUsd: undefined }, records).limitUsd, undefined);
});

test('endpointOf reads the key the spec names through the lookup; an unset non-default variable is an InputError', async (t) => {
  const openai = (apiKeyEnv?: string) =>
    parseSpec({
      name: 'k',
      data: { kind: 'demo' },
      teacher: { kind: 'openai', url: 'http://127.0.0.1:1/v1', model: 'm', ...(apiKeyEnv ? { apiKeyEnv } : {}) },
    }).teacher as Parameters<typeof endpointOf>[0];
  const keys: Record<string, string> = { MY_KEY: 'sk-mine' };
  const lookup = { scripted: deps.scripted, apiKey: (v: string) => keys[v] };
  t.deepEqual(await endpointOf(openai('MY_KEY'), lookup), {
    baseURL: 'http://127.0.0.1:1/v1',
    model: 'm',
    apiKey: 'sk-mine',
  });
  // The default variable may be unset: keyless local servers.
  t.is((await endpointOf(openai(), lookup)).apiKey, undefined);
  await t.throwsAsync(endpointOf(openai('MISSING_KEY'), lookup), {
    instanceOf: InputError,
    message: /MISSING_KEY/,
  });
  const scripted = await stageInput(1);
  t.deepEqual(await endpointOf(scripted.teacher as Parameters<typeof endpointOf>[0], lookup), {
    baseURL: server.url,
    model: MODEL,
  });
});

test.serial(
  'a shard sent as a batch is submitted, polled, collected and done, with the same responses as direct calls',
  async (t) => {
    const stage = await stageInput(16, { shardSize: 16, mode: 'batch' });
    const plan = await planShards(deps, stage);
    const input = { ...shardInput(stage, plan.plan, 0, 'batch-stage'), round: 0 };
    const submitted = await submitShardBatch(deps, input);
    t.truthy(submitted.batchId);
    t.is(submitted.result, undefined);
    // Idempotent: a retry finds the live batch rather than submitting the calls again.
    t.deepEqual(await submitShardBatch(deps, input), submitted);

    let status = await pollShardBatch(deps, { stage, batchId: submitted.batchId! });
    for (let tries = 0; !status.terminal && tries < 100; tries++) {
      await new Promise((r) => setTimeout(r, 50));
      status = await pollShardBatch(deps, { stage, batchId: submitted.batchId! });
    }
    t.is(status.status, 'completed');

    const collected: number[] = [];
    const told: { outcome: string; tokens: number }[] = [];
    const result = await collectShardBatch(
      deps,
      { ...input, batchId: submitted.batchId!, lastRound: false },
      {
        onCollected: (n) => collected.push(n),
        onCalls: (outcome, count, usage) =>
          told.push({ outcome, tokens: count * ((usage?.promptTokens ?? 0) + (usage?.completionTokens ?? 0)) }),
      }
    );
    t.like(result, { complete: true, sent: 16, failed: 0, notSent: 0 });
    t.is(collected.at(-1), 16);
    // Metrics hear of batch calls as of direct ones: each answer once, with the tokens the journal charges.
    t.deepEqual(
      told.map((c) => c.outcome),
      Array(16).fill('sent')
    );
    const toldTokens = told.reduce((n, c) => n + c.tokens, 0);
    t.true(toldTokens > 0);
    t.is(toldTokens, result.usage.promptTokens + result.usage.completionTokens);
    // Finished: a later submission returns the result instead of a batch.
    t.deepEqual(await submitShardBatch(deps, { ...input, round: 1 }), { result });

    const batchResponses = await store.getJsonl<ShardResponse>(
      (await assembleResponses(store, { plan: plan.plan })).responses
    );
    // The answers went into the response cache: the same examples in direct mode make no call, and agree.
    const before = server.stats().requests;
    const direct = { ...stage, teacher: { ...stage.teacher, mode: 'direct', shardSize: 8 } } as TeacherStageInput;
    const directPlan = await planShards(deps, direct);
    for (let index = 0; index < directPlan.shards; index++) {
      await promptShard(deps, shardInput(direct, directPlan.plan, index, 'direct-stage'));
    }
    t.is(server.stats().requests, before);
    const directResponses = await store.getJsonl<ShardResponse>(
      (await assembleResponses(store, { plan: directPlan.plan })).responses
    );
    t.deepEqual(
      directResponses.map((r) => [r.id, r.completion, r.promptHash]),
      batchResponses.map((r) => [r.id, r.completion, r.promptHash])
    );
  }
);

test('aborting the signal stops a shard promptly', async (t) => {
  const hanging = await startLocalTeacherServer({ model: MODEL, latencyMs: 60_000 });
  t.teardown(() => hanging.close());
  const own = { ...deps, scripted: async () => ({ url: hanging.url, model: MODEL }) };
  const stage = await stageInput(40);
  const plan = await planShards(own, stage);
  const controller = new AbortController();
  const running = promptShard(own, shardInput(stage, plan.plan, 0, 'aborted'), { signal: controller.signal });
  await new Promise((r) => setTimeout(r, 300));
  const started = Date.now();
  controller.abort(new Error('stop'));
  await t.throwsAsync(running);
  t.true(Date.now() - started < 5_000);
});

/**
 * A shard cancelled while its answers' journal writes are in flight: `journalDelayMs` slows each journal segment write
 * (forever when undefined). Every request after the eighth is held, so when the signal aborts, eight answers are in
 * hand and none is coming.
 */
async function cancelWithJournalWrites(t: ExecutionContext, journalDelayMs: number | undefined) {
  const held = await startLocalTeacherServer({ model: MODEL, latencyMs: 5, errorRate: 0 });
  t.teardown(async () => {
    held.release();
    await held.close();
  });
  held.setFaults({ holdAfter: 8 });
  const slow = storeWith({
    putKey: async (key, body, opts) => {
      if (key.startsWith('teacher/journal/')) {
        await new Promise((r) => (journalDelayMs === undefined ? undefined : setTimeout(r, journalDelayMs)));
      }
      return store.putKey(key, body, opts);
    },
  });
  const own = { ...deps, store: slow, scripted: async () => ({ url: held.url, model: MODEL }) };
  const stage = await stageInput(40);
  const plan = await planShards(own, stage);
  const controller = new AbortController();
  // Counted as the shard takes each answer in: the server's own count runs ahead of it, by an answer sent but not yet
  // read (which the cancel then aborts, and which no journal could hold).
  let received = 0;
  const running = promptShard(own, shardInput(stage, plan.plan, 0, 'cancelled'), {
    signal: controller.signal,
    onCalls: (outcome, count) => {
      if (outcome === 'sent') received += count;
    },
  });
  running.catch(() => undefined);
  await waitFor('eight answers in hand', () => (received === 8 ? true : undefined), 30_000, 5);
  const started = Date.now();
  controller.abort(new Error('worker shutting down'));
  await t.throwsAsync(running, { message: 'worker shutting down' });
  const doc = await readPlan(store, plan.plan);
  const key = shardKeyOf(doc.identity, doc.shards[0].ref);
  const waitedMs = Date.now() - started;
  const { records } = await Journal.open<CallRecord>(store, journalPrefix(key));
  return { waitedMs, journalled: successes(records) };
}

test('a cancelled shard writes down the answers it has before it throws, so its retry pays for none again', async (t) => {
  const { waitedMs, journalled } = await cancelWithJournalWrites(t, 400);
  t.is(journalled, 8, 'every answer received is in the journal when the cancelled attempt ends');
  t.true(waitedMs >= 300, `it waited for the writes (${waitedMs} ms)`);
});

test('a cancelled shard waits for a store that does not answer only so long', async (t) => {
  const { waitedMs, journalled } = await cancelWithJournalWrites(t, undefined);
  t.is(journalled, 0);
  t.true(waitedMs >= CANCELLED_WRITES_MS - 100 && waitedMs < CANCELLED_WRITES_MS + 3_000, `${waitedMs} ms`);
});

test('a slot that fails stops the shard taking calls: once the attempt has failed, no call of it is still sent', async (t) => {
  const slow = await startLocalTeacherServer({ model: MODEL, latencyMs: 100, errorRate: 0 });
  t.teardown(() => slow.close());
  // The response cache fails its sixth read for good: one slot's lookup throws while the other slots have calls in
  // flight and most of the shard is still to send.
  let reads = 0;
  const failing = storeWith({
    getKey: async (key) => {
      if (key.startsWith('cache/teacher/') && ++reads === 6) throw new Error('cache read refused');
      return store.getKey(key);
    },
  });
  const own = { ...deps, store: failing, scripted: async () => ({ url: slow.url, model: MODEL }) };
  const stage = await stageInput(40);
  const plan = await planShards(own, stage);
  await t.throwsAsync(promptShard(own, shardInput(stage, plan.plan, 0, 'failing-slot'), {}), {
    message: 'cache read refused',
  });
  const atFailure = slow.counters().requests;
  await new Promise((r) => setTimeout(r, 1_000));
  t.is(slow.counters().requests, atFailure, 'no call was sent after the attempt failed');
  // What the attempt finished was journalled before it failed: a retry resumes every one of its calls.
  const retried = await promptShard(own, shardInput(stage, plan.plan, 0, 'failing-slot'), {});
  t.true(atFailure < retried.calls / 2, `the first attempt stopped early (${atFailure} of ${retried.calls} calls)`);
  t.is(retried.resumed, atFailure);
  t.is(retried.sent, retried.calls - atFailure);
  t.is(slow.counters().requests, retried.calls, 'each call was sent once');
});

test('a slot sends its next call while its last answer is written, and never has two answers unwritten', async (t) => {
  // A store slower than the endpoint: each journal write takes 250 ms, each call 40 ms.
  const quick = await startLocalTeacherServer({ model: MODEL, latencyMs: 40, errorRate: 0 });
  t.teardown(() => quick.close());
  let durable = 0;
  const slowJournal = storeWith({
    putKey: async (key, body, opts) => {
      if (!key.startsWith('teacher/journal/')) return store.putKey(key, body, opts);
      await new Promise((r) => setTimeout(r, 250));
      const written = await store.putKey(key, body, opts);
      durable += String(body).trim().split('\n').length;
      return written;
    },
  });
  const own = { ...deps, store: slowJournal, scripted: async () => ({ url: quick.url, model: MODEL }) };
  const stage = await stageInput(10);
  const plan = await planShards(own, stage);
  // Calls the endpoint has received that no journal record holds yet, sampled as the shard runs on one slot.
  let most = 0;
  const sampler = setInterval(() => (most = Math.max(most, quick.counters().requests - durable)), 5);
  try {
    const result = await promptShard(own, { ...shardInput(stage, plan.plan, 0, 'pipelined-slot'), concurrency: 1 }, {});
    t.is(result.sent, result.calls);
  } finally {
    clearInterval(sampler);
  }
  t.is(durable, quick.counters().requests, 'every call sent has its record in the journal');
  // Two: the answer being written and the next call in flight. Waiting for each write before the next call would
  // make it one; not waiting at all would let unwritten answers pile up behind the slow store.
  t.is(most, 2);
});
