import test from 'ava';
import { BACKEND_ENV, BACKEND_LADDER, describeBackend, initBackend, type BackendName } from '../lib/student/backend';
import { tf } from '../lib/student/tf';
import { stepwiseKernelsExpected } from './helpers/native';

// Every test here switches the process-wide tfjs backend, so they run one at a time.

function withEnv<T>(value: string | undefined, body: () => Promise<T>): Promise<T> {
  const saved = process.env[BACKEND_ENV];
  if (value === undefined) delete process.env[BACKEND_ENV];
  else process.env[BACKEND_ENV] = value;
  return body().finally(() => {
    if (saved === undefined) delete process.env[BACKEND_ENV];
    else process.env[BACKEND_ENV] = saved;
  });
}

test.serial('auto walks the ladder in order and records every attempt up to the backend it chose', async (t) => {
  const init = await withEnv(undefined, () => initBackend('auto'));
  t.log(`backend ${init.backend}; attempts ${JSON.stringify(init.attempts)}`);
  t.true(BACKEND_LADDER.includes(init.backend));
  t.deepEqual(
    init.attempts.map((a) => a.backend),
    BACKEND_LADDER.slice(0, BACKEND_LADDER.indexOf(init.backend) + 1)
  );
  const last = init.attempts[init.attempts.length - 1];
  t.is(last.error, undefined);
  for (const skipped of init.attempts.slice(0, -1))
    t.true(typeof skipped.error === 'string' && skipped.error.length > 0);
  t.is(tf.getBackend(), init.backend);
  const described = describeBackend();
  t.is(described.backend, init.backend);
  t.true(described.device === 'cpu' || described.device === 'gpu');
  // Asking again is free and gives the same answer.
  t.deepEqual(await withEnv(undefined, () => initBackend('auto')), init);
});

test.serial('the environment variable forces a backend over the caller’s choice', async (t) => {
  const init = await withEnv('cpu', () => initBackend('tensorflow'));
  t.deepEqual(init, { backend: 'cpu', attempts: [{ backend: 'cpu' }] });
  t.is(tf.getBackend(), 'cpu');
  t.is(describeBackend().device, 'cpu');
  await t.throwsAsync(
    withEnv('cuda', () => initBackend('auto')),
    { message: new RegExp(`${BACKEND_ENV} is "cuda"; expected one of auto, tensorflow, wasm, cpu`) }
  );
  await t.throwsAsync(
    withEnv(undefined, () => initBackend('webgl' as BackendName)),
    { message: /backend is "webgl"/ }
  );
});

test.serial('the wasm rung trains correctly: its added and patched kernels match the cpu backend', async (t) => {
  const compute = () =>
    tf.tidy(() => {
      // gather's gradient is UnsortedSegmentSum (added on wasm); the transposed matMuls go through the patch.
      const table = tf.tensor2d(
        Array.from({ length: 24 }, (_, i) => Math.sin(i)),
        [6, 4]
      );
      const other = tf.tensor3d(
        Array.from({ length: 40 }, (_, i) => Math.cos(i)),
        [2, 5, 4]
      );
      const [gTable, gOther] = tf.grads((a: tf.Tensor, b: tf.Tensor) => {
        const rows = tf.reshape(tf.gather(a, tf.tensor1d([0, 5, 5, 2, 1, 0], 'int32')), [2, 3, 4]);
        const scores = tf.matMul(rows, b, false, true); // [2, 3, 5]
        const back = tf.matMul(scores, b); // [2, 3, 4]
        const both = tf.matMul(scores, tf.transpose(rows, [0, 2, 1]), true, true); // [2, 5, 4]
        return tf.add(tf.sum(tf.square(back)), tf.sum(tf.mul(both, 0.5)));
      })([table, other]);
      return [...gTable.dataSync(), ...gOther.dataSync()];
    });
  const wasm = await initBackend('wasm');
  t.is(wasm.backend, 'wasm');
  t.truthy(tf.getKernel('UnsortedSegmentSum', 'wasm'));
  t.true((tf.getKernel('BatchMatMul', 'wasm') as { patched?: boolean }).patched);
  const onWasm = compute();
  await initBackend('cpu');
  const onCpu = compute();
  const diff = Math.max(...onWasm.map((v, i) => Math.abs(v - onCpu[i]) / Math.max(1, Math.abs(onCpu[i]))));
  t.true(diff < 1e-4, `largest relative difference ${diff}`);
  t.true(onCpu.some((v) => v !== 0));
});

test.serial('the native backend records whether Stepwise’s kernels run, and why not', async (t) => {
  let init;
  try {
    init = await withEnv('tensorflow', () => initBackend('tensorflow'));
  } catch (err) {
    t.log(`no native backend here: ${(err as Error).message}`);
    t.pass();
    return;
  }
  t.is(init.backend, 'tensorflow');
  const described = describeBackend();
  const kernels = described.stepwiseKernels;
  if (kernels === undefined) return t.fail('stepwiseKernels is not recorded');
  if (kernels.loaded) {
    t.is(
      described.detail,
      `tensorflow (TF C library, ${described.device}${described.device === 'cpu' ? ', Stepwise kernels' : ''})`
    );
  } else {
    t.is(described.detail, `tensorflow (TF C library, ${described.device})`);
    t.true(kernels.reason.length > 0);
  }
  // Built by `npm test`'s setup: where the native build is expected, so are the kernels (unless switched off).
  if (stepwiseKernelsExpected()) t.true(kernels.loaded, kernels.loaded ? '' : kernels.reason);
});
