/**
 * Property-based tests (fast-check) of everything that reads user input before a run does any work: the spec parser,
 * the JSON-lines reader and the completion files, and every rationale parser and check. The property is the same
 * throughout: whatever the input, the code either returns a valid value or throws an InputError that names a field;
 * never a TypeError, a RangeError or a hang. Runs are bounded so the file stays well under 30 s.
 */
import test from 'ava';
import fc from 'fast-check';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../lib/errors';
import { demoSpec, parseSpec, PRESETS, SpecError } from '../lib/pipeline/spec';
import { decodeUtf8, parseJsonLines } from '../lib/data/read';
import { loadJsonl } from '../lib/data/jsonl';
import { parseCompletionBatch } from '../lib/data/reference';
import { cutRunOn, parseCompletion } from '../lib/data/parse';
import {
  checkRationale,
  conflictingStatement,
  cqaChoices,
  resolveRationaleChecks,
  statedLabels,
} from '../lib/data/rationale-checks';
import type { TaskKind } from '../lib/data/types';

const TASKS: TaskKind[] = ['cqa', 'svamp', 'esnli', 'anli1', 'demo', 'jsonl'];
const RUNS = { numRuns: 300 };

/** Runs `body`; a throw must be an InputError with a non-empty field, and is returned so a test can look at it. */
function onlyInputErrors<T>(body: () => T): T | InputError {
  try {
    return body();
  } catch (err) {
    if (!(err instanceof InputError)) throw new Error(`threw ${String(err)}, not an InputError`, { cause: err });
    if (typeof err.field !== 'string' || err.field === '')
      throw new Error(`InputError without a field: ${err.message}`);
    return err;
  }
}

async function onlyInputErrorsAsync<T>(body: () => Promise<T>): Promise<T | InputError> {
  try {
    return await body();
  } catch (err) {
    return onlyInputErrors(() => {
      throw err;
    });
  }
}

/** Text made of the pieces the parsers look for, so generated completions reach their deeper branches. */
const completionText = fc
  .array(
    fc.oneof(
      fc.constantFrom(
        'So the answer is ',
        'The answer is ',
        'Answer: ',
        '(a) ',
        '(b)',
        '(',
        ')',
        '.',
        '\n',
        '\n\nQ',
        'Q: ',
        'Premise:',
        'the answer must be ',
        'is correct.',
        'only ',
        ' 3 + 4 ',
        '(12 - 5)',
        'entailment',
        'neutral',
        'contradiction',
        'Answer Choices:\n(a) cat\n(b) dog\n',
        'not ',
        ' '
      ),
      fc.string({ maxLength: 12 }),
      fc.string({ unit: 'grapheme', maxLength: 6 })
    ),
    { maxLength: 24 }
  )
  .map((parts) => parts.join(''));

/** A spec mutated at a random path: a valid spec with one value replaced, one key added or one key removed. */
const mutatedSpec = fc
  .record({
    base: fc.constantFrom<Record<string, unknown>>(
      demoSpec() as Record<string, unknown>,
      { name: 'r', data: { kind: 'reference', dir: '/d', task: 'cqa' }, teacher: { kind: 'replay' } },
      {
        name: 'j',
        data: { kind: 'jsonl', train: 'a.jsonl', test: 'b.jsonl', idField: 'id' },
        teacher: { kind: 'openai', url: 'http://127.0.0.1:1/v1', model: 'm', price: { inputPerMillionTokens: 1 } },
        student: { alpha: 0.3, preset: 'small', steps: 5 },
        validate: { minRationaleChars: 3 },
      }
    ),
    section: fc.constantFrom('name', 'data', 'sample', 'teacher', 'validate', 'student', 'evaluate', 'extra'),
    key: fc.oneof(
      fc.constantFrom('kind', 'size', 'seed', 'fraction', 'url', 'alpha', 'steps', 'preset', 'backend', 'dir', 'init'),
      fc.string({ maxLength: 8 })
    ),
    value: fc.oneof(fc.jsonValue(), fc.constantFrom(-1, 0, 1.5, NaN, Infinity, '', 'tiny', 'cpu', null, [], {})),
    remove: fc.boolean(),
  })
  .map(({ base, section, key, value, remove }) => {
    const spec = structuredClone(base);
    const target = spec[section];
    if (target !== null && typeof target === 'object' && !Array.isArray(target)) {
      const obj = target as Record<string, unknown>;
      if (remove) delete obj[key];
      else obj[key] = value;
    } else if (remove) {
      delete spec[section];
    } else {
      spec[section] = value;
    }
    return spec;
  });

test('the spec parser returns a valid spec or a SpecError naming a field, for any JSON', (t) => {
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue(), fc.anything(), mutatedSpec), (input) => {
      const result = onlyInputErrors(() => parseSpec(input));
      if (result instanceof InputError) {
        if (!(result instanceof SpecError)) throw new Error(`not a SpecError: ${result.message}`);
        if (result.issues.length === 0 || result.issues.some((i) => i.field === '')) throw new Error('no field');
        // The message carries every field, so a user sees all that is wrong at once.
        for (const issue of result.issues) if (!result.message.includes(`spec.${issue.field}`)) throw new Error();
      } else {
        // A parsed spec is a fixpoint: parsing it again changes nothing (defaults are stable, nothing is dropped).
        t.deepEqual(parseSpec(result), result);
      }
    }),
    RUNS
  );
  t.pass();
});

test('an unknown key anywhere in a spec is rejected, naming its full path', (t) => {
  const sections = ['data', 'sample', 'teacher', 'validate', 'student', 'evaluate'];
  fc.assert(
    fc.property(
      fc.constantFrom('', ...sections),
      // Not a real field's shape (camelCase), and not __proto__, which an assignment would not create as a key.
      fc.string({ minLength: 1, maxLength: 10 }).filter((k) => !/^[a-z][A-Za-z]*$/.test(k) && k !== '__proto__'),
      (section, key) => {
        const spec = structuredClone(demoSpec()) as unknown as Record<string, Record<string, unknown>>;
        if (section === '') (spec as Record<string, unknown>)[key] = 1;
        else spec[section] = { ...spec[section], [key]: 1 };
        const err = onlyInputErrors(() => parseSpec(spec));
        if (!(err instanceof SpecError)) throw new Error(`${section}.${key} was accepted`);
        const path = section === '' ? key : `${section}.${key}`;
        if (!err.issues.some((i) => i.field === path && /Unrecognized key/.test(i.message))) {
          throw new Error(`no issue at ${path}: ${err.message}`);
        }
      }
    ),
    RUNS
  );
  t.pass();
});

test('presets and numbers out of range are refused by the spec parser with their field', (t) => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.record({ field: fc.constant('alpha'), value: fc.double().filter((a) => !(a >= 0 && a <= 1)) }),
        fc.record({ field: fc.constant('steps'), value: fc.integer({ max: 0 }) }),
        fc.record({
          field: fc.constant('preset'),
          value: fc.string().filter((p) => !(PRESETS as readonly string[]).includes(p)),
        })
      ),
      ({ field, value }) => {
        const err = onlyInputErrors(() => parseSpec({ ...demoSpec(), student: { [field]: value } }));
        if (!(err instanceof SpecError) || err.field !== `student.${field}`) throw new Error(`accepted ${value}`);
      }
    ),
    RUNS
  );
  t.pass();
});

test('the JSON-lines reader returns objects with line numbers, or an InputError naming the line', (t) => {
  const lines = fc.array(
    fc.oneof(
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue()).map((v) => JSON.stringify(v)),
      fc.string({ maxLength: 20 }),
      fc.constant('')
    ),
    { maxLength: 12 }
  );
  fc.assert(
    fc.property(lines, fc.constantFrom('\n', '\r\n'), (rows, eol) => {
      const result = onlyInputErrors(() => parseJsonLines('data.jsonl', rows.join(eol)));
      if (result instanceof InputError) {
        if (!/^data\.jsonl:\d+: /.test(result.message)) throw new Error(`no line in: ${result.message}`);
        return;
      }
      result.forEach((entry, i) => {
        if (entry.row !== i || typeof entry.value !== 'object' || Array.isArray(entry.value)) throw new Error();
        if (JSON.stringify(JSON.parse(rows[entry.line - 1])) !== JSON.stringify(entry.value)) throw new Error();
      });
    }),
    RUNS
  );
  t.pass();
});

test('strict UTF-8 decoding returns the text of valid bytes and names the first bad line otherwise', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.string({ unit: 'binary', maxLength: 20 }), (bytes, text) => {
      const valid = Buffer.from(text, 'utf8');
      // A lone surrogate has no UTF-8 form (Buffer writes U+FFFD for it), so only well-formed text must round-trip.
      const wellFormed = !/[\uD800-\uDFFF]/.test(text.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ''));
      if (wellFormed && decodeUtf8('f', valid) !== text.replace(/^\uFEFF/, '')) throw new Error('changed');
      const result = onlyInputErrors(() => decodeUtf8('f', bytes));
      if (result instanceof InputError && !/^f:\d+: not valid UTF-8/.test(result.message)) throw new Error();
      if (
        typeof result === 'string' &&
        result !==
          Buffer.from(bytes)
            .toString('utf8')
            .replace(/^\uFEFF/, '')
      ) {
        throw new Error('a lenient decode would differ: the strict one must have thrown');
      }
    }),
    RUNS
  );
  t.pass();
});

test('a recorded-completions batch is an array of strings, or an InputError naming the file', (t) => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.array(fc.string(), { maxLength: 5 }).map((a) => JSON.stringify(a)),
        fc.jsonValue().map((v) => JSON.stringify(v)),
        fc.string({ maxLength: 30 })
      ),
      (text) => {
        const result = onlyInputErrors(() => parseCompletionBatch('llm/train_CoT_0.json', text));
        if (result instanceof InputError) return;
        if (!result.every((s) => typeof s === 'string')) throw new Error();
      }
    ),
    RUNS
  );
  t.pass();
});

test('loading a JSONL file gives examples with unique ids, or an InputError naming a field', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-props-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const row = fc.record(
    {
      input: fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.constant(null)),
      label: fc.oneof(fc.string({ maxLength: 4 }), fc.boolean()),
      id: fc.oneof(fc.constantFrom('a', 'b', ''), fc.integer({ min: 0, max: 3 }), fc.constant(NaN)),
    },
    { requiredKeys: [] }
  );
  let n = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(row, { maxLength: 6 }), fc.boolean(), async (rows, withIds) => {
      const file = join(dir, `f${n++}.jsonl`);
      await writeFile(file, rows.map((r) => JSON.stringify(r)).join('\n'));
      const result = await onlyInputErrorsAsync(() => loadJsonl(file, withIds ? { idField: 'id' } : {}));
      if (result instanceof InputError) return;
      if (new Set(result.map((e) => e.id)).size !== result.length) throw new Error('duplicate ids');
      if (!result.every((e) => typeof e.input === 'string' && typeof e.label === 'string')) throw new Error();
    }),
    { numRuns: 100 }
  );
  t.pass();
});

test('every completion parser returns a rationale and label or a reason, for any text, and never throws', (t) => {
  fc.assert(
    fc.property(fc.constantFrom(...TASKS), fc.oneof(completionText, fc.string()), (task, text) => {
      const result = parseCompletion(task, text);
      if (result.ok) {
        if (result.rationale.trim() === '' || result.label === '') throw new Error('an empty part was accepted');
        if (result.rationale !== result.rationale.trim()) throw new Error('untrimmed rationale');
      } else if (!['empty', 'no-answer', 'no-rationale', 'malformed'].includes(result.reason)) {
        throw new Error(`unknown reason ${result.reason}`);
      }
      // The run-on cut only ever shortens: it never invents text.
      if (!text.startsWith(cutRunOn(text))) throw new Error('cutRunOn changed the text');
    }),
    { numRuns: 1000 }
  );
  t.pass();
});

test('the rationale checks return a verdict, or an InputError naming a validate field for bad options', (t) => {
  const options = fc.record(
    {
      minRationaleChars: fc.oneof(fc.integer({ min: -2, max: 40 }), fc.double(), fc.constant('3' as never)),
      maxRationaleChars: fc.oneof(fc.integer({ min: -2, max: 80 }), fc.constant(null as never)),
      dropLabelMismatch: fc.oneof(fc.boolean(), fc.constant('yes' as never)),
      requireGoldAgreement: fc.oneof(fc.boolean(), fc.constant(1 as never)),
    },
    { requiredKeys: [] }
  );
  fc.assert(
    fc.property(
      fc.constantFrom(...TASKS),
      completionText,
      fc.oneof(completionText, fc.constantFrom('(a)', '7', 'entailment')),
      fc.option(fc.string({ maxLength: 6 }), { nil: undefined }),
      options,
      fc.record({
        input: fc.option(completionText, { nil: undefined }),
        labels: fc.option(fc.array(fc.string({ maxLength: 6 }), { maxLength: 4 }), { nil: undefined }),
      }),
      (task, rationale, label, gold, opts, context) => {
        const verdict = onlyInputErrors(() => checkRationale(task, { rationale, label }, gold, opts, context));
        if (verdict instanceof InputError) {
          if (!verdict.field!.startsWith('validate.')) throw new Error(`field ${verdict.field}`);
          // The same options, resolved alone, are refused for the same field.
          const again = onlyInputErrors(() => resolveRationaleChecks(opts));
          if (!(again instanceof InputError) || again.field !== verdict.field) throw new Error('inconsistent');
          return;
        }
        for (const stated of statedLabels(task, rationale, context)) {
          if (stated.index < 0 || stated.index > rationale.length || stated.label === '') throw new Error();
        }
        conflictingStatement(task, rationale, label, context);
        const choices = cqaChoices(context.input ?? '');
        if (choices !== undefined && choices.some((c) => c.trim() === '')) throw new Error('an empty choice');
      }
    ),
    RUNS
  );
  t.pass();
});
