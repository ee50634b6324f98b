import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { InputError } from '../lib/errors';
import { initBackend } from '../lib/student/backend';
import {
  copyWeights,
  decodeSafetensors,
  loadCheckpoint,
  readCheckpointMeta,
  serializeCheckpoint,
} from '../lib/student/checkpoint';
import { makeConfig, PRESETS, type T5Config } from '../lib/student/config';
import { paramSpecs, relativePositionBuckets, shiftRight, T5Model } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import { trainTokenizer } from '../lib/student/tokenizer';
import { batchLoss, padBatch } from '../lib/student/loss';
import { exportT5, readSafetensorsAnyFloat } from '../lib/student/hf';

const VOCAB = 500;

test.before(async () => {
  await initBackend('auto');
});

/** Deterministic pseudo-random token ids in [3, vocab): real tokens, never pad/eos/unk. */
function ids(rows: number, cols: number, salt: number, vocab = VOCAB): number[][] {
  return Array.from({ length: rows }, (_, r) =>
    Array.from({ length: cols }, (_, c) => 3 + ((r * 7919 + c * 104729 + salt * 15485863) % (vocab - 3)))
  );
}

/** A config of the tiny preset's shape with an untied head, to cover both output layers across tests. */
function tinyConfig(overrides: Partial<T5Config> = {}): T5Config {
  return makeConfig('tiny', VOCAB, overrides);
}

test('the forward pass maps [B, S] sources and [B, T] decoder inputs to [B, T, V] logits', (t) => {
  for (const tie of [true, false]) {
    const model = T5Model.init(tinyConfig({ tie_word_embeddings: tie }), 1);
    const logits = model.forward(padBatch(ids(3, 11, 1)), padBatch(ids(3, 5, 2)));
    t.deepEqual(logits.shape, [3, 5, VOCAB]);
    t.true(tf.all(tf.isFinite(logits)).dataSync()[0] === 1);
    logits.dispose();
    model.dispose();
  }
});

test('parameters carry Hugging Face T5 names and the count matches the shapes', (t) => {
  const config = tinyConfig({ tie_word_embeddings: false });
  const names = paramSpecs(config).map((s) => s.name);
  for (const name of [
    'shared.weight',
    'encoder.block.0.layer.0.SelfAttention.q.weight',
    'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
    'encoder.block.1.layer.1.DenseReluDense.wi_0.weight',
    'encoder.final_layer_norm.weight',
    'decoder.block.1.layer.1.EncDecAttention.o.weight',
    'decoder.block.0.layer.2.DenseReluDense.wo.weight',
    'lm_head.weight',
  ]) {
    t.true(names.includes(name), name);
  }
  // Only the first block of each stack learns a position bias; the others share it.
  t.false(names.includes('encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight'));
  t.false(paramSpecs(tinyConfig()).some((s) => s.name === 'lm_head.weight'));
  const model = T5Model.init(config, 0);
  const counted = [...model.variables.values()].reduce((n, v) => n + v.size, 0);
  t.is(model.parameterCount, counted);
  model.dispose();
});

test('the initial loss is close to ln V and the initial logits are near unit scale', (t) => {
  for (const [tie, scale] of [
    [true, undefined],
    [false, undefined],
    [true, false],
  ] as const) {
    const config = tinyConfig({ tie_word_embeddings: tie, scale_decoder_outputs: scale });
    const model = T5Model.init(config, 3);
    const source = padBatch(ids(8, 24, 3));
    const labels = padBatch(ids(8, 12, 4));
    const loss = model.loss(source, labels).dataSync()[0];
    // Unit-variance logits cost about ½ nat over ln V; T5's init without the d_model^-0.5 rescale costs tens.
    t.true(Math.abs(loss - Math.log(VOCAB)) < 1.5, `tie=${tie}/${scale}: loss ${loss} vs ln V ${Math.log(VOCAB)}`);
    const std = tf.tidy(() => {
      const logits = model.forward(source, shiftRight(labels, 0));
      return tf.mean(tf.sqrt(tf.moments(logits, -1).variance)).dataSync()[0];
    });
    t.true(std > 0.7 && std < 1.4, `tie=${tie}/${scale}: logit std ${std}`);
    model.dispose();
  }
});

test('a tied head without the rescale gives logits h·Eᵀ from embeddings initialised at std d_model^-0.5', (t) => {
  const config = tinyConfig({ tie_word_embeddings: true, scale_decoder_outputs: false });
  const model = T5Model.init(config, 9);
  t.false(
    paramSpecs(config).some((s) => s.name === 'lm_head.weight'),
    'one matrix for embeddings and head'
  );
  const E = model.variables.get('shared.weight')!.dataSync() as Float32Array;
  const D = config.d_model;
  const sd = Math.sqrt(E.reduce((a, x) => a + x * x, 0) / E.length);
  t.true(Math.abs(sd - D ** -0.5) < 0.01, `embedding std ${sd} vs ${D ** -0.5}`);
  const source = padBatch(ids(2, 9, 5));
  const target = padBatch(ids(2, 4, 6));
  const [hidden, logits] = tf.tidy(() => {
    const h = model.decode(model.encode(source), target);
    return [h.dataSync() as Float32Array, model.logits(h).dataSync() as Float32Array];
  });
  // Independently: every logit is the dot product of a state with a row of the embeddings, unscaled.
  let worst = 0;
  for (let row = 0; row < hidden.length / D; row++) {
    for (const v of [0, 7, VOCAB - 1]) {
      let dot = 0;
      for (let k = 0; k < D; k++) dot += hidden[row * D + k] * E[v * D + k];
      worst = Math.max(worst, Math.abs(dot - logits[row * VOCAB + v]));
    }
  }
  t.true(worst < 1e-4, `largest difference ${worst}`);
  model.dispose();
});

test('a config written before scale_decoder_outputs existed reads as the rescaled tied head it meant', (t) => {
  // A checkpoint's config as written before the field existed: makeConfig now writes it out, so take it away.
  const { scale_decoder_outputs: resolved, ...old } = tinyConfig();
  t.true(resolved, 'the tiny preset resolves to the rescaled tied head');
  t.false('scale_decoder_outputs' in old);
  const explicit = T5Model.fromWeights(tinyConfig({ scale_decoder_outputs: true }), copyWeights(T5Model.init(old, 4)));
  const legacy = T5Model.init(old, 4);
  const source = padBatch(ids(2, 7, 8));
  const target = padBatch(ids(2, 3, 9));
  const [a, b] = [legacy, explicit].map((m) => m.forward(source, target).dataSync());
  t.deepEqual(Array.from(a), Array.from(b));
  t.throws(() => tinyConfig({ tie_word_embeddings: false, scale_decoder_outputs: true }), {
    instanceOf: InputError,
    message: /config\.scale_decoder_outputs/,
  });
  legacy.dispose();
  explicit.dispose();
});

test('the same seed gives the same initial weights and another seed different ones', (t) => {
  const config = tinyConfig();
  const [a, b, c] = [5, 5, 6].map((seed) => T5Model.init(config, seed));
  const first = (m: T5Model) =>
    Array.from(m.variables.get('encoder.block.0.layer.0.SelfAttention.q.weight')!.dataSync());
  t.deepEqual(first(a), first(b));
  t.notDeepEqual(first(a), first(c));
  for (const m of [a, b, c]) m.dispose();
});

test('padding in the source does not change the logits of the real tokens', (t) => {
  const model = T5Model.init(tinyConfig(), 2);
  const source = ids(1, 9, 5)[0];
  const decoder = padBatch(ids(1, 4, 6));
  const [plain, padded] = tf.tidy(() => [
    model.forward(padBatch([source]), decoder).dataSync(),
    model.forward(padBatch([[...source, 0, 0, 0, 0]]), decoder).dataSync(),
  ]);
  const diff = Math.max(...Array.from(plain, (v, i) => Math.abs(v - padded[i])));
  t.true(diff < 1e-4, `max difference ${diff}`);
  model.dispose();
});

test('the decoder is causal: later target tokens do not change earlier logits', (t) => {
  const model = T5Model.init(tinyConfig(), 4);
  const source = padBatch(ids(2, 7, 7));
  const a = ids(2, 6, 8);
  const b = a.map((row) => [...row.slice(0, 3), ...ids(1, 3, 9)[0]]);
  const [la, lb] = tf.tidy(() => [
    tf.slice(model.forward(source, padBatch(a)), [0, 0, 0], [2, 3, VOCAB]).dataSync(),
    tf.slice(model.forward(source, padBatch(b)), [0, 0, 0], [2, 3, VOCAB]).dataSync(),
  ]);
  const diff = Math.max(...Array.from(la, (v, i) => Math.abs(v - lb[i])));
  t.true(diff < 1e-4, `max difference ${diff}`);
  model.dispose();
});

test('relative position buckets follow T5: exact near, logarithmic far, split by direction when bidirectional', (t) => {
  // bidirectional, 32 buckets: 16 per direction, 8 exact; key - query = k - q.
  const bi = relativePositionBuckets(1, 300, true, 32, 128);
  t.is(bi[0], 0);
  t.is(bi[3], 16 + 3); // key 3 after the query
  t.is(bi[7], 16 + 7);
  t.is(bi[20], 16 + 8 + Math.trunc((Math.log(20 / 8) / Math.log(128 / 8)) * 8));
  t.is(bi[299], 31); // beyond max distance: the last bucket
  const before = relativePositionBuckets(300, 1, true, 32, 128); // key 0, queries 0..299: keys before the query
  t.is(before[5], 5);
  t.is(before[299], 15);
  // causal: keys after the query all share bucket 0, keys before use all 32 buckets (16 exact).
  const causal = relativePositionBuckets(50, 50, false, 32, 128);
  t.is(causal[0 * 50 + 5], 0);
  t.is(causal[5 * 50 + 0], 5);
  t.is(causal[45 * 50 + 5], 16 + Math.trunc((Math.log(40 / 16) / Math.log(128 / 16)) * 16));
});

test('the distill-step-by-step loss is alpha times the label loss plus 1 - alpha times the rationale loss', (t) => {
  const model = T5Model.init(tinyConfig(), 7);
  const batch = {
    source: padBatch(ids(4, 10, 10)),
    labels: padBatch([...ids(2, 3, 11), ...ids(2, 2, 12).map((r) => [...r, 0])]),
    explainSource: padBatch(ids(4, 10, 13)),
    rationales: padBatch(ids(4, 9, 14)),
  };
  for (const alpha of [0.5, 0.2, 1]) {
    const [total, label, rationale] = tf.tidy(() => {
      const combined = batchLoss(model, batch, alpha);
      return [
        combined.total.dataSync()[0],
        model.loss(batch.source, batch.labels).dataSync()[0],
        model.loss(batch.explainSource, batch.rationales).dataSync()[0],
      ];
    });
    t.true(Math.abs(total - (alpha * label + (1 - alpha) * rationale)) < 1e-5, `alpha ${alpha}`);
  }
  model.dispose();
});

test('the paired passes (one encoder pass over both sources) give each pass its own loss and gradients', (t) => {
  const model = T5Model.init(tinyConfig(), 9);
  // Sources of different lengths, with padded rows in each: the shorter batch is padded to the longer inside.
  const source = padBatch([...ids(2, 7, 21), ...ids(1, 5, 22)]);
  const labels = padBatch([...ids(2, 3, 23), ...ids(1, 2, 24)]);
  const explainSource = padBatch([...ids(1, 10, 25), ...ids(2, 8, 26)]);
  const rationales = padBatch([...ids(2, 9, 27), ...ids(1, 6, 28)]);
  const variables = [...model.variables.values()];
  const lossAndGrads = (f: () => tf.Scalar) =>
    tf.tidy(() => {
      const { value, grads } = tf.variableGrads(f, variables);
      return { value: value.dataSync()[0], grads: variables.map((v) => grads[v.name].dataSync()) };
    });
  for (const alpha of [0.5, 0.3]) {
    const paired = lossAndGrads(() => {
      const [label, rationale] = model.pairLoss(
        { source, labels, opts: {} },
        { source: explainSource, labels: rationales, opts: {} }
      );
      return tf.add(tf.mul(label, alpha), tf.mul(rationale, 1 - alpha)) as tf.Scalar;
    });
    const separate = lossAndGrads(
      () =>
        tf.add(
          tf.mul(model.loss(source, labels), alpha),
          tf.mul(model.loss(explainSource, rationales), 1 - alpha)
        ) as tf.Scalar
    );
    t.true(Math.abs(paired.value - separate.value) < 1e-5, `alpha ${alpha}: ${paired.value} vs ${separate.value}`);
    let worst = 0;
    variables.forEach((v, i) => {
      const [a, b] = [paired.grads[i], separate.grads[i]];
      const scale = Math.max(1e-3, ...Array.from(b, Math.abs));
      for (let j = 0; j < a.length; j++) worst = Math.max(worst, Math.abs(a[j] - b[j]) / scale);
    });
    t.true(worst < 1e-4, `alpha ${alpha}: gradients differ by ${worst} of their largest entry`);
  }
  t.throws(() => model.pairLoss({ source, labels, opts: {} }, { source: padBatch(ids(2, 4, 29)), labels, opts: {} }), {
    message: /same rows/,
  });
  tf.dispose([source, labels, explainSource, rationales]);
  model.dispose();
});

test('the loss is the mean over non-pad label tokens only', (t) => {
  const model = T5Model.init(tinyConfig(), 8);
  const source = padBatch(ids(2, 6, 15));
  const [short, long] = ids(2, 4, 16);
  // Row 0 has 2 real tokens, row 1 has 4: the batch loss weighs every real token equally.
  const [batchMean, perToken] = tf.tidy(() => {
    const labels = padBatch([short.slice(0, 2), long]);
    const logits = model.forward(source, shiftRight(labels, 0));
    const logp = tf.logSoftmax(logits);
    const picked = tf.sum(tf.mul(logp, tf.oneHot(labels, VOCAB)), -1).arraySync() as number[][];
    const real = [picked[0][0], picked[0][1], ...picked[1]].map((x) => -x);
    return [model.loss(source, labels).dataSync()[0], real.reduce((a, b) => a + b, 0) / real.length];
  });
  t.true(Math.abs(batchMean - perToken) < 1e-4, `${batchMean} vs ${perToken}`);
  model.dispose();
});

test('a checkpoint round trip gives identical logits, config, tokenizer and training metadata', async (t) => {
  const tokenizer = await trainTokenizer(['the cat sat on the mat', 'a dog ran in the park', 'positive', 'negative']);
  for (const tie of [true, false]) {
    const config = makeConfig('tiny', tokenizer.vocabSize, { tie_word_embeddings: tie });
    const model = T5Model.init(config, 11);
    const training = { method: 'distill-step-by-step', alpha: 0.5, steps: 0, backend: tf.getBackend() };
    const bytes = serializeCheckpoint(model, tokenizer, training);
    const loaded = loadCheckpoint(bytes);
    const source = padBatch([tokenizer.encode('the cat ran'), tokenizer.encode('a dog sat on the mat')]);
    const decoder = padBatch([
      [0, 5, 6],
      [0, 7, 8],
    ]);
    const [before, after] = tf.tidy(() => [
      model.forward(source, decoder).dataSync(),
      loaded.model.forward(source, decoder).dataSync(),
    ]);
    t.deepEqual(Array.from(after), Array.from(before));
    t.deepEqual(loaded.config, config);
    t.deepEqual(loaded.training, training);
    t.is(loaded.tokenizer.toJSON(), tokenizer.toJSON());
    t.deepEqual(readCheckpointMeta(bytes).training, training);
    model.dispose();
    loaded.model.dispose();
  }
});

test('a checkpoint is standard safetensors: aligned header, F32 tensors in HF layout, string metadata', (t) => {
  const config = tinyConfig({ tie_word_embeddings: false });
  const model = T5Model.init(config, 12);
  const fakeTokenizer = {
    toJSON: () => '{}',
  } as unknown as Parameters<typeof serializeCheckpoint>[1];
  const bytes = serializeCheckpoint(model, fakeTokenizer, {
    method: 'standard-finetune',
    alpha: 1,
    steps: 0,
    backend: 'x',
  });
  const headerLength = Number(bytes.readBigUInt64LE(0));
  t.is((8 + headerLength) % 8, 0);
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  for (const value of Object.values(header.__metadata__)) t.is(typeof value, 'string');
  // torch.nn.Linear keeps [out, in]: q maps d_model to heads·d_kv.
  t.deepEqual(header['encoder.block.0.layer.0.SelfAttention.q.weight'].shape, [
    config.num_heads * config.d_kv,
    config.d_model,
  ]);
  t.deepEqual(header['lm_head.weight'].shape, [VOCAB, config.d_model]);
  t.is(header['shared.weight'].dtype, 'F32');
  // Offsets tile the data section exactly, as safetensors readers require.
  const spans = Object.entries(header)
    .filter(([k]) => k !== '__metadata__')
    .map(([, v]) => (v as { data_offsets: [number, number] }).data_offsets)
    .sort((a, b) => a[0] - b[0]);
  t.is(spans[0][0], 0);
  for (let i = 1; i < spans.length; i++) t.is(spans[i][0], spans[i - 1][1]);
  t.is(spans[spans.length - 1][1], bytes.length - 8 - headerLength);
  // The stored q weight is the transpose of the variable (kept [in, out] for the forward pass).
  const stored = decodeSafetensors(bytes).weights.find(
    (w) => w.name === 'encoder.block.0.layer.0.SelfAttention.q.weight'
  )!;
  const variable = model.variables.get('encoder.block.0.layer.0.SelfAttention.q.weight')!;
  const transposed = tf.tidy(() => tf.transpose(variable).dataSync());
  t.deepEqual(Array.from(stored.data), Array.from(transposed));
  model.dispose();
});

test('a damaged or foreign checkpoint is rejected with an InputError', (t) => {
  t.throws(() => loadCheckpoint(Buffer.from('nope')), { instanceOf: InputError, message: /safetensors/ });
  const header = Buffer.from(JSON.stringify({ __metadata__: { format: 'pt' } }));
  const lengthBytes = Buffer.alloc(8);
  lengthBytes.writeBigUInt64LE(BigInt(header.length));
  t.throws(() => loadCheckpoint(Buffer.concat([lengthBytes, header])), { instanceOf: InputError, message: /config/ });
});

test('presets have the t5-v1_1 shapes and the tiny one stays tiny', (t) => {
  t.deepEqual(
    [PRESETS.small.d_model, PRESETS.small.d_ff, PRESETS.small.num_layers, PRESETS.small.num_heads],
    [512, 1024, 8, 6]
  );
  t.deepEqual([PRESETS.base.d_model, PRESETS.base.num_layers, PRESETS.base.num_heads], [768, 12, 12]);
  t.deepEqual([PRESETS.large.d_model, PRESETS.large.num_layers, PRESETS.large.num_heads], [1024, 24, 16]);
  // Heads: tiny keeps the rescaled tied head, the t5-v1_1 sizes a separate unscaled lm_head.
  for (const preset of ['tiny', 'small', 'base', 'large'] as const) {
    const { tie_word_embeddings, scale_decoder_outputs } = makeConfig(preset, 1000);
    t.deepEqual([tie_word_embeddings, scale_decoder_outputs], preset === 'tiny' ? [true, true] : [false, false]);
  }
  t.true(paramSpecs(makeConfig('tiny', 1000)).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0) < 1e6);
  t.throws(() => makeConfig('huge' as never, 10), { instanceOf: InputError, message: /preset/ });
  t.throws(() => makeConfig('tiny', 10, { num_heads: 0 }), { instanceOf: InputError, message: /num_heads/ });
});

test('a tied head without the rescale exports as an explicit lm_head that transformers 4 and 5 read alike', async (t) => {
  const tokenizer = await trainTokenizer(['the cat sat on the mat', 'a dog ran in the park', 'positive', 'negative']);
  const config = makeConfig('tiny', tokenizer.vocabSize, { scale_decoder_outputs: false });
  const model = T5Model.init(config, 2);
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-export-'));
  try {
    await exportT5({ model, tokenizer }, dir);
    const hf = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    t.like(hf, { tie_word_embeddings: false, scale_decoder_outputs: false });
    const weights = readSafetensorsAnyFloat(await readFile(join(dir, 'model.safetensors')));
    const shared = weights.find((w) => w.name === 'shared.weight')!;
    const head = weights.find((w) => w.name === 'lm_head.weight')!;
    t.truthy(head, 'lm_head.weight is written');
    t.deepEqual(Array.from(head.data), Array.from(shared.data));
  } finally {
    model.dispose();
    await rm(dir, { recursive: true, force: true });
  }
});
