/**
 * Batch mode under faults, as library steps and activities against the real local teacher server and a filesystem
 * store: a batch create whose answer is lost (the provider created it, then the connection dropped) submits and
 * bills the shard's calls once, not twice; a store that fails while a batch's answers are journalled fails the
 * activity, rather than leaving an unhandled rejection behind a step that reports success.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createActivities } from '../../activities';
import { generateDemoTask } from '../../lib/data/demo-task';
import { parseSpec } from '../../lib/pipeline/spec';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import { startLocalTeacherServer } from '../../lib/teacher/local-server';
import {
  planShards,
  pollShardBatch,
  submitShardBatch,
  type StageDeps,
  type TeacherBatchInput,
  type TeacherStageInput,
} from '../../lib/teacher/stage';
import { runIn } from '../helpers/activities';
import { recordFigures } from '../helpers/figures';

const MODEL = 'batch-fault-test';
let tmp: string;
let store: ArtifactStore;

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-batch-faults-'));
  store = openStore(join(tmp, 'store'));
});

test.after.always(async () => {
  await store?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

let runs = 0;
/** `n` fresh demo examples as one batch-mode shard's stage input. */
async function batchStage(n: number): Promise<TeacherStageInput> {
  const examples = generateDemoTask({ n, seed: 7100 + runs++ });
  const [train, valid] = await Promise.all([
    store.putJsonl(examples.slice(0, n - 2)),
    store.putJsonl(examples.slice(-2)),
  ]);
  const spec = parseSpec({
    name: 'batch-faults',
    data: { kind: 'demo' },
    teacher: { kind: 'scripted', shardSize: n, mode: 'batch' },
  });
  return { task: 'demo', teacher: spec.teacher, train, valid };
}

function depsFor(url: string, over: ArtifactStore = store): StageDeps {
  return { store: over, scripted: async () => ({ url, model: MODEL }), apiKey: () => undefined };
}

async function untilTerminal(deps: StageDeps, stage: TeacherStageInput, batchId: string): Promise<void> {
  for (let tries = 0; tries < 400; tries++) {
    if ((await pollShardBatch(deps, { stage, batchId })).terminal) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`batch ${batchId} did not finish`);
}

test.serial('a batch create whose answer is lost is found by its metadata: one batch created and billed', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL, errorRate: 0 });
  t.teardown(() => server.close());
  const deps = depsFor(server.url);
  const stage = await batchStage(12);
  const plan = await planShards(deps, stage);
  const input: TeacherBatchInput = {
    stage,
    stageId: 'lost-create',
    plan: plan.plan,
    index: 0,
    concurrency: 4,
    round: 0,
  };
  // The server creates the batch, then drops the connection instead of answering.
  server.setFaults({ loseBatchCreates: 1 });
  const submitted = await submitShardBatch(deps, input);
  t.truthy(submitted.batchId, 'the step recovered the id of the batch it created');
  // A retry of the step (as Temporal would run after any failure) finds the same batch again.
  t.deepEqual(await submitShardBatch(deps, input), submitted);

  const sdk = new OpenAI({ baseURL: server.url, apiKey: 'unused', maxRetries: 0 });
  const created = [];
  for await (const b of sdk.batches.list({ limit: 100 })) created.push(b);
  t.is(created.length, 1, 'exactly one batch was created');
  t.is(created[0].id, submitted.batchId ?? '');
  t.like(created[0].metadata ?? {}, { stepwise_round: '0' });

  await untilTerminal(deps, stage, submitted.batchId!);
  const env = new MockActivityEnvironment();
  const acts = createActivities({ ...deps, codeVersion: 'test' });
  const result = await runIn(env, acts.collectTeacherBatch, {
    ...input,
    batchId: submitted.batchId!,
    lastRound: false,
  });
  t.like(result, { complete: true, failed: 0, calls: 12 });
  // Billed once: each call was answered (and billed) by one batch line only.
  const c = server.counters();
  t.is(c.answered, 12);
  t.is(c.repeatedAnswers, 0);
  recordFigures('batch-create-answer-lost', {
    faultsTried: 1,
    faultsSurvived: created.length === 1 && result.complete ? 1 : 0,
    teacherCallsRepeated: c.repeatedAnswers,
    examplesLost: 12 - c.answered,
  });
});

/** The store, except that journal writes fail while `failing.on` is set. */
function journalFailingStore(inner: ArtifactStore, failing: { on: boolean }): ArtifactStore {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (prop === 'putKey') {
        return (key: string, ...rest: unknown[]) => {
          if (failing.on && key.startsWith('teacher/journal/')) {
            return Promise.reject(new Error(`injected store failure writing ${key}`));
          }
          return (target.putKey as (...a: unknown[]) => Promise<unknown>).call(target, key, ...rest);
        };
      }
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

test.serial(
  'a journal store failure while collecting a batch fails the activity, with no unhandled rejection',
  async (t) => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    t.teardown(() => process.off('unhandledRejection', onUnhandled));
    const server = await startLocalTeacherServer({ model: MODEL, errorRate: 0 });
    t.teardown(() => server.close());
    const failing = { on: false };
    const deps = depsFor(server.url, journalFailingStore(store, failing));
    const stage = await batchStage(10);
    const plan = await planShards(deps, stage);
    const input: TeacherBatchInput = {
      stage,
      stageId: 'journal-fails',
      plan: plan.plan,
      index: 0,
      concurrency: 4,
      round: 0,
    };
    const submitted = await submitShardBatch(deps, input);
    await untilTerminal(deps, stage, submitted.batchId!);

    failing.on = true;
    const acts = createActivities({ ...deps, codeVersion: 'test' });
    const collect = { ...input, batchId: submitted.batchId!, lastRound: false };
    await t.throwsAsync(runIn(new MockActivityEnvironment(), acts.collectTeacherBatch, collect), {
      message: /injected store failure/,
    });
    // Any stray rejection would surface within a few turns of the event loop.
    await new Promise((r) => setTimeout(r, 200));
    t.deepEqual(unhandled, []);

    // With the store back, a retry of the activity collects the same batch and finishes the shard.
    failing.on = false;
    const result = await runIn(new MockActivityEnvironment(), acts.collectTeacherBatch, collect);
    t.like(result, { complete: true, failed: 0, calls: 10 });
    recordFigures('batch-journal-store-failure', {
      faultsTried: 1,
      faultsSurvived: unhandled.length === 0 && result.complete ? 1 : 0,
      examplesLost: result.failed + result.notSent,
    });
  }
);
