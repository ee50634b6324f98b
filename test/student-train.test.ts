import test from 'ava';
import { InputError } from '../lib/errors';
import { initBackend } from '../lib/student/backend';
import { loadCheckpoint, readCheckpointMeta } from '../lib/student/checkpoint';
import { greedyDecode } from '../lib/student/decode';
import { predict } from '../lib/student/evaluate';
import { mulberry32 } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import { createOptimizer } from '../lib/student/optim';
import { BatchSampler } from '../lib/student/sampler';
import { parseTrainOptions, train, type TrainHooks, type TrainOptionsInput } from '../lib/student/train';
import { buildPairs, type TrainRecord } from '../lib/student/pairs';
import { learningRateAt } from '../lib/student/loop';

// Training tests run one at a time: they count live tensors, and two trainings at once would only share 2 cores.
test.before(async () => {
  await initBackend('auto');
});

const NOUNS = ['soup', 'bread', 'tea', 'cake', 'rice', 'fish', 'salad', 'pie', 'juice', 'stew'];
const GOOD = ['tasty', 'fresh', 'warm', 'sweet', 'crisp'];
const BAD = ['cold', 'stale', 'bland', 'burnt', 'soggy'];

/**
 * A toy two-label task: the label is the polarity of the one adjective, among a random order number and noun the
 * student has to learn to ignore. `teacherLabel` is wrong on every 7th example, so gold and teacher differ.
 */
function toyTask(n: number, seed: number): TrainRecord[] {
  const random = mulberry32(seed);
  const next = (k: number) => Math.floor(random() * k);
  return Array.from({ length: n }, (_, i) => {
    const positive = next(2) === 0;
    const adjective = (positive ? GOOD : BAD)[next(5)];
    const label = positive ? 'positive' : 'negative';
    return {
      input: `Order ${next(100)}: the ${NOUNS[next(NOUNS.length)]} was ${adjective}.`,
      goldLabel: label,
      teacherLabel: i % 7 === 3 ? (positive ? 'negative' : 'positive') : label,
      rationale: `${adjective} is ${label}.`,
    };
  });
}

const base: TrainOptionsInput = {
  method: 'distill-step-by-step',
  steps: 5,
  batchSize: 8,
  learningRate: 3e-3,
  seed: 1,
  maxInputLength: 32,
  maxTargetLength: 8,
  maxRationaleLength: 16,
};

/** `train()` with options as a test writes them, validated and completed first as any direct caller does. */
const trainWith = (records: TrainRecord[], opts: TrainOptionsInput, hooks?: TrainHooks) =>
  train(records, parseTrainOptions(opts), hooks);

test('buildPairs: distill-step-by-step gives a predict pair and an explain pair per example, gold labels by default', (t) => {
  const records = toyTask(5, 1);
  const pairs = buildPairs(records, 'distill-step-by-step');
  t.is(pairs.label.length, 5);
  t.is(pairs.rationale!.length, 5);
  records.forEach((r, i) => {
    t.deepEqual(pairs.label[i], { source: `predict: ${r.input}`, target: r.goldLabel });
    t.deepEqual(pairs.rationale![i], { source: `explain: ${r.input}`, target: r.rationale });
  });
  const llm = buildPairs(records, 'distill-step-by-step', { labelSource: 'teacher' });
  t.deepEqual(
    llm.label.map((p) => p.target),
    records.map((r) => r.teacherLabel)
  );
});

test('buildPairs: standard finetuning maps input to gold, standard distillation input to teacher, with no prefix', (t) => {
  const records = toyTask(10, 2);
  const finetune = buildPairs(records, 'standard-finetune');
  const distill = buildPairs(records, 'standard-distill');
  t.is(finetune.rationale, undefined);
  t.is(distill.rationale, undefined);
  t.deepEqual(
    finetune.label,
    records.map((r) => ({ source: r.input, target: r.goldLabel }))
  );
  t.deepEqual(
    distill.label,
    records.map((r) => ({ source: r.input, target: r.teacherLabel }))
  );
  // Standard finetuning needs no teacher at all.
  t.notThrows(() => buildPairs([{ input: 'x', goldLabel: 'y' }], 'standard-finetune'));
});

test('buildPairs rejects records missing what the method needs, naming the record and field', (t) => {
  t.throws(() => buildPairs([{ input: 'x', goldLabel: 'y', teacherLabel: 'y' }], 'distill-step-by-step'), {
    instanceOf: InputError,
    message: /records\[0\]\.rationale/,
  });
  t.throws(() => buildPairs([...toyTask(2, 3), { input: 'x', goldLabel: 'y' }], 'standard-distill'), {
    instanceOf: InputError,
    message: /records\[2\]\.teacherLabel/,
  });
  t.throws(() => buildPairs([{ input: '', goldLabel: 'y' }], 'standard-finetune'), {
    instanceOf: InputError,
    message: /records\[0\]\.input/,
  });
  t.throws(() => buildPairs(toyTask(2, 3), 'standard-finetune', { labelSource: 'teacher' }), {
    instanceOf: InputError,
    message: /labelSource/,
  });
  t.throws(() => buildPairs(toyTask(2, 3), 'distill' as never), { instanceOf: InputError, message: /method/ });
});

test('the learning rate warms up linearly and decays linearly to zero', (t) => {
  t.is(learningRateAt(0, 1, 10, 110), 0);
  t.is(learningRateAt(5, 1, 10, 110), 0.5);
  t.is(learningRateAt(10, 1, 10, 110), 1);
  t.is(learningRateAt(60, 1, 10, 110), 0.5);
  t.is(learningRateAt(110, 1, 10, 110), 0);
  t.is(learningRateAt(0, 2, 0, 4), 2);
});

test.serial('training is deterministic for a seed and leaks no tensors across steps', async (t) => {
  const records = toyTask(40, 4);
  const before = tf.memory().numTensors;
  const counts: number[] = [];
  const first = await trainWith(records, base, { onProgress: () => counts.push(tf.memory().numTensors) });
  t.is(counts.length, 5);
  t.true(
    counts.every((n) => n === counts[0]),
    `tensors per step: ${counts}`
  );
  t.is(tf.memory().numTensors, before);
  // Adafactor (factored and unfactored slots, first moment), with validation and checkpoints between steps.
  for (const adafactor of [{}, { relativeStep: true, scaleParameter: true, beta1: 0.9 }]) {
    const adaCounts: number[] = [];
    let checkpoints = 0;
    await trainWith(
      records,
      {
        ...base,
        steps: 8,
        optimizer: 'adafactor',
        adafactor,
        valid: records.slice(0, 8),
        evalEvery: 2,
        checkpointEvery: 3,
      },
      { onProgress: () => adaCounts.push(tf.memory().numTensors), onCheckpoint: () => void checkpoints++ }
    );
    t.is(checkpoints, 2);
    t.true(
      adaCounts.every((n) => n === adaCounts[0]),
      `adafactor tensors per step: ${adaCounts}`
    );
    t.is(tf.memory().numTensors, before);
  }
  const second = await trainWith(records, base);
  t.deepEqual(second.lossHistory, first.lossHistory);
  const other = await trainWith(records, { ...base, seed: 2 });
  t.notDeepEqual(other.lossHistory, first.lossHistory);
  // Dropout masks are seeded per step too.
  const dropout = { ...base, steps: 3, config: { dropout_rate: 0.1 } };
  t.deepEqual((await trainWith(records, dropout)).lossHistory, (await trainWith(records, dropout)).lossHistory);
  // Every point has the two parts of the distill-step-by-step objective, combined with alpha 0.5.
  for (const p of first.lossHistory) t.true(Math.abs(p.loss - (0.5 * p.labelLoss + 0.5 * p.rationaleLoss!)) < 1e-5);
});

test.serial(
  'distill-step-by-step training drives the loss down and the student then predicts held-out labels',
  async (t) => {
    const records = toyTask(400, 5);
    const heldOut = toyTask(60, 99);
    const steps = 70;
    const progress: number[] = [];
    const result = await trainWith(
      records,
      { ...base, steps, batchSize: 16, warmupSteps: 5, valid: heldOut.slice(0, 16), evalEvery: 35 },
      { onProgress: (p) => progress.push(p.step) }
    );
    t.deepEqual(
      progress,
      Array.from({ length: steps }, (_, i) => i + 1)
    );
    const initial = result.lossHistory[0].loss;
    t.true(result.finalLoss < initial * 0.2, `loss ${initial} → ${result.finalLoss}`);
    t.true(result.validLoss !== undefined && result.validLoss < initial * 0.3, `valid loss ${result.validLoss}`);
    t.is(result.steps, steps);
    t.is(readCheckpointMeta(result.checkpoint).training.method, 'distill-step-by-step');

    const outputs = await predict(
      result.checkpoint,
      heldOut.map((r) => r.input),
      { maxLength: 6, batchSize: 16 }
    );
    const accuracy = outputs.filter((o, i) => o === heldOut[i].goldLabel).length / heldOut.length;
    const majority =
      Math.max(...['positive', 'negative'].map((l) => heldOut.filter((r) => r.goldLabel === l).length)) /
      heldOut.length;
    t.log(`loss ${initial.toFixed(3)} → ${result.finalLoss.toFixed(3)}; accuracy ${accuracy}, majority ${majority}`);
    t.true(accuracy >= Math.max(0.8, majority + 0.2), `accuracy ${accuracy}, majority ${majority}`);

    // The explain task was learned too: the rationale names the input's adjective.
    const { model, tokenizer } = loadCheckpoint(result.checkpoint);
    const rationales = await greedyDecode(
      model,
      tokenizer,
      heldOut.slice(0, 10).map((r) => r.input),
      {
        maxLength: 10,
        batchSize: 4,
        prefix: 'explain: ',
      }
    );
    const named = rationales.filter((r, i) => r.split(' ')[0] === heldOut[i].rationale!.split(' ')[0]).length;
    t.log(`rationales: ${JSON.stringify(rationales)}`);
    t.true(named >= 7, `rationales: ${JSON.stringify(rationales)}`);
    model.dispose();
  }
);

test.serial('greedy decoding gives the same outputs whatever the batch size', async (t) => {
  const result = await trainWith(toyTask(80, 6), { ...base, method: 'standard-finetune', steps: 20, batchSize: 16 });
  const { model, tokenizer } = loadCheckpoint(result.checkpoint);
  const inputs = toyTask(9, 7).map((r) => r.input);
  const one = await greedyDecode(model, tokenizer, inputs, { maxLength: 5, batchSize: 1 });
  const many = await greedyDecode(model, tokenizer, inputs, { maxLength: 5, batchSize: 4 });
  t.deepEqual(many, one);
  t.is(one.length, inputs.length);
  model.dispose();
});

test.serial('shouldStop ends training early with a checkpoint of the steps done', async (t) => {
  let calls = 0;
  const result = await trainWith(toyTask(20, 8), { ...base, steps: 50 }, { shouldStop: () => ++calls > 3 });
  t.is(result.steps, 3);
  t.is(readCheckpointMeta(result.checkpoint).training.steps, 3);
  t.is(result.lossHistory[result.lossHistory.length - 1].step, 3);
});

/** A [rows, cols] matrix of N(0, 1)-ish values from a seed. */
function matrix(rows: number, cols: number, seed: number): number[][] {
  const random = mulberry32(seed);
  return Array.from({ length: rows }, () => Array.from({ length: cols }, () => 2 * random() - 1));
}

/** One variable per matrix, optimised together for `steps` steps with the given gradients; values read back. */
function runOptimizer(
  name: 'adamw' | 'adafactor',
  values: number[][][],
  grads: number[][][][],
  lr: number,
  opts: Parameters<typeof createOptimizer>[2]
): number[][][] {
  const variables = values.map((v) => tf.variable(tf.tensor(v.length === 1 ? v[0] : v)));
  const optimizer = createOptimizer(
    name,
    variables.map((variable, i) => ({ name: `p${i}`, variable, decay: true })),
    opts
  );
  for (const stepGrads of grads) {
    const gs = stepGrads.map((g) => tf.tensor(g.length === 1 ? g[0] : g));
    optimizer.apply(gs, lr);
    tf.dispose(gs);
  }
  const out = variables.map((v) => {
    const data = Array.from(v.dataSync());
    const cols = v.shape[v.shape.length - 1] as number;
    return Array.from({ length: data.length / cols }, (_, r) => data.slice(r * cols, (r + 1) * cols));
  });
  optimizer.dispose();
  tf.dispose(variables);
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const rmsOf = (m: number[][]) => Math.sqrt(mean(m.flat().map((x) => x * x)));

/** HF's `Adafactor.step` in float64 loops, for one parameter (a matrix, or a vector as a 1-row matrix). */
function referenceAdafactor(
  p0: number[][],
  grads: number[][][],
  h: { lr: number; relativeStep: boolean; scaleParameter: boolean; beta1: number | null; weightDecay: number },
  factored: boolean
): number[][] {
  const p = p0.map((r) => [...r]);
  const rows = p.length;
  const cols = p[0].length;
  let row = new Array(rows).fill(0);
  let col = new Array(cols).fill(0);
  let sq = p.map((r) => r.map(() => 0));
  let avg = p.map((r) => r.map(() => 0));
  grads.forEach((g, k) => {
    const t = k + 1;
    const rel = h.relativeStep ? Math.min(1e-2, 1 / Math.sqrt(t)) : h.lr;
    const lr = h.scaleParameter ? Math.max(1e-3, rmsOf(p)) * rel : rel;
    const beta2t = 1 - t ** -0.8;
    const u = g.map((r) => r.map((x) => x * x + 1e-30));
    let update: number[][];
    if (factored) {
      row = row.map((x, i) => beta2t * x + (1 - beta2t) * mean(u[i]));
      col = col.map((x, j) => beta2t * x + (1 - beta2t) * mean(u.map((r) => r[j])));
      const rowMean = mean(row);
      update = g.map((r, i) => r.map((x, j) => x / Math.sqrt(row[i] / rowMean) / Math.sqrt(col[j])));
    } else {
      sq = sq.map((r, i) => r.map((x, j) => beta2t * x + (1 - beta2t) * u[i][j]));
      update = g.map((r, i) => r.map((x, j) => x / Math.sqrt(sq[i][j])));
    }
    const clip = Math.max(1, rmsOf(update));
    update = update.map((r) => r.map((x) => (x / clip) * lr));
    if (h.beta1 !== null) {
      avg = avg.map((r, i) => r.map((x, j) => h.beta1! * x + (1 - h.beta1!) * update[i][j]));
      update = avg;
    }
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) p[i][j] = p[i][j] - h.weightDecay * lr * p[i][j] - update[i][j];
    }
  });
  return p;
}

/** torch's AdamW in float64 loops. */
function referenceAdamW(p0: number[][], grads: number[][][], lr: number, weightDecay: number): number[][] {
  const p = p0.map((r) => [...r]);
  const m = p.map((r) => r.map(() => 0));
  const v = p.map((r) => r.map(() => 0));
  grads.forEach((g, k) => {
    const t = k + 1;
    for (let i = 0; i < p.length; i++) {
      for (let j = 0; j < p[i].length; j++) {
        p[i][j] *= 1 - lr * weightDecay;
        m[i][j] = 0.9 * m[i][j] + 0.1 * g[i][j];
        v[i][j] = 0.999 * v[i][j] + 0.001 * g[i][j] ** 2;
        const denom = Math.sqrt(v[i][j]) / Math.sqrt(1 - 0.999 ** t) + 1e-8;
        p[i][j] -= ((lr / (1 - 0.9 ** t)) * m[i][j]) / denom;
      }
    }
  });
  return p;
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  return Math.max(...a.flatMap((r, i) => r.map((x, j) => Math.abs(x - b[i][j]))));
}

test('Adafactor updates match HF Adafactor computed in float64, with and without its options', (t) => {
  const w = matrix(3, 5, 1);
  const v = matrix(1, 4, 2);
  const steps = [3, 4, 5, 6].map((s) => [matrix(3, 5, 10 * s), matrix(1, 4, 10 * s + 1)]);
  for (const h of [
    { lr: 1e-2, relativeStep: false, scaleParameter: false, beta1: null, weightDecay: 0 },
    { lr: 0, relativeStep: true, scaleParameter: true, beta1: 0.9, weightDecay: 0.1 },
  ]) {
    const [gotW, gotV] = runOptimizer('adafactor', [w, v], steps, h.lr, { adafactor: { ...h } });
    const wantW = referenceAdafactor(
      w,
      steps.map((s) => s[0]),
      h,
      true
    );
    const wantV = referenceAdafactor(
      v,
      steps.map((s) => s[1]),
      h,
      false
    );
    t.true(maxAbsDiff(gotW, wantW) < 1e-6, `matrix differs by ${maxAbsDiff(gotW, wantW)} with ${JSON.stringify(h)}`);
    t.true(maxAbsDiff(gotV, wantV) < 1e-6, `vector differs by ${maxAbsDiff(gotV, wantV)} with ${JSON.stringify(h)}`);
    t.true(maxAbsDiff(gotW, w) > 1e-3, 'the parameters moved');
  }
});

test('Adafactor gives the transposed update for a transposed matrix (linear weights are kept transposed)', (t) => {
  const w = matrix(3, 5, 3);
  const transpose = (m: number[][]) => m[0].map((_, j) => m.map((r) => r[j]));
  const grads = [7, 8, 9].map((s) => [matrix(3, 5, s)]);
  const opts = { adafactor: { relativeStep: true, scaleParameter: true } };
  const [plain] = runOptimizer('adafactor', [w], grads, 0, opts);
  const [transposed] = runOptimizer(
    'adafactor',
    [transpose(w)],
    grads.map(([g]) => [transpose(g)]),
    0,
    opts
  );
  t.true(maxAbsDiff(transpose(transposed), plain) < 1e-6);
});

test('AdamW updates match torch AdamW computed in float64', (t) => {
  const w = matrix(4, 3, 4);
  const grads = [11, 12, 13].map((s) => [matrix(4, 3, s)]);
  const [got] = runOptimizer('adamw', [w], grads, 1e-2, { adamw: { weightDecay: 0.1 } });
  t.true(
    maxAbsDiff(
      got,
      referenceAdamW(
        w,
        grads.map(([g]) => g),
        1e-2,
        0.1
      )
    ) < 1e-6
  );
});

test('batches are grouped by length, deterministic for a seed, cover every example each epoch, and resume', (t) => {
  const random = mulberry32(3);
  const lengths = Array.from({ length: 100 }, () => 5 + Math.floor(random() * 60));
  const padding = (batches: number[][]) =>
    batches.reduce(
      (sum, b) => sum + b.length * Math.max(...b.map((i) => lengths[i])) - b.reduce((s, i) => s + lengths[i], 0),
      0
    );
  const epoch = (s: BatchSampler, n: number) => Array.from({ length: n }, () => s.next());
  const grouped = epoch(new BatchSampler(lengths, 8, 1), 13);
  t.deepEqual(epoch(new BatchSampler(lengths, 8, 1), 13), grouped);
  t.notDeepEqual(epoch(new BatchSampler(lengths, 8, 2), 13), grouped);
  t.deepEqual(
    grouped.flat().sort((a, b) => a - b),
    lengths.map((_, i) => i)
  );
  t.deepEqual(grouped.map((b) => b.length).sort((a, b) => a - b)[0], 4, 'one remainder batch of 100 mod 8');
  const random8 = epoch(new BatchSampler(lengths, 8, 1, false), 13);
  t.log(`padding tokens per epoch: grouped ${padding(grouped)}, shuffled ${padding(random8)}`);
  t.true(padding(grouped) < padding(random8) / 3);

  const a = new BatchSampler(lengths, 8, 1);
  epoch(a, 20); // into the second epoch
  const b = new BatchSampler(lengths, 8, 1);
  b.restore(a.state);
  t.deepEqual(epoch(b, 30), epoch(a, 30));
});

test('bad training options are rejected with InputErrors naming the option, the value and what was expected', async (t) => {
  const records = toyTask(4, 9);
  const rejects = (patch: Partial<TrainOptionsInput>, message: RegExp) =>
    t.throws(() => parseTrainOptions({ ...base, ...patch }), { instanceOf: InputError, message });
  rejects({ steps: 0 }, /^steps is 0; expected number to be >=1/);
  rejects({ alpha: 1.5 }, /^alpha is 1\.5; expected number to be <=1/);
  rejects({ learningRate: -1 }, /^learningRate is -1; expected number to be >0/);
  // One bound for a spec and a direct caller: above 1 is a typo, and a source needs room beyond its prefix.
  rejects({ learningRate: 3 }, /^learningRate is 3; expected number to be <=1/);
  rejects({ maxInputLength: 4 }, /^maxInputLength is 4; expected number to be >=8/);
  rejects({ preset: 'giant' as never }, /^preset is "giant"; expected one of tiny, small, base, large/);
  rejects({ method: 'standard-distill', labelSource: 'gold' }, /^labelSource is "gold"; standard-distill trains/);
  rejects({ optimizer: 'sgd' as never }, /^optimizer is "sgd"; expected one of adamw, adafactor/);
  rejects({ adafactor: { warmupInit: true } }, /^adafactor\.warmupInit is true; .*relativeStep/);
  rejects({ earlyStoppingPatience: 2 }, /^earlyStoppingPatience is 2; .* evalEvery/);
  rejects({ checkpointEvery: 0 }, /^checkpointEvery is 0/);
  rejects({ stesp: 10 } as never, /^stesp is 10; Unrecognized key/);
  // What only the run itself can check: its records, and a resume checkpoint of this run.
  await t.throwsAsync(train([], parseTrainOptions(base)), { instanceOf: InputError, message: /records/ });
  await t.throwsAsync(train(records, parseTrainOptions({ ...base, earlyStoppingPatience: 2, evalEvery: 1 })), {
    instanceOf: InputError,
    message: /^earlyStoppingPatience .* valid records/,
  });
  await t.throwsAsync(train(records, parseTrainOptions({ ...base, resumeFrom: Buffer.from('nope') })), {
    instanceOf: InputError,
    message: /safetensors/,
  });
});
