import test, { type ExecutionContext } from 'ava';
import { initBackend, type BackendName } from '../lib/student/backend';
import { makeConfig } from '../lib/student/config';
import {
  clipByGlobalNorm,
  dropout,
  FusedAdam,
  gatedGelu,
  globalNorm,
  maskedCrossEntropy,
  rmsNorm,
  usesNativeKernels,
  useGraphSublayers,
  useStepwiseKernels,
  withOpByOpSublayers,
} from '../lib/student/fast-ops';
import { padBatch } from '../lib/student/loss';
import { T5Model } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import { nativeExpected, stepwiseKernelsExpected } from './helpers/native';
import { stepwiseOpsStatus } from '../lib/student/tf-native';

// The tests switch the process-wide backend, so they run one at a time. Each runs its checks on every backend that
// initialises here (native TensorFlow runs the fused kernels; wasm and cpu run the portable formulas).

const LADDER: BackendName[] = ['tensorflow', 'wasm', 'cpu'];

async function eachBackend(run: (backend: BackendName) => void | Promise<void>): Promise<BackendName[]> {
  const done: BackendName[] = [];
  const skipped: string[] = [];
  for (const wanted of LADDER) {
    let backend: BackendName;
    try {
      // STEPWISE_TFJS_BACKEND, when set, wins over `wanted`: then every round runs on that one backend.
      backend = (await initBackend(wanted)).backend;
    } catch (err) {
      skipped.push(`${wanted}: ${(err as Error).message}`);
      continue;
    }
    if (done.includes(backend)) continue;
    done.push(backend);
    await run(backend);
  }
  if (nativeExpected() && !done.includes('tensorflow')) {
    throw new Error(
      `the native tfjs build is expected here (STEPWISE_EXPECT_NATIVE=1, or CI=true without STEPWISE_SKIP_NATIVE=1) ` +
        `but only ${done.join(', ') || 'no backend'} ran (${skipped.join('; ') || 'STEPWISE_TFJS_BACKEND forces another'}); ` +
        'run `npx stepwise setup` to build it, or set STEPWISE_EXPECT_NATIVE=0 to test without it'
    );
  }
  return done;
}

/** Deterministic values in (-scale, scale): the same on every backend, unlike tfjs's random ops. */
function values(n: number, salt: number, scale = 1): number[] {
  return Array.from({ length: n }, (_, i) => scale * Math.sin(i * 12.9898 + salt * 78.233));
}

const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

/** The formulas of t5.ts, op by op, differentiated by tfjs's autodiff: what the fused versions must equal. */
const reference = {
  rmsNorm: (x: tf.Tensor, w: tf.Tensor, eps: number) =>
    tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps))), w),
  gatedGelu: (a: tf.Tensor, b: tf.Tensor) => {
    const inner = tf.mul(tf.add(a, tf.mul(tf.mul(tf.square(a), a), 0.044715)), Math.sqrt(2 / Math.PI));
    return tf.mul(tf.mul(tf.mul(a, 0.5), tf.add(tf.tanh(inner), 1)), b);
  },
};

test.serial('rmsNorm and gatedGelu equal the op-by-op formulas, values and gradients, on every backend', async (t) => {
  const ran = await eachBackend((backend) => {
    tf.tidy(() => {
      const x = tf.tensor3d(values(2 * 3 * 16, 1, 3), [2, 3, 16]);
      const w = tf.tensor1d(values(16, 2).map((v) => 1 + 0.3 * v));
      const dy = tf.tensor3d(values(2 * 3 * 16, 3), [2, 3, 16]);
      const normFused = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(rmsNorm(a, b, 1e-6), dy)));
      const normRef = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(reference.rmsNorm(a, b, 1e-6), dy)));
      t.true(maxAbsDiff(rmsNorm(x, w, 1e-6), reference.rmsNorm(x, w, 1e-6)) < 1e-6, `${backend} rmsNorm value`);
      const [gx, gw] = normFused([x, w]);
      const [rx, rw] = normRef([x, w]);
      t.true(maxAbsDiff(gx, rx) < 1e-5, `${backend} rmsNorm dx`);
      t.true(maxAbsDiff(gw, rw) < 1e-5, `${backend} rmsNorm dw`);

      // Pre-activations up to ±4 cover GELU's curved part and both tails.
      const a = tf.tensor2d(values(4 * 32, 4, 4), [4, 32]);
      const b = tf.tensor2d(values(4 * 32, 5), [4, 32]);
      const dz = tf.tensor2d(values(4 * 32, 6), [4, 32]);
      t.true(maxAbsDiff(gatedGelu(a, b), reference.gatedGelu(a, b)) < 1e-5, `${backend} gatedGelu value`);
      const [ga, gb] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.mul(gatedGelu(p, q), dz)))([a, b]);
      const [ra, rb] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.mul(reference.gatedGelu(p, q), dz)))([a, b]);
      t.true(maxAbsDiff(ga, ra) < 1e-5, `${backend} gatedGelu da`);
      t.true(maxAbsDiff(gb, rb) < 1e-5, `${backend} gatedGelu db`);
    });
  });
  t.log(`backends: ${ran.join(', ')}`);
  t.true(ran.length >= 1);
});

test.serial('maskedCrossEntropy is the mean cross-entropy over the non-pad rows, gradient included', async (t) => {
  await eachBackend((backend) => {
    tf.tidy(() => {
      const vocab = 11;
      const logits = tf.tensor2d(values(6 * vocab, 7, 3), [6, vocab]);
      const labels = tf.tensor1d([1, 0, 3, 10, 2, 5], 'int32');
      const weights = tf.tensor1d([1, 0, 1, 1, 0, 1]);
      // Independent reference in plain JS: −log softmax at the label, averaged over the rows with weight 1.
      const rows = logits.arraySync();
      const expected =
        [0, 2, 3, 5]
          .map((r) => {
            const max = Math.max(...rows[r]);
            const logSum = Math.log(rows[r].reduce((s, v) => s + Math.exp(v - max), 0)) + max;
            return logSum - rows[r][labels.arraySync()[r]];
          })
          .reduce((a, b) => a + b, 0) / 4;
      const loss = maskedCrossEntropy(logits, labels, weights);
      t.true(Math.abs(loss.dataSync()[0] - expected) < 1e-5, `${backend}: ${loss.dataSync()[0]} vs ${expected}`);
      const grad = tf.grad((l: tf.Tensor) => maskedCrossEntropy(l as tf.Tensor2D, labels, weights))(logits);
      const refGrad = tf.grad((l: tf.Tensor) =>
        tf.losses.softmaxCrossEntropy(tf.oneHot(labels, vocab), l, weights, 0, tf.Reduction.SUM_BY_NONZERO_WEIGHTS)
      )(logits);
      t.true(maxAbsDiff(grad, refGrad) < 1e-6, `${backend} gradient`);
      // Padded rows get no gradient at all.
      t.is(tf.sum(tf.abs(tf.gather(grad, [1, 4]))).dataSync()[0], 0);
    });
  });
});

test.serial('dropout drops about the rate, rescales the rest, and repeats its mask for the same seed', async (t) => {
  await eachBackend((backend) => {
    tf.tidy(() => {
      const ones = tf.ones([200, 100]);
      const first = dropout(ones, 0.25, 1234);
      const kept = tf.mean(tf.cast(tf.greater(first, 0), 'float32')).dataSync()[0];
      t.true(Math.abs(kept - 0.75) < 0.02, `${backend}: kept ${kept}`);
      const keptValues = tf.tidy(() => tf.unique(tf.reshape(first, [-1])).values.dataSync());
      t.deepEqual(
        Array.from(keptValues)
          .map((v) => Number(v.toFixed(5)))
          .sort(),
        [0, Number((1 / 0.75).toFixed(5))],
        backend
      );
      t.is(maxAbsDiff(first, dropout(ones, 0.25, 1234)), 0, `${backend}: same seed, same mask`);
      t.true(maxAbsDiff(first, dropout(ones, 0.25, 1235)) > 0, `${backend}: another seed, another mask`);
      t.is(dropout(ones, 0, 1), ones, 'rate 0 is the identity');
      // The gradient is the mask itself: dropped positions get none, kept ones get 1/(1 − rate).
      const grad = tf.grad((x: tf.Tensor) => tf.sum(dropout(x, 0.25, 99)))(ones);
      t.is(maxAbsDiff(grad, dropout(ones, 0.25, 99)), 0, `${backend} gradient`);
    });
  });
});

test.serial('the global norm and clipping match a plain computation', async (t) => {
  await eachBackend((backend) => {
    tf.tidy(() => {
      const grads = [tf.tensor2d(values(12, 8, 2), [3, 4]), tf.tensor1d(values(5, 9, 3))];
      const norm = Math.sqrt(grads.flatMap((g) => Array.from(g.dataSync())).reduce((s, v) => s + v * v, 0));
      t.true(Math.abs(globalNorm(grads).dataSync()[0] - norm) < 1e-5 * norm, backend);
      const clipped = clipByGlobalNorm(grads, 1);
      t.true(Math.abs(globalNorm(clipped).dataSync()[0] - 1) < 1e-5, `${backend} clipped to 1`);
      const untouched = clipByGlobalNorm(grads, norm * 2);
      t.true(maxAbsDiff(untouched[0], grads[0]) < 1e-6, `${backend} under the limit: unchanged`);
    });
  });
});

/** torch.optim.AdamW in float64 JS, the reference for the optimiser. */
function referenceAdamW(
  p: number[],
  m: number[],
  v: number[],
  g: number[],
  step: number,
  lr: number,
  weightDecay: number
): void {
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - lr * weightDecay;
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    const mHat = m[i] / (1 - b1 ** step);
    const vHat = v[i] / (1 - b2 ** step);
    p[i] -= (lr * mHat) / (Math.sqrt(vHat) + eps);
  }
}

/** What an optimiser class does around FusedAdam: count steps and pick each variable's weight decay. */
class AdamW {
  step = 0;
  readonly adam: FusedAdam;
  constructor(
    variables: tf.Variable[],
    private readonly decays = variables.map(() => true)
  ) {
    this.adam = new FusedAdam(variables);
  }
  apply(grads: tf.Tensor[], lr: number, weightDecay = 0, gradScale = 1): void {
    this.step += 1;
    this.adam.update(
      grads,
      {
        lr,
        step: this.step,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weightDecay: (i) => (this.decays[i] ? weightDecay : 0),
      },
      gradScale
    );
  }
}

test.serial('FusedAdam follows torch.optim.AdamW step by step, decaying only the flagged variables', async (t) => {
  await eachBackend((backend) => {
    const shapes = [[5, 3], [7], [2, 2, 2]];
    const params = shapes.map((s, i) => tf.variable(tf.tensor(values(tf.util.sizeFromShape(s), 10 + i), s)));
    const decays = [true, false, true];
    const optimizer = new AdamW(params, decays);
    t.is(usesNativeKernels(), backend === 'tensorflow');
    const ref = params.map((p) => ({
      p: Array.from(p.dataSync()),
      m: new Array(p.size).fill(0) as number[],
      v: new Array(p.size).fill(0) as number[],
    }));
    const tensorsBefore = tf.memory().numTensors;
    for (let step = 1; step <= 4; step++) {
      const grads = shapes.map((s, i) => tf.tensor(values(tf.util.sizeFromShape(s), 100 * step + i, 0.1), s));
      const lr = 0.01 / step;
      optimizer.apply(grads, lr, 0.1);
      ref.forEach((r, i) =>
        referenceAdamW(r.p, r.m, r.v, Array.from(grads[i].dataSync()), step, lr, decays[i] ? 0.1 : 0)
      );
      tf.dispose(grads);
      t.is(tf.memory().numTensors, tensorsBefore, `${backend}: no tensor left behind at step ${step}`);
    }
    params.forEach((p, i) => {
      const diff = Math.max(...Array.from(p.dataSync()).map((x, j) => Math.abs(x - ref[i].p[j])));
      t.true(diff < 1e-5, `${backend} parameter ${i} is off by ${diff}`);
    });
    t.is(optimizer.step, 4);
    optimizer.adam.dispose();
    tf.dispose(params);
  });
});

test.serial('FusedAdam resumes from saved moments and respects weights assigned between updates', async (t) => {
  await eachBackend((backend) => {
    const make = (): tf.Variable[] => [
      tf.variable(tf.tensor2d(values(6, 1), [2, 3])),
      tf.variable(tf.tensor1d(values(4, 2))),
    ];
    const grads = (step: number) => [tf.tensor2d(values(6, step, 0.1), [2, 3]), tf.tensor1d(values(4, step + 50, 0.1))];
    const apply = (opt: AdamW, step: number) => {
      const g = grads(step);
      opt.apply(g, 0.05);
      tf.dispose(g);
    };

    // Uninterrupted: four updates.
    const straight = make();
    const a = new AdamW(straight);
    for (let s = 1; s <= 4; s++) apply(a, s);

    // Interrupted after two: weights and optimiser state saved, then loaded into fresh objects.
    const first = make();
    const b = new AdamW(first);
    for (let s = 1; s <= 2; s++) apply(b, s);
    const saved = b.adam.moments();
    const weights = first.map((p) => p.clone());
    b.adam.dispose();
    const resumed = make(); // initial values, overwritten below from outside the optimiser
    const c = new AdamW(resumed);
    c.adam.setMoments(saved.m, saved.v);
    c.step = b.step;
    resumed.forEach((p, i) => p.assign(weights[i]));
    for (let s = 3; s <= 4; s++) apply(c, s);

    t.is(c.step, 4);
    resumed.forEach((p, i) => t.true(maxAbsDiff(p, straight[i]) < 1e-7, `${backend} parameter ${i}`));
    t.throws(() => c.adam.setMoments(saved.m.slice(1), saved.v), { message: /1\/2 moments for 2 variables/ });

    // A weight assigned from outside between two updates is the one the next update starts from.
    const [p] = make();
    const d = new AdamW([p]);
    const g1 = [tf.tensor2d(values(6, 1, 0.1), [2, 3])];
    const g2 = [tf.tensor2d(values(6, 2, 0.1), [2, 3])];
    d.apply(g1, 0.05);
    const outside = values(6, 77);
    p.assign(tf.tensor2d(outside, [2, 3]));
    d.apply(g2, 0.05);
    const r = { p: values(6, 1), m: [0, 0, 0, 0, 0, 0], v: [0, 0, 0, 0, 0, 0] };
    referenceAdamW(r.p, r.m, r.v, Array.from(g1[0].dataSync()), 1, 0.05, 0);
    referenceAdamW(outside, r.m, r.v, Array.from(g2[0].dataSync()), 2, 0.05, 0);
    const diff = Math.max(...Array.from(p.dataSync()).map((x, j) => Math.abs(x - outside[j])));
    t.true(diff < 1e-6, `${backend}: after an outside assignment the update is off by ${diff}`);
    d.adam.dispose();
    tf.dispose([p, ...g1, ...g2]);
    tf.dispose([...saved.m, ...saved.v, ...weights, ...straight, ...first, ...resumed]);
    a.adam.dispose();
    c.adam.dispose();
  });
});

/** Two AdamW runs of three updates on the same start, one fed `grads(step)` and the other `scaled(step)`. */
function adamPair(
  shapes: number[][],
  decays: boolean[],
  a: (opt: AdamW, step: number) => void,
  b: (opt: AdamW, step: number) => void
) {
  const make = () => shapes.map((s, i) => tf.variable(tf.tensor(values(tf.util.sizeFromShape(s), 30 + i), s)));
  const [pa, pb] = [make(), make()];
  const [oa, ob] = [new AdamW(pa, decays), new AdamW(pb, decays)];
  for (let step = 1; step <= 3; step++) {
    a(oa, step);
    b(ob, step);
  }
  return { pa, pb, oa, ob };
}

test.serial('FusedAdam applies a clip coefficient exactly as an update of the scaled gradients would', async (t) => {
  await eachBackend((backend) => {
    const shapes = [[4, 3], [5]];
    const decays = [true, false];
    const grads = (step: number) =>
      shapes.map((s, i) => tf.tensor(values(tf.util.sizeFromShape(s), 7 * step + i, 3), s));
    const coefficient = (step: number) => Math.fround(0.3 / step);
    const refs = shapes.map((s, i) => ({
      p: values(tf.util.sizeFromShape(s), 30 + i),
      m: new Array<number>(tf.util.sizeFromShape(s)).fill(0),
      v: new Array<number>(tf.util.sizeFromShape(s)).fill(0),
    }));
    const { pa, pb, oa, ob } = adamPair(
      shapes,
      decays,
      (opt, step) => {
        // What training did before the coefficient reached the optimiser: a scaled copy of every gradient.
        const g = grads(step);
        const scaled = tf.tidy(() => g.map((x) => tf.mul(x, tf.scalar(coefficient(step)))));
        opt.apply(scaled, 0.02, 0.1);
        refs.forEach((r, i) =>
          referenceAdamW(r.p, r.m, r.v, Array.from(scaled[i].dataSync()), step, 0.02, decays[i] ? 0.1 : 0)
        );
        tf.dispose([...g, ...scaled]);
      },
      (opt, step) => {
        const g = grads(step);
        opt.apply(g, 0.02, 0.1, coefficient(step));
        tf.dispose(g);
      }
    );
    const ma = oa.adam.moments();
    const mb = ob.adam.moments();
    pa.forEach((p, i) => {
      t.is(maxAbsDiff(p, pb[i]), 0, `${backend}: parameter ${i} as with scaled gradients`);
      t.is(maxAbsDiff(ma.m[i], mb.m[i]), 0, `${backend}: first moment ${i}`);
      t.is(maxAbsDiff(ma.v[i], mb.v[i]), 0, `${backend}: second moment ${i}`);
      const diff = Math.max(...Array.from(pb[i].dataSync()).map((x, j) => Math.abs(x - refs[i].p[j])));
      t.true(diff < 1e-5, `${backend}: parameter ${i} is off torch's AdamW by ${diff}`);
    });
    t.throws(
      () => ob.adam.update([], { lr: 0.1, step: 1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: () => 0 }, 2),
      {
        message: /0 gradients for 2 variables/,
      }
    );
    t.throws(() => tf.tidy(() => ob.apply(grads(9), 0.02, 0, 1.5)), { message: /gradScale 1.5 is not in \(0, 1\]/ });
    tf.dispose([...ma.m, ...ma.v, ...mb.m, ...mb.v, ...pa, ...pb]);
    oa.adam.dispose();
    ob.adam.dispose();
  });
});

test.serial(
  'native: Stepwise’s fused AdamW kernel is loaded and gives ResourceApplyAdam’s moments bit for bit',
  async (t) => {
    const ran = await eachBackend((backend) => {
      if (backend !== 'tensorflow') return;
      const status = stepwiseOpsStatus();
      if (!status.loaded) {
        if (stepwiseKernelsExpected()) t.fail(`not loaded: ${status.reason}`);
        else t.log(`Stepwise kernels not loaded (${status.reason}): only TensorFlow's path ran`);
        return;
      }
      const shapes = [[64, 33], [7]];
      const decays = [true, false];
      const grads = (step: number) =>
        shapes.map((s, i) => tf.tensor(values(tf.util.sizeFromShape(s), 11 * step + i, 2), s));
      const run = (opt: AdamW, step: number, fused: boolean) => {
        const before = useStepwiseKernels(fused);
        try {
          const g = grads(step);
          opt.apply(g, 0.01, 0.05, step === 2 ? 1 : Math.fround(0.6));
          tf.dispose(g);
        } finally {
          useStepwiseKernels(before);
        }
      };
      const { pa, pb, oa, ob } = adamPair(
        shapes,
        decays,
        (opt, step) => run(opt, step, true),
        (opt, step) => run(opt, step, false)
      );
      const ma = oa.adam.moments();
      const mb = ob.adam.moments();
      pa.forEach((p, i) => {
        // The moments do not involve the step size, which the kernel takes precomputed and TF computes in float32.
        t.is(maxAbsDiff(ma.m[i], mb.m[i]), 0, `first moment ${i}`);
        t.is(maxAbsDiff(ma.v[i], mb.v[i]), 0, `second moment ${i}`);
        t.true(maxAbsDiff(p, pb[i]) < 1e-6, `parameter ${i} is off by ${maxAbsDiff(p, pb[i])}`);
      });
      tf.dispose([...ma.m, ...ma.v, ...mb.m, ...mb.v, ...pa, ...pb]);
      oa.adam.dispose();
      ob.adam.dispose();
    });
    if (!ran.includes('tensorflow')) t.log('native backend absent: nothing to compare');
    t.pass();
  }
);

type NativeCounts = { getNumOfTensors?(): number; getNumOfSavedModels?(): number };
const nativeBinding = () => (tf.backend() as unknown as { binding?: NativeCounts }).binding;
/** Handles alive in the native library (tfjs's count misses the raw ones the fused sublayers make and free). */
const nativeHandles = () => nativeBinding()?.getNumOfTensors?.() ?? 0;
/** Graph sessions loaded in the native library. */
const sessions = () => nativeBinding()?.getNumOfSavedModels?.() ?? 0;

test.serial(
  'the fused sublayers give the op-by-op model’s loss and gradients, dropout masks included, and leave nothing behind',
  async (t) => {
    await eachBackend((backend) => {
      // Natively the sublayers run as graph sessions, or op by op: both are held to the op-by-op model.
      for (const graph of backend === 'tensorflow' ? [true, false] : [false]) {
        const before = useGraphSublayers(graph);
        try {
          fusedAgainstPlain(t, `${backend}${graph ? ' (graphs)' : ''}`, graph);
        } finally {
          useGraphSublayers(before);
        }
      }
    });
  }
);

function fusedAgainstPlain(t: ExecutionContext, backend: string, graph: boolean): void {
  // Padding in the source and the labels, uneven lengths, both feed-forward kinds and both output layers.
  const source = padBatch([
    [5, 6, 7, 8, 9, 1],
    [10, 11, 12, 1],
  ]);
  const labels = padBatch([
    [20, 21, 22, 1],
    [23, 1],
  ]);
  const sessionsBefore = sessions();
  for (const [ff, tie] of [
    ['gated-gelu', false],
    ['relu', true],
  ] as const) {
    const config = makeConfig('tiny', 40, { feed_forward_proj: ff, tie_word_embeddings: tie, dropout_rate: 0.2 });
    const model = T5Model.init(config, 5);
    const variables = [...model.variables.values()];
    const step = (training: boolean) =>
      tf.variableGrads(() => model.loss(source, labels, { training, dropoutSeed: 3 }), variables);
    for (const training of [false, true]) {
      const fused = step(training);
      const plain = withOpByOpSublayers(() => step(training));
      const label = `${backend} ${ff}${training ? ' with dropout' : ''}`;
      const [a, b] = [fused.value.dataSync()[0], plain.value.dataSync()[0]];
      t.true(Math.abs(a - b) < 1e-5, `${label}: loss ${a} vs ${b}`);
      for (const v of variables) {
        const [g, r] = [fused.grads[v.name], plain.grads[v.name]];
        const scale = tf.tidy(() => tf.max(tf.abs(r)).dataSync()[0]);
        t.true(maxAbsDiff(g, r) <= 1e-5 * Math.max(scale, 1e-3), `${label}: a gradient is off`);
      }
      tf.dispose([fused.value, plain.value, ...Object.values(fused.grads), ...Object.values(plain.grads)]);
      // Outside a gradient scope nothing is kept for a backward pass, and the value is the same.
      const forwardOnly = tf.tidy(() => model.loss(source, labels, { training, dropoutSeed: 3 }).dataSync()[0]);
      t.true(Math.abs(forwardOnly - a) < 1e-6, `${label}: forward-only loss ${forwardOnly} vs ${a}`);
    }
    // A step leaves no tensor and no native handle behind (the first one makes the kept constants).
    const counts = () => [tf.memory().numTensors, nativeHandles()];
    const once = () => {
      const { value, grads } = step(true);
      tf.dispose([value, ...Object.values(grads)]);
    };
    once();
    const before = counts();
    once();
    t.deepEqual(counts(), before, `${backend} ${ff}: tensors and native handles after a step`);
    if (graph) {
      // The sublayers ran as graphs, and a batch of other lengths and size needs none beyond those loaded.
      t.true(sessions() > sessionsBefore, `${backend} ${ff}: no graph session was loaded`);
      const loaded = sessions();
      const longer = tf.tidy(() => {
        const grads = tf.variableGrads(
          () =>
            model.loss(
              padBatch([
                [5, 6, 7, 8, 9, 10, 11, 1],
                [12, 1],
                [13, 14, 1],
              ]),
              padBatch([
                [20, 21, 22, 24, 25, 1],
                [23, 1],
                [26, 1],
              ]),
              { training: true, dropoutSeed: 4 }
            ),
          variables
        );
        return grads.value.dataSync()[0];
      });
      t.true(Number.isFinite(longer));
      t.is(sessions(), loaded, `${backend} ${ff}: a new batch shape loaded graphs of its own`);
    }
    model.dispose();
  }
}
