import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../lib/errors';
import { demoSpec, parseSpec, SpecError } from '../lib/pipeline/spec';
import { DEFAULT_RATIONALE_CHECKS } from '../lib/data/rationale-checks';

test('the demo spec validates and gets every default filled in', (t) => {
  const spec = parseSpec(demoSpec());
  t.is(spec.student.method, 'distill-step-by-step');
  t.is(spec.student.alpha, 0.5);
  t.is(spec.sample.validFraction, 0.1);
  t.is(spec.data.kind, 'demo');
});

const bad: [string, Record<string, unknown>, RegExp][] = [
  ['name', { name: 'Has Spaces' }, /spec\.name: got "Has Spaces"/],
  ['data', { data: { kind: 'parquet' } }, /spec\.data\.kind: got "parquet"/],
  ['sample', { sample: { fraction: 0 } }, /spec\.sample\.fraction: got 0, .*>0/],
  ['teacher', { teacher: { kind: 'openai', url: 'not a url', model: 'm' } }, /spec\.teacher\.url: got "not a url"/],
  ['student', { student: { alpha: 1.5 } }, /spec\.student\.alpha: got 1\.5, .*<=1/],
  ['evaluate', { evaluate: { maxLength: 0 } }, /spec\.evaluate\.maxLength: got 0/],
  ['evaluate.split', { evaluate: { split: 'train' } }, /spec\.evaluate\.split: got "train"/],
  ['student.config.d_model', { student: { config: { d_model: 0 } } }, /spec\.student\.config\.d_model: got 0/],
  ['student.config', { student: { config: { vocab_size: 10 } } }, /spec\.student\.config.*vocab_size/],
  [
    'student.config.dropout_rate',
    { student: { config: { dropout_rate: 1 } } },
    /spec\.student\.config\.dropout_rate: got 1/,
  ],
  [
    'student.config.scale_decoder_outputs',
    { student: { config: { tie_word_embeddings: false, scale_decoder_outputs: true } } },
    /spec\.student\.config\.scale_decoder_outputs: got true, only a tied head is rescaled/,
  ],
  [
    'student.config',
    { student: { init: 'm@champion', config: { d_model: 128 } } },
    /spec\.student\.config: .*init checkpoint brings its own config/,
  ],
  ['student.vocabSize', { student: { vocabSize: 4 } }, /spec\.student\.vocabSize: got 4/],
];

for (const [field, patch, message] of bad) {
  test(`a bad ${field} (${JSON.stringify(patch).slice(0, 60)}) is rejected with the field, the value and what was expected`, (t) => {
    const err = t.throws(() => parseSpec({ ...demoSpec(), ...patch }), { instanceOf: SpecError });
    t.regex(err!.message, message);
    t.true(err!.issues.some((i) => i.field.startsWith(field)));
  });
}

test('unknown fields are rejected rather than silently ignored', (t) => {
  const err = t.throws(() => parseSpec({ ...demoSpec(), student: { stesp: 10 } }), { instanceOf: SpecError });
  t.regex(err!.message, /spec\.student/);
  t.regex(err!.message, /stesp/);
});

test('the scripted teacher is refused for data it cannot answer', (t) => {
  const err = t.throws(
    () => parseSpec({ name: 'x1', data: { kind: 'reference', dir: '/d', task: 'cqa' }, teacher: { kind: 'scripted' } }),
    { instanceOf: SpecError }
  );
  t.regex(err!.message, /spec\.teacher\.kind/);
});

test('the validate section defaults to what the paper keeps: only empty rationales are dropped', (t) => {
  const spec = parseSpec(demoSpec());
  t.deepEqual(spec.validate, { ...DEFAULT_RATIONALE_CHECKS });
  const strict = parseSpec({ ...demoSpec(), validate: { minRationaleChars: 20, maxRationaleChars: 2000 } });
  t.like(strict.validate, { minRationaleChars: 20, maxRationaleChars: 2000, dropLabelMismatch: false });
});

test('a validate section whose length limits cross is rejected, naming maxRationaleChars', (t) => {
  const err = t.throws(() => parseSpec({ ...demoSpec(), validate: { minRationaleChars: 50, maxRationaleChars: 10 } }), {
    instanceOf: SpecError,
  });
  t.regex(err!.message, /spec\.validate\.maxRationaleChars: got 10, must be at least validate\.minRationaleChars/);
  t.throws(() => parseSpec({ ...demoSpec(), validate: { dropMismatch: true } }), { message: /spec\.validate/ });
});

test('a SpecError is an InputError naming its first field, so every caller treats it as bad input', (t) => {
  const err = t.throws(() => parseSpec({ ...demoSpec(), student: { alpha: 2, steps: -1 } }), {
    instanceOf: InputError,
  });
  t.true(err instanceof SpecError);
  t.is(err!.field, 'student.alpha');
  t.regex(err!.message, /spec\.student\.alpha: got 2.*; spec\.student\.steps: got -1/);
});

test('an unknown field is named by its full path at every depth', (t) => {
  const deep = {
    name: 'd',
    data: { kind: 'demo' },
    teacher: { kind: 'scripted', price: { inputPerMillionTokens: 1, outputPerMillionTokens: 2, perCall: 3 } },
  };
  const err = t.throws(() => parseSpec(deep), { instanceOf: SpecError });
  t.deepEqual(
    err!.issues.map((i) => i.field),
    ['teacher.price.perCall']
  );
});

test('the specs in the committed replay histories still parse (old runs replay with today’s parser)', (t) => {
  const history = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'pipeline-history.json'), 'utf8'));
  const started = history.events[0].workflowExecutionStartedEventAttributes;
  const spec = JSON.parse(Buffer.from(started.input.payloads[0].data, 'base64').toString('utf8'));
  t.like(parseSpec(spec), { name: spec.name, data: { kind: 'demo' } });
});

test('a JSONL dataset may name an id field, which the loader then checks for duplicates', (t) => {
  const spec = parseSpec({
    name: 'ids',
    data: { kind: 'jsonl', train: 'a.jsonl', test: 'b.jsonl', idField: 'uid' },
    teacher: { kind: 'openai', url: 'http://127.0.0.1:1/v1', model: 'm' },
  });
  t.like(spec.data, { kind: 'jsonl', idField: 'uid' });
});
