import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import test from 'ava';

import { teacherOnEvalSet } from '../activities/teacher-eval';
import { generateDemoTask } from '../lib/data/demo-task';
import { loadReferenceSplit } from '../lib/data/reference';
import type { BenchmarkTask, Example } from '../lib/data/types';
import { InputError } from '../lib/errors';
import { ArtifactStore } from '../lib/store/artifact-store';
import { FsBackend } from '../lib/store/fs-store';
import { BILLING_REASON, teacherAccuracyOn, type TeacherPrediction } from '../lib/teacher/eval-set';
import { scriptedDemoTeacher, startLocalTeacherServer, type LocalTeacherServer } from '../lib/teacher/local-server';
import { teacherSchema } from '../lib/teacher/options';
import type { ScriptedTeacherProvider } from '../lib/teacher/stage';
import { buildPrompt } from '../lib/teacher/templates';

// CI and developers have ../shared beside the clone; a missing dataset is a failure, not a skip.
const datasets = resolve(__dirname, '../../shared/datasets');

const temps: string[] = [];
test.after.always(async () => {
  await Promise.all(temps.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempStore(): Promise<ArtifactStore> {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-teacher-eval-'));
  temps.push(dir);
  return new ArtifactStore(new FsBackend(dir));
}

/** Never called: the replay and openai paths must not start the scripted server. */
const noScripted: ScriptedTeacherProvider = async () => {
  throw new Error('the scripted teacher was asked for');
};

/** The scripted teacher as workers/deps.ts serves it: one local server per error rate, closed after the test. */
function scriptedServer(t: { teardown(fn: () => Promise<void>): void }) {
  const servers: LocalTeacherServer[] = [];
  t.teardown(async () => {
    await Promise.all(servers.map((s) => s.close()));
  });
  const provider: ScriptedTeacherProvider = async (errorRate) => {
    const model = `stepwise-scripted-e${errorRate}`;
    const server = await startLocalTeacherServer({ errorRate, model });
    servers.push(server);
    return { url: server.url, model };
  };
  return { provider, servers };
}

async function replayOnTestSplit(task: BenchmarkTask) {
  const store = await tempStore();
  const examples = await loadReferenceSplit(datasets, task, 'test');
  const evalSet = await store.putJsonl(examples);
  const result = await teacherAccuracyOn(
    store,
    { scripted: noScripted, dataRoots: [datasets] },
    { teacher: teacherSchema.parse({ kind: 'replay' }), task, dataDir: datasets, evalSet }
  );
  return { store, examples, result };
}

// The teacher accuracies shared/datasets/README.md states for the recorded PaLM completions: only the same prompt
// rows, parser and scorer as the validate stage land on exactly these counts.
test('replay on the CQA test split scores the teacher 943 of 1221, as the datasets README states', async (t) => {
  const { store, examples, result } = await replayOnTestSplit('cqa');
  if (!result.measured) return t.fail(result.reason);
  t.like(result, { correct: 943, total: 1221, model: 'palm-540b-recorded' });
  t.is(result.accuracy, 943 / 1221);
  const predictions = await store.getJsonl<TeacherPrediction>(result.predictions);
  // One line per example, in evaluation-set order, so the gate can pair them with the students' predictions.
  t.deepEqual(
    predictions.map((p) => [p.id, p.gold]),
    examples.map((e) => [e.id, e.label])
  );
  t.is(predictions.filter((p) => p.correct).length, 943);
  for (const p of predictions) {
    t.deepEqual(Object.keys(p).sort(), ['correct', 'gold', 'id', 'teacherLabel']);
    if (p.correct) t.is(p.teacherLabel, p.gold);
  }
});

test('replay on the SVAMP test split scores the teacher 148 of 200, equations compared by value', async (t) => {
  const { store, result } = await replayOnTestSplit('svamp');
  if (!result.measured) return t.fail(result.reason);
  t.like(result, { correct: 148, total: 200, accuracy: 0.74 });
  const predictions = await store.getJsonl<TeacherPrediction>(result.predictions);
  // A few recorded completions never state an answer: they count as wrong, with no label.
  t.true(predictions.some((p) => p.teacherLabel === null && !p.correct));
  // Scored by value, not text: some correct answers are written differently from the gold equation.
  t.true(predictions.some((p) => p.correct && p.teacherLabel !== p.gold));
});

test('replay is not measured on a set the recordings do not cover, and says which example', async (t) => {
  const store = await tempStore();
  const [first, second] = await loadReferenceSplit(datasets, 'svamp', 'test');
  const { source: _dropped, ...unsourced } = second;
  const evalSet = await store.putJsonl([first, unsourced]);
  const result = await teacherAccuracyOn(
    store,
    { scripted: noScripted },
    { teacher: teacherSchema.parse({ kind: 'replay', dir: datasets }), task: 'svamp', evalSet }
  );
  t.false(result.measured);
  t.regex(result.measured ? '' : result.reason, new RegExp(`do not cover 1 example.*${second.id}: no source`));
});

test('the scripted teacher scores exactly the examples its server answers correctly, about 1 - errorRate', async (t) => {
  const store = await tempStore();
  const { provider, servers } = scriptedServer(t);
  const examples = generateDemoTask({ n: 200, seed: 15 });
  const evalSet = await store.putJsonl(examples);
  const input = { teacher: teacherSchema.parse({ kind: 'scripted', errorRate: 0.3 }), task: 'demo' as const, evalSet };

  const result = await teacherAccuracyOn(store, { scripted: provider }, input);
  if (!result.measured) return t.fail(result.reason);

  // What the server answers is a pure function of the prompt (lib/teacher/local-server/scripted.ts); read its
  // answer sentence directly, with no parser, for the expected outcome of every example.
  const answer = scriptedDemoTeacher({ errorRate: 0.3 });
  const expected = examples.map((ex) =>
    answer(buildPrompt('demo', ex.input)).endsWith(`So the answer is ${ex.label}.`)
  );
  const predictions = await store.getJsonl<TeacherPrediction>(result.predictions);
  t.deepEqual(
    predictions.map((p) => p.correct),
    expected
  );
  t.is(result.correct, expected.filter(Boolean).length);
  t.is(result.total, 200);
  t.true(result.accuracy >= 0.55 && result.accuracy <= 0.85, `accuracy ${result.accuracy}`);
  t.is(result.model, 'stepwise-scripted-e0.3');
  t.is(servers[0].counters().requests, 200);

  // Asked again (a retried activity): every answer comes from the store's response cache, and the same artifact.
  const again = await teacherAccuracyOn(store, { scripted: provider }, input);
  t.deepEqual(again, result);
  t.is(servers[1].counters().requests, 0);
});

test('a self-consistent scripted teacher is scored on its majority answer, as the teacher stage keeps it', async (t) => {
  const store = await tempStore();
  const { provider } = scriptedServer(t);
  const examples = generateDemoTask({ n: 60, seed: 7 });
  const evalSet = await store.putJsonl(examples);
  const teacher = teacherSchema.parse({ kind: 'scripted', errorRate: 0.4, samples: 3, temperature: 0.7 });
  const result = await teacherAccuracyOn(store, { scripted: provider }, { teacher, task: 'demo', evalSet });
  if (!result.measured) return t.fail(result.reason);

  const answer = scriptedDemoTeacher({ errorRate: 0.4 });
  const majorityRight = (ex: Example) =>
    [0, 1, 2]
      .map((seed) => answer(buildPrompt('demo', ex.input), { temperature: 0.7, seed }))
      .filter((a) => a.endsWith(`So the answer is ${ex.label}.`)).length >= 2;
  const predictions = await store.getJsonl<TeacherPrediction>(result.predictions);
  t.deepEqual(
    predictions.map((p) => p.correct),
    examples.map(majorityRight)
  );
  // The vote matters on this set: some example has a wrong first sample but a right majority, or the reverse.
  const firstRight = examples.map((ex) =>
    answer(buildPrompt('demo', ex.input), { temperature: 0.7, seed: 0 }).endsWith(`So the answer is ${ex.label}.`)
  );
  t.notDeepEqual(firstRight, examples.map(majorityRight));
});

test('an endpoint teacher is not measured and gets no request, since a real endpoint would bill', async (t) => {
  const store = await tempStore();
  const server = await startLocalTeacherServer();
  t.teardown(() => server.close());
  const evalSet = await store.putJsonl(generateDemoTask({ n: 20, seed: 1 }));
  const teacher = teacherSchema.parse({ kind: 'openai', url: server.url, model: 'gpt-4o-mini' });
  const result = await teacherAccuracyOn(store, { scripted: noScripted }, { teacher, task: 'demo', evalSet });
  t.deepEqual(result, { measured: false, reason: BILLING_REASON });
  t.is(server.counters().requests, 0);
});

test('a replay folder outside the data roots is bad input naming data.dir', async (t) => {
  const store = await tempStore();
  const evalSet = await store.putJsonl(await loadReferenceSplit(datasets, 'svamp', 'test'));
  const outside = await mkdtemp(join(tmpdir(), 'stepwise-roots-'));
  temps.push(outside);
  await t.throwsAsync(
    teacherAccuracyOn(
      store,
      { scripted: noScripted, dataRoots: [outside] },
      { teacher: teacherSchema.parse({ kind: 'replay' }), task: 'svamp', dataDir: datasets, evalSet }
    ),
    { instanceOf: InputError, message: /^data\.dir: .* is outside the data roots/ }
  );
});

test('the activity measures replay, and fails bad input at once as non-retryable, naming the field', async (t) => {
  const store = await tempStore();
  const deps = { store, scripted: noScripted };
  const evalSet = await store.putJsonl((await loadReferenceSplit(datasets, 'svamp', 'test')).slice(0, 10));
  const teacher = teacherSchema.parse({ kind: 'replay', dir: datasets });

  const result = await new MockActivityEnvironment().run(teacherOnEvalSet, deps, {
    teacher,
    task: 'svamp' as const,
    evalSet,
  });
  t.like(result, { measured: true, total: 10 });

  const bad = [
    [{ teacher, task: 'svamp', evalSet: { sha256: 'nope', size: 1 } }, /^evalSet is /],
    [{ teacher, task: 'chess', evalSet }, /^task is "chess"/],
    [{ teacher: { kind: 'oracle' }, task: 'svamp', evalSet }, /^teacher\.kind is "oracle"/],
    [{ teacher: teacherSchema.parse({ kind: 'replay' }), task: 'svamp', evalSet }, /^teacher\.dir is unset/],
    [{ teacher, task: 'demo', evalSet }, /^teacher\.kind is replay but the task is demo/],
  ] as const;
  for (const [input, message] of bad) {
    const err = await t.throwsAsync(
      // Malformed on purpose: what a hand-written or stale caller could send.
      new MockActivityEnvironment().run(teacherOnEvalSet, deps, input as never),
      { instanceOf: ApplicationFailure, message }
    );
    t.true((err as ApplicationFailure).nonRetryable);
    t.is((err as ApplicationFailure).type, 'InputError');
  }
});
