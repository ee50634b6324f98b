import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { MockActivityEnvironment } from '@temporalio/testing';
import { trainStudent, type TrainHeartbeat } from '../activities/train-student';
import { parseSpec } from '../lib/pipeline/spec';
import { openStore } from '../lib/store';
import { InputError } from '../lib/errors';
import { initBackend } from '../lib/student/backend';
import { decodeSafetensors, readCheckpointMeta, readResumeCheckpoint } from '../lib/student/checkpoint';
import { mulberry32 } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import {
  parseTrainOptions,
  train,
  validationLoss,
  type TrainCheckpoint,
  type TrainOptionsInput,
  type TrainProgress,
} from '../lib/student/train';
import type { TrainRecord } from '../lib/student/pairs';
import { runIn } from './helpers/activities';

// Resumed runs are compared with uninterrupted ones bit for bit: both run in this process, on one backend.
test.before(async () => {
  await initBackend('auto');
});

const GOOD = ['tasty', 'fresh', 'warm', 'sweet', 'crisp'];
const BAD = ['cold', 'stale', 'bland', 'burnt', 'soggy'];

/** Reviews whose label is the adjective's polarity; inputs vary in length so length-grouped batches differ. */
function reviews(n: number, seed: number): TrainRecord[] {
  const random = mulberry32(seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)];
  return Array.from({ length: n }, () => {
    const positive = random() < 0.5;
    const adjective = pick(positive ? GOOD : BAD);
    const label = positive ? 'positive' : 'negative';
    const filler = Array.from({ length: Math.floor(random() * 6) }, () => pick(['really', 'very', 'quite', 'so']));
    return {
      input: `The soup was ${filler.join(' ')} ${adjective}.`,
      goldLabel: label,
      teacherLabel: label,
      rationale: `${adjective} is ${label}.`,
    };
  });
}

const records = reviews(60, 1);
const valid = reviews(12, 2);

/** Dropout on, validation and early-stopping bookkeeping on, warmup and decay: every piece of state is exercised. */
const base: TrainOptionsInput = {
  method: 'distill-step-by-step',
  steps: 24,
  batchSize: 8,
  learningRate: 3e-3,
  warmupSteps: 4,
  seed: 5,
  maxInputLength: 24,
  maxTargetLength: 6,
  maxRationaleLength: 10,
  config: { dropout_rate: 0.1 },
  valid,
  evalEvery: 6,
  earlyStoppingPatience: 20,
  checkpointEvery: 8,
};

async function runCollecting(opts: TrainOptionsInput) {
  const checkpoints: TrainCheckpoint[] = [];
  const progress: TrainProgress[] = [];
  const result = await train(records, parseTrainOptions(opts), {
    onCheckpoint: (c) => void checkpoints.push(c),
    onProgress: (p) => progress.push(p),
  });
  return { result, checkpoints, progress };
}

/** Tensors of a checkpoint by name, and the training loop's state where it has one. */
function contents(bytes: Uint8Array) {
  const { weights, metadata } = decodeSafetensors(bytes);
  return { weights: Object.fromEntries(weights.map((w) => [w.name, Array.from(w.data)])), state: metadata.state };
}

for (const [name, extra] of [
  ['AdamW', {}],
  // HF's class defaults (relative step, parameter scaling) plus a first moment: every Adafactor slot is saved.
  ['Adafactor', { optimizer: 'adafactor', adafactor: { relativeStep: true, scaleParameter: true, beta1: 0.9 } }],
] as const) {
  test.serial(
    `${name}: a run stopped at a checkpoint and resumed follows the uninterrupted run bit for bit`,
    async (t) => {
      const opts: TrainOptionsInput = { ...base, ...extra };
      const full = await runCollecting(opts);
      t.deepEqual(
        full.checkpoints.map((c) => c.step),
        [8, 16]
      );
      t.is(full.result.checkpoints, 2);

      const before = tf.memory().numTensors;
      const resumed = await runCollecting({ ...opts, resumeFrom: full.checkpoints[0].bytes });
      t.is(tf.memory().numTensors, before, 'resuming leaks no tensors');
      t.is(resumed.result.resumedFrom, 8);
      t.is(resumed.result.steps, 24);
      t.deepEqual(
        resumed.progress.map((p) => p.step),
        Array.from({ length: 16 }, (_, i) => i + 9)
      );
      // The whole curve (the first 8 steps come from the checkpoint), every validation and the outcome are identical.
      t.deepEqual(resumed.result.lossHistory, full.result.lossHistory);
      t.deepEqual(
        resumed.progress.map((p) => [p.loss, p.validLoss]),
        full.progress.slice(8).map((p) => [p.loss, p.validLoss])
      );
      t.is(resumed.result.finalLoss, full.result.finalLoss);
      t.is(resumed.result.validLoss, full.result.validLoss);
      t.is(resumed.result.bestStep, full.result.bestStep);
      t.deepEqual(contents(resumed.result.checkpoint).weights, contents(full.result.checkpoint).weights);
      // The resumed run's own checkpoint at 16 holds exactly what the uninterrupted run's did: state is complete.
      t.deepEqual(
        resumed.checkpoints.map((c) => c.step),
        [16]
      );
      t.deepEqual(contents(resumed.checkpoints[0].bytes), contents(full.checkpoints[1].bytes));
      const meta = readCheckpointMeta(resumed.result.checkpoint).training;
      t.is(meta.resumedFrom, 8);
      t.is(meta.optimizer, opts.optimizer ?? 'adamw');
      t.log(`final loss ${full.result.finalLoss.toFixed(4)}, valid ${full.result.validLoss?.toFixed(4)}`);
    }
  );
}

test.serial(
  'a resume checkpoint holds weights, optimiser state, sampler, history and the run it belongs to',
  async (t) => {
    const { checkpoints } = await runCollecting({ ...base, steps: 10, checkpointEvery: 7 });
    const saved = readResumeCheckpoint(checkpoints[0].bytes);
    const state = saved.state as Record<string, any>;
    t.is(state.step, 7);
    t.is(state.optimizer.name, 'adamw');
    t.is(state.optimizer.step, 7);
    t.is(state.history.length, 7);
    t.is(state.best.step, 6);
    t.true(state.sampler.epoch >= 1);
    t.is(state.options.batchSize, 8);
    t.regex(state.data, /^[0-9a-f]{64}$/);
    // First and second moments for every parameter; the best weights (step 6) beside the current ones (step 7).
    t.is(saved.optimizer.length, 2 * saved.weights.length);
    t.is(saved.best?.length, saved.weights.length);
    t.notDeepEqual(saved.best![0].data, saved.weights[0].data);
    t.is(saved.config.dropout_rate, 0.1);
    t.is(saved.training.checkpoint, 'resume');
  }
);

test.serial('checkpoints also come by the clock, and none after the last step', async (t) => {
  // A minute's millionth: every step is past due.
  const { checkpoints, result } = await runCollecting({
    ...base,
    steps: 4,
    checkpointEvery: undefined,
    checkpointEveryMinutes: 1e-6,
  });
  t.deepEqual(
    checkpoints.map((c) => c.step),
    [1, 2, 3]
  );
  t.is(result.checkpoints, 3);
  const quiet = await runCollecting({ ...base, steps: 4, checkpointEvery: undefined });
  t.deepEqual(quiet.checkpoints, []);
});

test.serial('resuming with other options, other records or a model checkpoint is rejected, naming why', async (t) => {
  const { checkpoints, result } = await runCollecting({ ...base, steps: 10, checkpointEvery: 5 });
  const resumeFrom = checkpoints[0].bytes;
  await t.throwsAsync(train(records, parseTrainOptions({ ...base, steps: 10, batchSize: 4, resumeFrom })), {
    instanceOf: InputError,
    message: /^batchSize is 4 but resumeFrom was trained with 8/,
  });
  await t.throwsAsync(train(records, parseTrainOptions({ ...base, steps: 10, optimizer: 'adafactor', resumeFrom })), {
    instanceOf: InputError,
    message: /^optimizer/,
  });
  await t.throwsAsync(train(records.slice(1), parseTrainOptions({ ...base, steps: 10, resumeFrom })), {
    instanceOf: InputError,
    message: /records .* differ/,
  });
  await t.throwsAsync(train(records, parseTrainOptions({ ...base, steps: 10, resumeFrom: result.checkpoint })), {
    instanceOf: InputError,
    message: /resumeFrom has format "stepwise-t5"/,
  });
});

test.serial(
  'early stopping ends a run whose validation loss stops falling, and the best weights are kept',
  async (t) => {
    // Validation labels and rationales are the opposite of training's: once the student learns the task, the
    // validation loss rises, and early stopping must notice.
    const flip = (r: TrainRecord): TrainRecord => {
      const label = r.goldLabel === 'positive' ? 'negative' : 'positive';
      return { ...r, goldLabel: label, teacherLabel: label, rationale: r.rationale!.replace(r.goldLabel, label) };
    };
    const opts: TrainOptionsInput = {
      ...base,
      config: {},
      steps: 120,
      valid: valid.map(flip),
      evalEvery: 4,
      earlyStoppingPatience: 3,
      checkpointEvery: undefined,
    };
    const kept = await runCollecting(opts);
    const evals = kept.progress.filter((p) => p.validLoss !== undefined);
    const r = kept.result;
    t.log(
      `stopped at ${r.steps}, best step ${r.bestStep}; validation losses ${evals.map((p) => p.validLoss!.toFixed(3))}`
    );
    t.is(r.stopReason, 'early-stopping');
    t.true(r.steps < 120);
    t.is(r.steps, r.bestStep! + 3 * 4, 'three evaluations without improvement after the best');
    const best = Math.min(...evals.map((p) => p.validLoss!));
    t.is(r.validLoss, best);
    t.is(evals.find((p) => p.validLoss === best)?.step, r.bestStep);
    // The returned weights are the best ones: their validation loss is the best, recomputed from the checkpoint.
    t.true(Math.abs((await validationLoss(r.checkpoint, opts.valid!)) - best) < 1e-6);

    const last = await train(records, parseTrainOptions({ ...opts, keepBest: false }));
    t.is(last.steps, r.steps);
    t.deepEqual(last.lossHistory, r.lossHistory);
    const lastLoss = await validationLoss(last.checkpoint, opts.valid!);
    t.true(Math.abs(lastLoss - evals[evals.length - 1].validLoss!) < 1e-6);
    t.true(lastLoss > best);
  }
);

test.serial(
  'trainStudent stores checkpoints, heartbeats them, and a retry given those details resumes from one',
  async (t) => {
    const tmp = await mkdtemp(join(tmpdir(), 'stepwise-resume-activity-'));
    const store = openStore(join(tmp, 'store'));
    t.teardown(async () => {
      await store.close();
      await rm(tmp, { recursive: true, force: true });
    });
    const rows = (rs: TrainRecord[]) => rs.map((r, i) => ({ id: `r${i}`, ...r }));
    const student = parseSpec({
      name: 'resume-activity',
      data: { kind: 'demo' },
      teacher: { kind: 'scripted' },
      student: { steps: 30, batchSize: 8, checkpointEvery: 10, evalEvery: 10, backend: 'auto' },
    }).student;
    const input = { student, train: await store.putJsonl(rows(records)), valid: await store.putJsonl(rows(valid)) };
    const readLog = async (ref: Parameters<typeof store.get>[0]) => JSON.parse((await store.get(ref)).toString());

    const env = new MockActivityEnvironment();
    const beats: TrainHeartbeat[] = [];
    env.on('heartbeat', (d: TrainHeartbeat) => beats.push(d));
    const first = await runIn(env, trainStudent, { store }, input);
    const firstLog = await readLog(first.trainLog);
    const withCheckpoint = beats.filter((b) => b.checkpoint);
    t.deepEqual([...new Set(withCheckpoint.map((b) => b.checkpointStep))], [10, 20]);
    t.is(firstLog.resumedFrom, null);
    t.is(firstLog.checkpointsStored, 2);
    // Every heartbeat after the first upload still names a checkpoint: details are replaced, never merged.
    t.true(beats.slice(beats.indexOf(withCheckpoint[0])).every((b) => b.checkpoint));
    // The last two, newest first: the one to resume from, and the one to fall back to should it be corrupt.
    const last = beats[beats.length - 1];
    t.deepEqual(
      last.checkpoints?.map((c) => c.step),
      [20, 10]
    );
    t.deepEqual(last.checkpoints?.[0].ref, last.checkpoint);

    // The retry: Temporal hands the last heartbeat's details to the next attempt.
    const retryFrom = withCheckpoint.find((b) => b.checkpointStep === 10)!;
    const retryEnv = new MockActivityEnvironment({ heartbeatDetails: retryFrom, attempt: 2 });
    const retryBeats: TrainHeartbeat[] = [];
    retryEnv.on('heartbeat', (d: TrainHeartbeat) => retryBeats.push(d));
    const second = await runIn(retryEnv, trainStudent, { store }, input);
    const secondLog = await readLog(second.trainLog);
    t.is(secondLog.resumedFrom, 10);
    t.is(secondLog.attempt, 2);
    t.deepEqual(retryBeats[0], {
      step: 10,
      total: 30,
      checkpoint: retryFrom.checkpoint,
      checkpointStep: 10,
      checkpoints: [{ ref: retryFrom.checkpoint, step: 10 }],
      resumedFrom: 10,
    });
    t.deepEqual(secondLog.lossHistory, firstLog.lossHistory);
    t.is(second.finalLoss, first.finalLoss);
    // The same weights; the metadata differs (wall time, where it resumed).
    t.deepEqual(
      contents(await store.get(second.checkpoint)).weights,
      contents(await store.get(first.checkpoint)).weights
    );
  }
);

test.serial('a run started from student.init resumes from its checkpoints, the init staged again', async (t) => {
  const tmp = await mkdtemp(join(tmpdir(), 'stepwise-resume-init-'));
  const store = openStore(join(tmp, 'store'));
  t.teardown(async () => {
    await store.close();
    await rm(tmp, { recursive: true, force: true });
  });
  // A trained student as the init: a Stepwise checkpoint with its own tokenizer and shape.
  const { checkpoint } = await train(records, parseTrainOptions({ method: 'standard-finetune', steps: 2, seed: 9 }));
  const initPath = join(tmp, 'init.safetensors');
  await writeFile(initPath, checkpoint);
  const rows = (rs: TrainRecord[]) => rs.map((r, i) => ({ id: `r${i}`, ...r }));
  const student = parseSpec({
    name: 'resume-init',
    data: { kind: 'demo' },
    teacher: { kind: 'scripted' },
    student: { steps: 16, batchSize: 8, checkpointEvery: 8, backend: 'auto', init: initPath },
  }).student;
  const input = { student, train: await store.putJsonl(rows(records)), valid: await store.putJsonl(rows(valid)) };
  const readLog = async (ref: Parameters<typeof store.get>[0]) => JSON.parse((await store.get(ref)).toString());

  const env = new MockActivityEnvironment();
  const beats: TrainHeartbeat[] = [];
  env.on('heartbeat', (d: TrainHeartbeat) => beats.push(d));
  const first = await runIn(env, trainStudent, { store }, input);
  const retryFrom = beats.find((b) => b.checkpointStep === 8)!;
  t.truthy(retryFrom, 'a checkpoint at step 8 was heartbeated');
  // The run's options record the init's hash, so a retry must be given the init again to be allowed to resume.
  const second = await runIn(
    new MockActivityEnvironment({ heartbeatDetails: retryFrom, attempt: 2 }),
    trainStudent,
    { store },
    input
  );
  const [firstLog, secondLog] = await Promise.all([readLog(first.trainLog), readLog(second.trainLog)]);
  t.is(secondLog.resumedFrom, 8);
  t.deepEqual(secondLog.init, firstLog.init, "the same init weights in both attempts' lineage");
  t.deepEqual(secondLog.lossHistory, firstLog.lossHistory);
  t.deepEqual(
    contents(await store.get(second.checkpoint)).weights,
    contents(await store.get(first.checkpoint)).weights
  );
});
