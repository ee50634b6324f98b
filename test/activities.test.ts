/**
 * Activity tests: each stage's activity function in a MockActivityEnvironment, so heartbeats and cancellation are
 * observed directly, with a real filesystem store and the real local teacher server.
 */
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import test from 'ava';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { sha256Hex, type ArtifactStore } from '../lib/store/artifact-store';
import { createActivities } from '../activities';
import { readT5 } from '../lib/student/hf';
import { readCheckpointMeta, serializeWeights } from '../lib/student/checkpoint';
import { parseSpec } from '../lib/pipeline/spec';
import { startLocalTeacherServer, type LocalTeacherServer } from '../lib/teacher/local-server';
import type { Activities, TeacherStageInput } from '../contract';
import { activityFixture, runIn } from './helpers/activities';

const DATASETS = resolve(__dirname, '..', '..', 'shared', 'datasets');
let tmp: string;
let store: ArtifactStore;
let server: LocalTeacherServer;
let activities: Activities;
let close: (() => Promise<void>) | undefined;

test.before(async () => {
  server = await startLocalTeacherServer({ model: 'scripted-test', errorRate: 0.1, latencyMs: 5 });
  ({ tmp, store, activities, close } = await activityFixture('stepwise-activities-', async () => ({
    url: server.url,
    model: 'scripted-test',
  })));
});

test.after.always(async () => {
  await server?.close();
  await close?.();
});

const demo = parseSpec({ name: 'act-demo', data: { kind: 'demo', size: 100, seed: 5 }, teacher: { kind: 'scripted' } });

test('sample is deterministic: the same spec gives the same split artifacts and hashes', async (t) => {
  const env = new MockActivityEnvironment();
  const a = await runIn(env, activities.sample, demo);
  const b = await runIn(env, activities.sample, demo);
  t.deepEqual(a, b);
  t.deepEqual(a.counts, { train: 72, valid: 8, test: 20 });
});

test('sample holds out 10% of the reference CQA train split for validation, then subsamples the rest', async (t) => {
  const spec = parseSpec({
    name: 'act-cqa',
    data: { kind: 'reference', dir: DATASETS, task: 'cqa' },
    teacher: { kind: 'replay' },
    sample: { fraction: 0.1, seed: 1 },
  });
  const r = await runIn(new MockActivityEnvironment(), activities.sample, spec);
  // Validation comes from the whole split, so every fraction validates on the same examples (as the reference does).
  t.is(r.counts.valid, Math.ceil(0.1 * 9741));
  t.is(r.counts.train, Math.round(0.1 * (9741 - Math.ceil(0.1 * 9741))));
  t.is(r.counts.test, 1221);
  t.regex(r.source, /cqa/);
});

/** Plan, every shard, finish: the teacher stage's activities in order, as the teacherStage workflow runs them. */
async function runTeacherStage(
  acts: Activities,
  input: TeacherStageInput,
  onEnv: (env: MockActivityEnvironment) => void = () => undefined
) {
  const plan = await runIn(new MockActivityEnvironment(), acts.planTeacher, input);
  const shards = [];
  for (let index = 0; index < plan.shards; index++) {
    const env = new MockActivityEnvironment();
    onEnv(env);
    shards.push(
      await runIn(env, acts.teacherShard, {
        stage: input,
        stageId: `stage-${input.teacher.kind}-${plan.plan.sha256}`,
        plan: plan.plan,
        index,
        concurrency: 8,
      })
    );
  }
  const finished = await runIn(new MockActivityEnvironment(), acts.finishTeacher, { plan: plan.plan });
  return { plan, shards, finished };
}

test('the teacher activities shard the examples, heartbeat, and a re-run is answered from the cache', async (t) => {
  const sample = await runIn(new MockActivityEnvironment(), activities.sample, demo);
  const beats: { step: number; total: number; shard: number }[] = [];
  const before = server.stats().requests;
  const stage = {
    task: 'demo' as const,
    teacher: { ...demo.teacher, shardSize: 30 },
    train: sample.train,
    valid: sample.valid,
  };
  const first = await runTeacherStage(activities, stage, (env) => env.on('heartbeat', (d) => beats.push(d)));
  t.is(first.plan.shards, 3);
  t.deepEqual(
    first.shards.map((s) => s.examples),
    [30, 30, 20]
  );
  t.is(first.finished.total, 80);
  t.is(first.finished.failed, 0);
  t.deepEqual(
    beats.filter((b) => b.step === b.total).map((b) => b.shard),
    [0, 1, 2]
  );
  const sent = first.shards.reduce((a, s) => a + s.sent, 0);
  t.is(server.stats().requests - before, sent);
  t.true(first.shards.every((s) => s.usage.promptTokens > 0 || s.cached === s.calls));
  const responses = await store.getJsonl<{ id: string; completion: string; promptHash: string }>(
    first.finished.responses
  );
  t.is(responses.length, 80);
  t.true(responses.every((r) => r.completion.length > 0));

  // Other shard boundaries make other shards, but every call is in the response cache: nothing is sent.
  const again = await runTeacherStage(activities, { ...stage, teacher: { ...stage.teacher, shardSize: 50 } });
  t.is(again.plan.shards, 2);
  t.is(again.finished.cached, 80);
  t.is(server.stats().requests - before, sent);
  const strip = (rs: { id: string; completion: string; promptHash?: string }[]) =>
    rs.map(({ id, completion, promptHash }) => ({ id, completion, promptHash }));
  const againResponses = await store.getJsonl<{ id: string; completion: string; cached: boolean }>(
    again.finished.responses
  );
  t.deepEqual(strip(againResponses), strip(responses));
  t.true(againResponses.every((r) => r.cached));
});

test('cancelling a teacher shard stops it promptly with a CancelledFailure', async (t) => {
  const spec = parseSpec({
    name: 'act-cancel',
    data: { kind: 'demo', size: 2000, seed: 9 },
    teacher: { kind: 'scripted' },
  });
  // A server of its own that hangs on every call, so the activity is mid-flight when the cancellation arrives.
  const hanging = await startLocalTeacherServer({ model: 'scripted-test', latencyMs: 60_000 });
  t.teardown(() => hanging.close());
  const own = createActivities({
    store,
    codeVersion: 'test',
    apiKey: (variable) => process.env[variable],
    scripted: async () => ({ url: hanging.url, model: 'scripted-test' }),
  });
  const sample = await runIn(new MockActivityEnvironment(), own.sample, spec);
  const stage = { task: 'demo' as const, teacher: spec.teacher, train: sample.train, valid: sample.valid };
  const plan = await runIn(new MockActivityEnvironment(), own.planTeacher, stage);
  const env = new MockActivityEnvironment();
  const running = runIn(env, own.teacherShard, { stage, stageId: 'cancel', plan: plan.plan, index: 0, concurrency: 8 });
  await new Promise((r) => setTimeout(r, 300));
  const started = Date.now();
  env.cancel();
  const err = await t.throwsAsync(running);
  t.true(err instanceof CancelledFailure, `${err?.name}: ${err?.message}`);
  t.true(Date.now() - started < 5_000);
});

test('validateRationales keeps parsable rationales and reports every drop reason with examples', async (t) => {
  const examples = [
    { id: 'a', input: 'The food was great, the staff was lovely and the view was awful.', label: 'positive' },
    { id: 'b', input: 'The food was rude, the staff was awful and the view was lovely.', label: 'negative' },
    { id: 'c', input: 'The food was great, the staff was great and the view was great.', label: 'positive' },
    { id: 'd', input: 'The food was awful, the staff was awful and the view was awful.', label: 'negative' },
  ];
  const [train, valid] = await Promise.all([store.putJsonl(examples.slice(0, 3)), store.putJsonl(examples.slice(3))]);
  const responses = await store.putJsonl([
    { id: 'a', completion: 'great is positive, lovely is positive and awful is negative. So the answer is positive.' },
    { id: 'b', completion: "I don't know." },
    { id: 'c', completion: '', error: 'empty completion after 3 attempts' },
    { id: 'd', completion: 'awful is negative three times. So the answer is positive.' },
  ]);
  const r = await runIn(new MockActivityEnvironment(), activities.validateRationales, {
    task: 'demo',
    train,
    valid,
    responses,
  });
  t.is(r.kept, 2);
  t.is(r.dropped['teacher-error'], 1);
  t.is(
    Object.values(r.dropped).reduce((s, n) => s + n, 0),
    2
  );
  t.is(r.teacherAccuracy, 1 / 4);
  const report = await store.getJson<{ droppedExamples: Record<string, { id: string }[]> }>(r.report);
  t.deepEqual(
    report.droppedExamples['teacher-error'].map((e) => e.id),
    ['c']
  );
  const kept = await store.getJsonl<{ id: string; teacherLabel: string; goldLabel: string; rationale: string }>(
    r.train
  );
  t.deepEqual(
    kept.map((k) => k.id),
    ['a']
  );
  t.is(kept[0].teacherLabel, 'positive');
  t.regex(kept[0].rationale, /great is positive/);
});

test('validateRationales fails for good when nothing usable came back', async (t) => {
  const train = await store.putJsonl([{ id: 'x', input: 'q', label: 'positive' }]);
  const valid = await store.putJsonl([]);
  const responses = await store.putJsonl([{ id: 'x', completion: 'no idea' }]);
  const err = await t.throwsAsync(
    runIn(new MockActivityEnvironment(), activities.validateRationales, { task: 'demo', train, valid, responses })
  );
  t.true(err instanceof ApplicationFailure);
  t.true((err as ApplicationFailure).nonRetryable);
  t.is((err as ApplicationFailure).type, 'NoUsableRationales');
});

test('trainStudent starts from imported T5 weights when student.init names a checkpoint, and records them', async (t) => {
  // The committed HF test vector, imported as `stepwise import-t5` would: a pretrained init of our own making.
  const t5 = await readT5(join(__dirname, 'fixtures', 't5-tiny', 'v1_1'));
  const initFile = join(tmp, 'init.safetensors');
  const initBytes = serializeWeights(t5.config, t5.weights, t5.tokenizer, {
    method: 'pretrained',
    alpha: 0,
    steps: 0,
    backend: 'none',
  });
  await writeFile(initFile, initBytes);
  const examples = [
    { id: 'a', input: 'the food was great', label: 'positive' },
    { id: 'b', input: 'the food was awful', label: 'negative' },
  ];
  const [train, valid] = await Promise.all([store.putJsonl(examples), store.putJsonl(examples.slice(0, 1))]);
  const spec = parseSpec({
    name: 'act-init',
    data: { kind: 'demo' },
    teacher: { kind: 'scripted' },
    student: { method: 'standard-finetune', init: initFile, steps: 2, batchSize: 2, preset: 'tiny' },
  });
  const r = await runIn(new MockActivityEnvironment(), activities.trainStudent, {
    student: spec.student,
    train,
    valid,
  });
  const meta = readCheckpointMeta(await store.get(r.checkpoint));
  // The imported shape, not the tiny preset's, and the imported tokenizer, not one trained on these two examples.
  t.is(meta.config.d_model, t5.config.d_model);
  t.is(meta.config.vocab_size, t5.config.vocab_size);
  t.is(JSON.parse(meta.tokenizer).model.type, JSON.parse(t5.tokenizer.toJSON()).model.type);
  const log = await store.getJson<{ init: { sha256: string } }>(r.trainLog);
  t.is(log.init.sha256, sha256Hex(initBytes));
});

test('trainStudent names student.init when the file is not there', async (t) => {
  const ex = await store.putJsonl([{ id: 'a', input: 'x', label: 'positive' }]);
  const spec = parseSpec({
    name: 'act-init-missing',
    data: { kind: 'demo' },
    teacher: { kind: 'scripted' },
    student: { method: 'standard-finetune', init: '/no/such/init.safetensors', steps: 1 },
  });
  const err = await t.throwsAsync(
    runIn(new MockActivityEnvironment(), activities.trainStudent, { student: spec.student, train: ex, valid: ex })
  );
  t.true(err instanceof ApplicationFailure && err.nonRetryable);
  t.regex(err!.message, /student\.init: cannot read '\/no\/such\/init\.safetensors'/);
});
