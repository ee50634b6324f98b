import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import { InputError } from '../lib/errors';
import { readCheckpointMeta } from '../lib/student/checkpoint';
import { inheritedFlags, runStudentJob, StudentChildCrashError } from '../lib/student/child';
import { parseStudentOptions } from '../lib/student/options';
import type { TrainRecord } from '../lib/student/pairs';
import { isAlive } from './helpers/processes';

// Each test starts a real child process (node + tsx + tfjs), so they run one at a time on our 2 cores.

test('a child keeps the parent’s flags but tsx’s, the inspector’s and --expose-gc, in either spelling', (t) => {
  const tsxHook = path.join('/app', 'node_modules', 'tsx', 'dist', 'cjs', 'index.cjs');
  t.deepEqual(
    inheritedFlags([
      '--import',
      'tsx',
      '--import=tsx/esm',
      '--require',
      tsxHook,
      '-r',
      'tsx/cjs',
      '--inspect=9229',
      '--inspect-brk',
      '--expose-gc',
      '--max-old-space-size=512',
      '--import=./otel.mjs',
      '--require',
      './setup.js',
      '--enable-source-maps',
    ]),
    ['--max-old-space-size=512', '--import', './otel.mjs', '--require', './setup.js', '--enable-source-maps']
  );
  // A package whose name only starts with tsx is not tsx.
  t.deepEqual(inheritedFlags(['--import', 'tsx-extra']), ['--import', 'tsx-extra']);
});

const WORDS = ['tasty', 'fresh', 'cold', 'stale'];

function records(n: number): TrainRecord[] {
  return Array.from({ length: n }, (_, i) => {
    const word = WORDS[i % 4];
    const label = i % 4 < 2 ? 'positive' : 'negative';
    return {
      input: `Dish ${i}: it was ${word}.`,
      goldLabel: label,
      teacherLabel: label,
      rationale: `${word} is ${label}.`,
    };
  });
}

const options = parseStudentOptions({
  method: 'distill-step-by-step',
  steps: 6,
  batchSize: 8,
  learningRate: 3e-3,
  seed: 0,
  maxInputLength: 24,
  maxTargetLength: 6,
  maxRationaleLength: 12,
});

let dir: string;
test.before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'stepwise-child-test-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

test.serial('a train job writes a checkpoint file, reports progress, and a predict job reads it back', async (t) => {
  const checkpointPath = path.join(dir, 'train.safetensors');
  const steps: number[] = [];
  let pid = 0;
  const result = await runStudentJob(
    { kind: 'train', records: records(32), valid: records(8), options, checkpointPath },
    { onProgress: (p) => steps.push(p.step), onSpawn: (p) => (pid = p) }
  );
  t.deepEqual(steps, [1, 2, 3, 4, 5, 6]);
  t.is(result.steps, 6);
  t.is(result.checkpointPath, checkpointPath);
  t.true(Number.isFinite(result.finalLoss) && Number.isFinite(result.validLoss!));
  t.true(result.params > 0 && result.tokenizerVocab > 3);
  const meta = readCheckpointMeta(await readFile(checkpointPath));
  t.is(meta.training.method, 'distill-step-by-step');
  t.is(meta.training.backend, result.backend);
  // The backend's own description rides along, e.g. `tensorflow (TF C library, cpu, Stepwise kernels)`.
  t.true(result.backendDetail?.startsWith(result.backend), result.backendDetail);
  t.false(isAlive(pid), 'the child exits after answering');

  const progress: number[] = [];
  const predicted = await runStudentJob(
    {
      kind: 'predict',
      checkpointPath,
      inputs: ['Dish 99: it was fresh.', 'Dish 98: it was cold.', 'x'],
      maxLength: 4,
      batchSize: 2,
    },
    { onProgress: (p) => progress.push(p.step) }
  );
  t.is(predicted.outputs.length, 3);
  t.true(predicted.outputs.every((o) => typeof o === 'string'));
  t.deepEqual(progress, [2, 3]);
});

test.serial('aborting kills the child promptly and rejects with an AbortError', async (t) => {
  const controller = new AbortController();
  let pid = 0;
  let abortedAt = 0;
  const job = runStudentJob(
    {
      kind: 'train',
      records: records(32),
      options: { ...options, steps: 100_000 },
      checkpointPath: path.join(dir, 'abort.safetensors'),
    },
    {
      signal: controller.signal,
      onSpawn: (p) => (pid = p),
      onProgress: (p) => {
        if (p.step === 2 && !abortedAt) {
          abortedAt = Date.now();
          controller.abort(new Error('cancelled by the test'));
        }
      },
    }
  );
  const err = await t.throwsAsync(job, { name: 'AbortError' });
  t.is((err?.cause as Error).message, 'cancelled by the test');
  t.true(Date.now() - abortedAt < 3000, `took ${Date.now() - abortedAt} ms`);
  t.true(pid > 0);
  t.false(isAlive(pid), `child ${pid} still running`);
  t.false(existsSync(path.join(dir, 'abort.safetensors')));
  // An already aborted signal never starts a child.
  await t.throwsAsync(
    runStudentJob(
      { kind: 'predict', checkpointPath: 'x', inputs: [], maxLength: 1, batchSize: 1 },
      { signal: controller.signal }
    ),
    {
      name: 'AbortError',
    }
  );
});

test.serial('a child that dies without answering is reported with its signal', async (t) => {
  let pid = 0;
  const job = runStudentJob(
    {
      kind: 'train',
      records: records(32),
      options: { ...options, steps: 100_000 },
      checkpointPath: path.join(dir, 'crash.safetensors'),
    },
    {
      onSpawn: (p) => (pid = p),
      // Stands in for the kernel's OOM killer.
      onProgress: (p) => p.step === 1 && process.kill(pid, 'SIGKILL'),
    }
  );
  const err = await t.throwsAsync(job, { instanceOf: StudentChildCrashError });
  t.is(err?.signal, 'SIGKILL');
  t.regex(err!.message, /student train process was killed by SIGKILL before reporting a result/);
});

test.serial('bad input inside the child comes back as an InputError naming the field', async (t) => {
  const err = await t.throwsAsync(
    runStudentJob({
      kind: 'train',
      records: [{ input: 'x', goldLabel: 'y' }],
      options,
      checkpointPath: path.join(dir, 'bad.safetensors'),
    }),
    { instanceOf: InputError }
  );
  t.is(err?.name, 'InputError');
  t.is(err?.field, 'records[0].rationale');
  const garbage = path.join(dir, 'garbage.safetensors');
  await writeFile(garbage, 'not a checkpoint');
  await t.throwsAsync(
    runStudentJob({ kind: 'predict', checkpointPath: garbage, inputs: ['a'], maxLength: 2, batchSize: 1 }),
    {
      instanceOf: InputError,
      message: /safetensors/,
    }
  );
});
