/**
 * A student shape of one's own: `student.config` and `student.vocabSize` from the spec to `train()`, the shape
 * `train()` builds from them (counted independently of paramSpecs), the resolved config it reports for the lineage,
 * and checkpoints written before `scale_decoder_outputs` existed loading as the rescaled tied head they meant.
 */
import test from 'ava';
import { canonicalJson } from '../lib/pipeline/run-identity';
import { demoSpec, parseSpec } from '../lib/pipeline/spec';
import { initBackend } from '../lib/student/backend';
import { loadCheckpoint, serializeCheckpoint } from '../lib/student/checkpoint';
import { makeConfig, type T5Config } from '../lib/student/config';
import { studentOptionsOf } from '../lib/student/options';
import { padBatch } from '../lib/student/loss';
import { mulberry32, shiftRight, T5Model } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import { trainTokenizer } from '../lib/student/tokenizer';
import { parseTrainOptions, train } from '../lib/student/train';
import type { TrainRecord } from '../lib/student/pairs';

test.before(async () => {
  await initBackend('auto');
});

/** A shape no preset has: d_model ≠ heads × d_kv (T5 allows it), 1 + 2 layers, ReLU, an unscaled tied head. */
const SHAPE = {
  d_model: 40,
  d_ff: 56,
  d_kv: 8,
  num_heads: 3,
  num_layers: 1,
  num_decoder_layers: 2,
  feed_forward_proj: 'relu',
  tie_word_embeddings: true,
  scale_decoder_outputs: false,
  dropout_rate: 0.1,
  relative_attention_num_buckets: 8,
  relative_attention_max_distance: 20,
} as const;

test('the spec carries student.config and vocabSize to train(); a spec without them keeps its canonical form', (t) => {
  const spec = parseSpec({ ...demoSpec(), student: { config: SHAPE, vocabSize: 300 } });
  const options = studentOptionsOf(spec.student);
  t.deepEqual(options.config, SHAPE);
  t.is(options.vocabSize, 300);
  // Unset, neither appears in the canonical JSON the run id hashes, so existing run ids do not move.
  const plain = canonicalJson(parseSpec(demoSpec()));
  t.false(plain.includes('"config"') || plain.includes('"vocabSize"'), plain);
  t.is(plain, canonicalJson(parseSpec({ ...demoSpec(), student: {} })));
  t.false('config' in studentOptionsOf(parseSpec(demoSpec()).student));
});

function records(n: number): TrainRecord[] {
  const random = mulberry32(5);
  const words = ['red', 'blue', 'green', 'tall', 'short', 'cat', 'dog', 'tree', 'lake', 'hill'];
  return Array.from({ length: n }, () => {
    const text = Array.from({ length: 6 }, () => words[Math.floor(random() * words.length)]).join(' ');
    const label = text.includes('cat') ? 'yes' : 'no';
    return { input: text, goldLabel: label, teacherLabel: label, rationale: `${text} so ${label}` };
  });
}

/** The parameter count of a T5 with this config, from the architecture rather than from paramSpecs. */
function expectedParams(c: T5Config): number {
  const { d_model: D, d_ff: F, d_kv: K, num_heads: H, vocab_size: V } = c;
  const attention = 4 * D * H * K; // q, k, v: [H·K, D]; o: [D, H·K]
  const ffn = (c.feed_forward_proj === 'gated-gelu' ? 3 : 2) * D * F;
  const bias = c.relative_attention_num_buckets * H; // first block of each stack only
  const encoder = c.num_layers * (attention + ffn + 2 * D) + bias + D;
  const decoder = c.num_decoder_layers * (2 * attention + ffn + 3 * D) + bias + D;
  return V * D + encoder + decoder + (c.tie_word_embeddings ? 0 : V * D);
}

test('train() with student.config builds that shape and reports the full resolved config', async (t) => {
  const result = await train(
    records(24),
    parseTrainOptions({
      method: 'distill-step-by-step',
      config: SHAPE,
      vocabSize: 120,
      steps: 2,
      batchSize: 4,
      maxInputLength: 16,
      maxTargetLength: 4,
      maxRationaleLength: 12,
      checkpointEvery: 1000,
    })
  );
  const expected: T5Config = { ...makeConfig('tiny', result.tokenizerVocab), ...SHAPE };
  t.deepEqual(result.config, expected, 'the preset with every override, and the tokenizer’s vocabulary');
  t.true(result.tokenizerVocab <= 120);
  t.is(result.params, expectedParams(expected));
  const saved = loadCheckpoint(result.checkpoint);
  try {
    t.deepEqual(saved.config, expected, 'the checkpoint holds the same config');
    t.is(saved.model.parameterCount, expectedParams(expected));
    t.false(saved.model.variables.has('lm_head.weight'), 'one matrix for the embeddings and the head');
  } finally {
    saved.model.dispose();
  }
  // The untied variant adds exactly one vocabulary-sized matrix.
  const untied = makeConfig('tiny', 120, { ...SHAPE, tie_word_embeddings: false });
  t.is(expectedParams(untied) - expectedParams({ ...untied, tie_word_embeddings: true }), 120 * SHAPE.d_model);
  t.false(untied.scale_decoder_outputs);
});

test('a checkpoint written before scale_decoder_outputs existed loads as the rescaled tied head, logits h·d^-0.5·Eᵀ', async (t) => {
  const tokenizer = await trainTokenizer(['the cat sat on the mat', 'a dog ran in the park', 'yes', 'no']);
  const { scale_decoder_outputs: _, ...old } = makeConfig('tiny', tokenizer.vocabSize);
  const before = T5Model.init(old, 6);
  const bytes = serializeCheckpoint(before, tokenizer, {
    method: 'standard-finetune',
    alpha: 0.5,
    steps: 0,
    backend: 'x',
  });
  const loaded = loadCheckpoint(bytes);
  const source = padBatch([
    [5, 6, 7, 1],
    [8, 9, 1],
  ]);
  const labels = padBatch([
    [10, 1],
    [11, 12, 1],
  ]);
  try {
    t.false('scale_decoder_outputs' in loaded.config, 'the stored config is read as written');
    const [hidden, logits, original] = tf.tidy(() => {
      const h = loaded.model.decode(loaded.model.encode(source), shiftRight(labels, 0));
      return [
        h.dataSync() as Float32Array,
        loaded.model.logits(h).dataSync() as Float32Array,
        before.forward(source, shiftRight(labels, 0)).dataSync() as Float32Array,
      ];
    });
    t.deepEqual(Array.from(logits), Array.from(original), 'the same logits as before it was saved');
    const E = loaded.model.variables.get('shared.weight')!.dataSync() as Float32Array;
    const D = old.d_model;
    const V = tokenizer.vocabSize;
    let worst = 0;
    for (let row = 0; row < hidden.length / D; row++) {
      for (let v = 0; v < V; v++) {
        let dot = 0;
        for (let k = 0; k < D; k++) dot += hidden[row * D + k] * E[v * D + k];
        worst = Math.max(worst, Math.abs(dot * D ** -0.5 - logits[row * V + v]));
      }
    }
    t.true(worst < 1e-4, `largest difference from h·d^-0.5·Eᵀ: ${worst}`);
  } finally {
    before.dispose();
    loaded.model.dispose();
  }
});
