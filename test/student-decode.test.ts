/**
 * Decoding: the key/value-cached decoder against the full forward pass, greedy and beam search against what
 * transformers' `generate` produced for the committed test vectors (test/fixtures/t5-tiny), and the text-level API.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../lib/errors';
import { initBackend } from '../lib/student/backend';
import { makeConfig } from '../lib/student/config';
import { beamSearch, beamSearchIds, greedyDecode, greedyIds } from '../lib/student/decode';
import { importT5, type ImportedT5 } from '../lib/student/hf';
import { padBatch } from '../lib/student/loss';
import { NativeDecoder, nativeHandleCount } from '../lib/student/native-decode';
import { T5Model } from '../lib/student/t5';
import { tf } from '../lib/student/tf';

const FIXTURES = join(__dirname, 'fixtures', 't5-tiny');

interface BeamSetting {
  num_beams: number;
  max_new_tokens: number;
  length_penalty: number;
  early_stopping: boolean;
  sequences: number[][];
  scores: number[];
}

interface Vector {
  input_ids: number[][];
  greedy: { max_new_tokens: number; sequences: number[][] };
  beams: BeamSetting[];
}

const fixtures: Record<string, { imported: ImportedT5; vector: Vector }> = {};

test.before(async () => {
  await initBackend('auto');
  for (const variant of ['v1_1', 'original']) {
    const vector = JSON.parse(await readFile(join(FIXTURES, variant, 'vector.json'), 'utf8')) as Vector;
    fixtures[variant] = { imported: await importT5(join(FIXTURES, variant)), vector };
  }
});
test.after.always(() => {
  for (const f of Object.values(fixtures)) f.imported.model.dispose();
});

/** The vector's sources without their padding, as the tokenizer gave them (each ending in eos). */
const sourcesOf = (v: Vector) => v.input_ids.map((row) => row.filter((id) => id !== 0));

/** An HF `generate` row → generated ids without the start token, cut before eos. */
function generated(sequence: number[], eos = 1): number[] {
  const ids = sequence.slice(1);
  const end = ids.indexOf(eos);
  return end >= 0 ? ids.slice(0, end) : ids;
}

/** Deterministic pseudo-random token ids in [3, vocab), ending with eos: varied lengths for a padded batch. */
function randomSources(rows: number, vocab: number, salt: number): number[][] {
  return Array.from({ length: rows }, (_, r) => {
    const length = 4 + ((r * 7 + salt) % 13);
    return [...Array.from({ length }, (_, c) => 3 + ((r * 7919 + c * 104729 + salt * 15485863) % (vocab - 3))), 1];
  });
}

for (const variant of ['v1_1', 'original']) {
  test(`greedy decoding with and without the cache gives the tokens transformers generates (${variant})`, (t) => {
    const { imported, vector } = fixtures[variant];
    const expected = vector.greedy.sequences.map((s) => generated(s));
    const opts = { maxLength: vector.greedy.max_new_tokens };
    t.deepEqual(greedyIds(imported.model, sourcesOf(vector), opts), expected);
    t.deepEqual(greedyIds(imported.model, sourcesOf(vector), { ...opts, useCache: false }), expected);
  });

  test(`beam search gives transformers' sequences and scores in every setting (${variant})`, (t) => {
    const { imported, vector } = fixtures[variant];
    for (const b of vector.beams) {
      const setting = `num_beams ${b.num_beams}, length_penalty ${b.length_penalty}, early_stopping ${b.early_stopping}`;
      const ours = beamSearchIds(imported.model, sourcesOf(vector), {
        maxLength: b.max_new_tokens,
        numBeams: b.num_beams,
        lengthPenalty: b.length_penalty,
        earlyStopping: b.early_stopping,
      }).flat();
      t.deepEqual(
        ours.map((h) => h.ids),
        b.sequences.map((s) => generated(s)),
        setting
      );
      ours.forEach((h, i) =>
        t.true(Math.abs(h.score - b.scores[i]) <= 1e-4, `${setting}: ${h.score} vs ${b.scores[i]}`)
      );
      t.deepEqual(
        ours.map((h) => h.finished),
        b.sequences.map((s) => s.slice(1).includes(1)),
        setting
      );
    }
  });
}

test('a cached decoder step gives the logits of the full forward pass at that position', (t) => {
  const model = T5Model.init(makeConfig('tiny', 300, { tie_word_embeddings: false }), 5);
  try {
    const sources = randomSources(3, 300, 1);
    const targets = randomSources(3, 300, 2).map((s) => [0, ...s.slice(0, 6)]); // [B, 7] decoder inputs
    const maxDiff = tf.tidy(() => {
      const source = padBatch(sources);
      const full = model.forward(source, tf.tensor2d(targets, undefined, 'int32')); // [B, 7, V]
      const cache = model.startDecoding(model.encode(source));
      const steps: tf.Tensor[] = [];
      try {
        for (let position = 0; position < 7; position++) {
          const ids = tf.tensor2d(
            targets.map((row) => [row[position]]),
            [3, 1],
            'int32'
          );
          steps.push(model.logits(model.decodeStep(cache, ids)));
        }
      } finally {
        cache.dispose();
      }
      return tf.max(tf.abs(tf.sub(tf.concat(steps, 1), full))).dataSync()[0];
    });
    t.true(maxDiff < 1e-4, `max abs difference ${maxDiff}`);
  } finally {
    model.dispose();
  }
});

test('cached greedy decoding gives the same tokens as recomputing the whole prefix, for a padded batch', (t) => {
  // The v1.1 fixture ends rows at different steps (finished rows leave the cached batch); the random models do not.
  const fixture = fixtures.v1_1.imported.model;
  const sources = randomSources(8, 80, 7);
  const lengths = greedyIds(fixture, sources, { maxLength: 20 }).map((ids) => ids.length);
  t.true(new Set(lengths).size >= 4, `rows end at different steps: ${lengths}`);
  t.deepEqual(
    greedyIds(fixture, sources, { maxLength: 20, useCache: false }),
    greedyIds(fixture, sources, { maxLength: 20 })
  );
  for (const tie of [true, false]) {
    const model = T5Model.init(makeConfig('tiny', 300, { tie_word_embeddings: tie }), 11);
    try {
      const sources = randomSources(6, 300, 3);
      const cached = greedyIds(model, sources, { maxLength: 24 });
      t.deepEqual(greedyIds(model, sources, { maxLength: 24, useCache: false }), cached);
      t.true(
        cached.some((ids) => ids.length > 5),
        'the test decodes more than a few tokens'
      );
    } finally {
      model.dispose();
    }
  }
});

test('beam search with one beam and early stopping is greedy decoding', (t) => {
  const model = T5Model.init(makeConfig('tiny', 300), 12);
  try {
    const sources = randomSources(5, 300, 4);
    const beams = beamSearchIds(model, sources, { maxLength: 16, numBeams: 1, earlyStopping: true });
    t.deepEqual(
      beams.map((b) => b[0].ids),
      greedyIds(model, sources, { maxLength: 16 })
    );
    const { imported, vector } = fixtures.v1_1;
    const fixtureBeams = beamSearchIds(imported.model, sourcesOf(vector), {
      maxLength: 8,
      numBeams: 1,
      earlyStopping: true,
    });
    t.deepEqual(
      fixtureBeams.map((b) => b[0].ids),
      vector.greedy.sequences.map((s) => generated(s))
    );
  } finally {
    model.dispose();
  }
});

/** sum(log p(ids + eos-if-finished)) / length^penalty, by teacher forcing: the score beam search gives a sequence. */
function sequenceScore(model: T5Model, source: number[], ids: number[], finished: boolean, penalty: number): number {
  const target = finished ? [...ids, model.config.eos_token_id] : ids;
  return tf.tidy(() => {
    const logits = model.forward(
      tf.tensor2d([source], undefined, 'int32'),
      tf.tensor2d([[model.config.decoder_start_token_id, ...target.slice(0, -1)]], undefined, 'int32')
    );
    const logProbs = tf.logSoftmax(logits).arraySync()[0];
    return target.reduce((sum, id, i) => sum + logProbs[i][id], 0) / target.length ** penalty;
  });
}

test('beam search finds higher-scoring sequences than greedy decoding, and returns them best first', (t) => {
  const { imported, vector } = fixtures.v1_1;
  const sources = sourcesOf(vector);
  const greedy = greedyIds(imported.model, sources, { maxLength: 8 });
  const beams = beamSearchIds(imported.model, sources, { maxLength: 8, numBeams: 3, earlyStopping: true });
  sources.forEach((source, row) => {
    const finished = greedy[row].length < 8;
    const greedyScore = sequenceScore(imported.model, source, greedy[row], finished, 1);
    const best = beams[row][0];
    // The score beam search reports is the sequence's own score under the model.
    t.true(Math.abs(sequenceScore(imported.model, source, best.ids, best.finished, 1) - best.score) < 1e-4);
    t.true(best.score > greedyScore, `row ${row}: beam ${best.score} vs greedy ${greedyScore}`);
    t.notDeepEqual(best.ids, greedy[row]);
    for (let i = 1; i < beams[row].length; i++) t.true(beams[row][i - 1].score >= beams[row][i].score);
  });
});

test('greedyDecode and beamSearch decode texts in input order, with numBeams and numReturnSequences', async (t) => {
  const { imported } = fixtures.v1_1;
  const { model, tokenizer } = imported;
  const inputs = ['the student learns', 'a', 'rationales explain why the answer is right', 'step by step'];
  const opts = { maxLength: 10, batchSize: 3 };
  const greedy = await greedyDecode(model, tokenizer, inputs, opts);
  const one = await Promise.all(inputs.map(async (text) => (await greedyDecode(model, tokenizer, [text], opts))[0]));
  t.deepEqual(greedy, one, 'batching and sorting by length do not change the outputs');
  t.deepEqual(await greedyDecode(model, tokenizer, inputs, { ...opts, useCache: false }), greedy);
  const beams = await beamSearch(model, tokenizer, inputs, { ...opts, numBeams: 3, numReturnSequences: 2 });
  t.deepEqual(
    beams.map((b) => b.length),
    [2, 2, 2, 2]
  );
  t.deepEqual(
    await greedyDecode(model, tokenizer, inputs, { ...opts, numBeams: 3 }),
    beams.map((b) => b[0].text)
  );
  for (const b of beams) t.true(b[0].score >= b[1].score);
});

test.serial('decoding leaves no tensors behind', async (t) => {
  const { imported } = fixtures.v1_1;
  const sources = randomSources(4, imported.config.vocab_size, 5);
  const decodeAll = async () => {
    greedyIds(imported.model, sources, { maxLength: 12 });
    greedyIds(imported.model, sources, { maxLength: 12, minLength: 12 });
    greedyIds(imported.model, sources, { maxLength: 12, useCache: false });
    beamSearchIds(imported.model, sources, { maxLength: 12, numBeams: 3 });
    await greedyDecode(imported.model, imported.tokenizer, ['a b c', 'the'], {
      maxLength: 5,
      batchSize: 1,
      numBeams: 2,
    });
  };
  // Warm-up: backends may allocate once, and tfjs-node gives a tensor made from values its TensorFlow handle only
  // when an op first reads it (and keeps a few handles per new shape of its own).
  await decodeAll();
  const before = tf.memory().numTensors;
  // The native decoder's intermediate results are TensorFlow handles tfjs does not count.
  const handlesBefore = nativeHandleCount();
  await decodeAll();
  t.is(tf.memory().numTensors, before);
  t.is(nativeHandleCount(), handlesBefore);
});

test('minLength keeps eos out until that many tokens are generated, with and without the cache', (t) => {
  // The v1.1 fixture ends rows at different steps, so eos is often the best token.
  const model = fixtures.v1_1.imported.model;
  const sources = randomSources(8, 80, 7);
  const free = greedyIds(model, sources, { maxLength: 20 });
  t.true(
    free.some((ids) => ids.length < 6),
    'some rows stop early without minLength'
  );
  const forced = greedyIds(model, sources, { maxLength: 20, minLength: 20 });
  t.deepEqual(
    forced.map((ids) => ids.length),
    Array<number>(8).fill(20)
  );
  t.false(forced.some((ids) => ids.includes(model.config.eos_token_id)));
  t.deepEqual(greedyIds(model, sources, { maxLength: 20, minLength: 20, useCache: false }), forced);
  // Rows that ran past minLength anyway decode exactly as without it.
  const six = greedyIds(model, sources, { maxLength: 20, minLength: 6 });
  free.forEach((ids, row) => {
    if (ids.length >= 6) t.deepEqual(six[row], ids);
    else t.true(six[row].length >= 6);
  });
  for (const hypotheses of beamSearchIds(model, sources, { maxLength: 12, minLength: 5, numBeams: 3 })) {
    for (const h of hypotheses) t.true(h.ids.length + (h.finished ? 1 : 0) >= 5, `${h.ids.length} tokens`);
  }
});

test('the native decoder gives the key/value cache logits at every step, through row selection and reordering', (t) => {
  if (nativeHandleCount() === undefined) {
    t.pass('not on native TensorFlow: decoding uses the key/value cache alone');
    return;
  }
  const shapes = [
    { tie_word_embeddings: true },
    { tie_word_embeddings: false },
    { tie_word_embeddings: true, scale_decoder_outputs: false },
    { feed_forward_proj: 'relu' as const },
  ];
  for (const overrides of shapes) {
    const model = T5Model.init(makeConfig('tiny', 300, overrides), 21);
    try {
      const sources = randomSources(4, 300, 9);
      const maxDiff = tf.tidy(() => {
        const source = padBatch(sources);
        const encoded = model.encode(source);
        const cache = model.startDecoding(encoded);
        const native = NativeDecoder.start(model, encoded, 6)!;
        let worst = 0;
        try {
          // Rows: 4, then 6 (rows copied, as beams start), reordered, then 3 kept.
          const moves: [string, number[]][] = [
            ['select', [0, 0, 1, 2, 3, 3]],
            ['reorder', [1, 0, 2, 5, 4, 3]],
            ['select', [5, 0, 2]],
          ];
          let tokens = sources.map((_, i) => 3 + i);
          for (let step = 0; step < 6; step++) {
            const expected = tf.reshape(
              model.logits(model.decodeStep(cache, tf.tensor2d(tokens, [tokens.length, 1], 'int32'))),
              [tokens.length, 300]
            );
            const actual = native.logits(tokens);
            worst = Math.max(worst, tf.max(tf.abs(tf.sub(actual, expected))).dataSync()[0]);
            const move = moves[step];
            if (move) {
              const [kind, rows] = move;
              if (kind === 'select') {
                cache.select(rows);
                native.select(rows);
              } else {
                cache.reorder(rows);
                native.reorder(rows);
              }
              tokens = rows.map((r) => 5 + r + step);
            } else {
              tokens = tokens.map((x) => x + 1);
            }
          }
        } finally {
          cache.dispose();
          native.dispose();
        }
        return worst;
      });
      t.true(maxDiff < 1e-4, `${JSON.stringify(overrides)}: max abs difference ${maxDiff}`);
    } finally {
      model.dispose();
    }
  }
});

test('bad decoding options are rejected with an InputError naming the option', async (t) => {
  const { model, tokenizer } = fixtures.original.imported;
  const rejects = async (opts: Record<string, unknown>, field: string) => {
    const err = await t.throwsAsync(
      beamSearch(model, tokenizer, ['a'], { maxLength: 4, batchSize: 2, ...opts } as never),
      { instanceOf: InputError }
    );
    t.is(err!.field, field);
  };
  await rejects({ maxLength: 0 }, 'maxLength');
  await rejects({ minLength: 5 }, 'minLength');
  await rejects({ batchSize: 0 }, 'batchSize');
  await rejects({ numBeams: 1.5 }, 'numBeams');
  await rejects({ numBeams: 2, numReturnSequences: 3 }, 'numReturnSequences');
  await rejects({ lengthPenalty: Number.NaN }, 'lengthPenalty');
});
