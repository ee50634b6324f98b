/**
 * Validation filters: the rationale checks as domain code (constructed rationales for every reason, and the recorded
 * PaLM rationales of CQA and SVAMP), and the validateRationales activity that applies them and reports every drop.
 */
import { resolve } from 'node:path';
import test from 'ava';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure } from '@temporalio/common';
import type { RationaleRecord } from '../lib/data/rationales';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { InputError } from '../lib/errors';
import { parseSpec } from '../lib/pipeline/spec';
import { formatCqaInput, loadReferenceCompletions, loadReferenceSplit, parseCompletion } from '../lib/data';
import { labelsMatch } from '../lib/data/score';
import type { BenchmarkTask, Example, TaskKind } from '../lib/data/types';
import {
  checkRationale,
  cqaChoices,
  DEFAULT_RATIONALE_CHECKS,
  RATIONALE_DROP_REASONS,
  resolveRationaleChecks,
  statedLabels,
  type LabelContext,
  type RationaleCheckOptions,
} from '../lib/data/rationale-checks';
import type { Activities } from '../contract';
import { activityFixture, runIn } from './helpers/activities';

const DATASETS = resolve(__dirname, '..', '..', 'shared', 'datasets');

// ---------------------------------------------------------------------------------------------------------------
// The checks, on constructed rationales

const bankInput = formatCqaInput('Where do people keep their savings?', [
  'bank',
  'store',
  'a ledge',
  'planet',
  'piggy bank',
]);
const mismatchOnly = { dropLabelMismatch: true };

function mismatch(task: TaskKind, rationale: string, label: string, context: LabelContext = { input: bankInput }) {
  return checkRationale(task, { rationale, label }, undefined, mismatchOnly, context);
}

test('the defaults keep any rationale with words in it and drop one of punctuation only', (t) => {
  t.deepEqual(resolveRationaleChecks(), { ...DEFAULT_RATIONALE_CHECKS });
  t.is(checkRationale('demo', { rationale: 'x', label: 'positive' }, 'negative'), undefined);
  // Stating another label and disagreeing with gold are both ignored by default.
  t.is(checkRationale('demo', { rationale: 'The answer is negative.', label: 'positive' }, 'negative'), undefined);
  const empty = checkRationale('demo', { rationale: ' ... ', label: 'positive' }, 'positive');
  t.is(empty?.reason, 'empty-rationale');
  t.regex(empty!.detail, /no letters or digits/);
});

test('rationales outside the length limits are dropped, counting trimmed characters', (t) => {
  const opts = { minRationaleChars: 10, maxRationaleChars: 20 };
  const short = checkRationale('demo', { rationale: '  too short ', label: 'positive' }, undefined, {
    ...opts,
    minRationaleChars: 12,
  });
  t.is(short?.reason, 'rationale-too-short');
  t.regex(short!.detail, /9 characters; at least 12/);
  const long = checkRationale(
    'demo',
    { rationale: 'great is positive, all told.', label: 'positive' },
    undefined,
    opts
  );
  t.is(long?.reason, 'rationale-too-long');
  t.regex(long!.detail, /28 characters; at most 20/);
  t.is(checkRationale('demo', { rationale: ' exactly twenty chars ', label: 'positive' }, undefined, opts), undefined);
  // Code points, not UTF-16 units: "ok " and 17 emoji are 20 characters (37 units).
  t.is(checkRationale('demo', { rationale: 'ok ' + '🙂'.repeat(17), label: 'x' }, undefined, opts), undefined);
});

test('the first failing check is the one reported, in the documented order', (t) => {
  const all = { minRationaleChars: 5, maxRationaleChars: 30, dropLabelMismatch: true, requireGoldAgreement: true };
  const reasonOf = (rationale: string) =>
    checkRationale('demo', { rationale, label: 'positive' }, 'negative', all, { input: '' })?.reason;
  t.is(reasonOf('!!'), 'empty-rationale');
  t.is(reasonOf('ok'), 'rationale-too-short');
  t.is(reasonOf('The answer is negative, clearly, as all can see.'), 'rationale-too-long');
  t.is(reasonOf('The answer is negative.'), 'label-mismatch');
  t.is(reasonOf('great is positive.'), 'gold-disagreement');
  t.deepEqual(RATIONALE_DROP_REASONS, [
    'empty-rationale',
    'rationale-too-short',
    'rationale-too-long',
    'label-mismatch',
    'gold-disagreement',
  ]);
});

test('bad filter settings are refused with the field, the value and what was expected', (t) => {
  const err = t.throws(() => resolveRationaleChecks({ minRationaleChars: 0 }), { instanceOf: InputError });
  t.is(err!.field, 'validate.minRationaleChars');
  t.regex(err!.message, /is 0; expected an integer of at least 1/);
  const max = t.throws(() => resolveRationaleChecks({ minRationaleChars: 10, maxRationaleChars: 5 }), {
    instanceOf: InputError,
  });
  t.regex(max!.message, /maxRationaleChars is 5; .*at least validate\.minRationaleChars \(10\)/);
  t.throws(() => resolveRationaleChecks({ dropLabelMismatch: 'yes' as unknown as boolean }), {
    instanceOf: InputError,
    message: /dropLabelMismatch is "yes"; expected true or false/,
  });
});

test('a CQA rationale stating another choice, by letter or by text, is a label mismatch', (t) => {
  t.deepEqual(cqaChoices(bankInput), ['bank', 'store', 'a ledge', 'planet', 'piggy bank']);
  const flagged = [
    'Money is kept safe in a bank. The answer is (b).',
    'Money is kept safe in a bank. (b) is correct.',
    'Money is kept safe. (b) store is the correct answer.',
    'Of the above choices, the closest answer is store.',
    'Of the above choices, only store is a place where savings are kept.',
    'So the answer must be store.',
    'Answer: (e) piggy bank',
    'The answer is (b) because stores keep cash.',
  ];
  for (const rationale of flagged) {
    const failure = mismatch('cqa', rationale, 'bank');
    t.is(failure?.reason, 'label-mismatch', rationale);
    t.regex(failure!.detail, /^rationale states "(store|piggy bank)" \(".+"\) but the answer is "bank"$/);
  }
  // The longest choice wins: "piggy bank" is not "bank".
  t.deepEqual(
    statedLabels('cqa', 'Of the above choices, only piggy bank is small.', { input: bankInput }).map((s) => s.label),
    ['piggy bank']
  );
  // Agreeing statements are found but are no mismatch, whatever the case or article.
  t.deepEqual(
    statedLabels('cqa', 'The answer is (a). Of the above choices, only a Bank is safe.', { input: bankInput }).map(
      (s) => s.label
    ),
    ['bank', 'bank']
  );
  t.is(mismatch('cqa', 'The answer is (a). Of the above choices, only a Bank is safe.', 'bank'), undefined);
});

test('a CQA rationale that only discusses other choices is not flagged', (t) => {
  const kept = [
    '(b) is wrong because a store sells things. (a) is correct.',
    'The answer is not (b), since a store sells things.',
    'If the answer is (b), the money would be spent.',
    'Is the answer (b)? No, a store sells things.',
    'Maybe the answer is (b).',
    'Of the above choices, only bank and store hold money.',
    'The answer is (a) or (b).',
    // Describes the kind of answer; "planet" happens to be a choice.
    'The answer must be a planet.',
    // The letter says one choice and the text another: which was meant is anyone's guess.
    'The answer is (c) store.',
    // Store is mentioned, never stated as the answer.
    'A store is not where savings go; the answer must be something safe.',
  ];
  for (const rationale of kept) t.is(mismatch('cqa', rationale, 'bank'), undefined, rationale);
  // Without the choices there is nothing to resolve a letter against.
  t.deepEqual(statedLabels('cqa', 'The answer is (b).'), []);
  // A parsed label that is not one of the choices cannot be said to disagree with one.
  t.is(mismatch('cqa', 'The answer is (b).', 'a vault'), undefined);
});

test('SVAMP answers are compared by value, and arithmetic on the way is not an answer', (t) => {
  t.is(mismatch('svamp', 'He had 6 and got 6 more, so the answer is 12.0 apples.', '(6 + 6)'), undefined);
  t.is(mismatch('svamp', 'Answer: 1,200', '( 600.0 * 2.0 )'), undefined);
  t.is(mismatch('svamp', 'the answer is 12 - 5 = 7.', '(12 - 5)'), undefined);
  t.is(mismatch('svamp', 'the answer is 12 or 13.', '(6 + 7)'), undefined);
  t.is(mismatch('svamp', 'So 3.5 kg were left over and the answer is 25%.', '(6 + 7)'), undefined);
  for (const [rationale, label] of [
    ['He had 6 and got 6 more, so the answer is 13.', '(6 + 6)'],
    ['Answer: 1,300', '( 600.0 * 2.0 )'],
    ['There are 3.5 kg. 12 is the correct answer.', '(6 + 7)'],
    ['So the answer is (6 * 2).', '(6 + 7)'],
  ]) {
    t.is(mismatch('svamp', rationale, label)?.reason, 'label-mismatch', rationale);
  }
  t.is(mismatch('svamp', 'Each box holds 4, so the answer is 4 x 3 = 12.', '(4 * 3)'), undefined);
  t.deepEqual(
    statedLabels('svamp', 'so the answer is $1,250.50 in all. Also, 5 + 7 = 12 is correct.').map((s) => s.label),
    ['1250.50']
  );
});

test('NLI, demo and user label sets: only an answer statement of another label is a mismatch', (t) => {
  t.is(
    mismatch('esnli', 'A man sleeping cannot be running, so the answer must be contradiction.', 'entailment')?.reason,
    'label-mismatch'
  );
  t.is(mismatch('anli1', 'Neutral is the correct answer.', 'entailment')?.reason, 'label-mismatch');
  t.is(mismatch('esnli', 'The premise does not entail the hypothesis; it is neutral.', 'entailment'), undefined);
  t.is(mismatch('anli1', 'The answer is not neutral.', 'entailment'), undefined);
  t.is(mismatch('esnli', 'So the answer is Entailment.', 'entailment'), undefined);

  const review = 'great is positive, bad is negative and awful is negative. That is 1 positive and 2 negative.';
  t.is(mismatch('demo', review, 'negative'), undefined);
  t.is(mismatch('demo', `${review} The answer is positive.`, 'negative')?.reason, 'label-mismatch');

  const labels = { labels: ['spam', 'ham'] };
  t.is(mismatch('jsonl', 'It sells pills, so the answer is ham.', 'spam', labels)?.reason, 'label-mismatch');
  t.is(mismatch('jsonl', 'It sells pills, so the answer is spam.', 'spam', labels), undefined);
  // Without a label set a user's task has nothing to resolve against.
  t.is(mismatch('jsonl', 'It sells pills, so the answer is ham.', 'spam', { input: '' }), undefined);
});

test('gold disagreement uses the task scoring, and unlabelled examples pass', (t) => {
  const gold = { requireGoldAgreement: true };
  const check = (task: TaskKind, label: string, goldLabel: string | undefined) =>
    checkRationale(task, { rationale: 'Some reasoning.', label }, goldLabel, gold);
  t.is(check('svamp', '(84 / 2)', '( 84.0 / 2.0 )'), undefined);
  const wrong = check('svamp', '(84 * 2)', '( 84.0 / 2.0 )');
  t.is(wrong?.reason, 'gold-disagreement');
  t.is(wrong?.detail, 'teacher label "(84 * 2)" disagrees with gold "( 84.0 / 2.0 )"');
  t.is(check('cqa', 'bank', 'bank'), undefined);
  t.is(check('cqa', 'bank', 'store')?.reason, 'gold-disagreement');
  t.is(check('cqa', 'bank', undefined), undefined);
  t.is(check('cqa', 'bank', ''), undefined);
});

// ---------------------------------------------------------------------------------------------------------------
// The checks, on the recorded PaLM rationales

async function recorded(task: BenchmarkTask, split: 'train' | 'test') {
  const [examples, completions] = await Promise.all([
    loadReferenceSplit(DATASETS, task, split),
    loadReferenceCompletions(DATASETS, task, split),
  ]);
  return examples.map((example, row) => ({ example, parsed: parseCompletion(task, completions[row]) }));
}

test('recorded CQA train rationales rarely state another choice, and the flagged ones really do', async (t) => {
  const rows = await recorded('cqa', 'train');
  let parsed = 0;
  const flagged: { example: Example; label: string; detail: string }[] = [];
  for (const { example, parsed: p } of rows) {
    if (!p.ok) continue;
    parsed++;
    // No PaLM rationale is empty: the defaults drop nothing the parser kept.
    t.is(checkRationale('cqa', p, example.label), undefined);
    const failure = checkRationale('cqa', p, example.label, mismatchOnly, { input: example.input });
    if (failure) flagged.push({ example, label: p.label, detail: failure.detail });
  }
  // By eye, every flag on these completions names another choice of its own question ("only falling asleep is ..."
  // answered "fall asleep"); PaLM states its answer once, so flags must stay rare.
  t.true(flagged.length > 0, 'the check finds nothing on real rationales');
  t.true(flagged.length < parsed * 0.01, `${flagged.length} of ${parsed} flagged`);
  for (const { example, label, detail } of flagged) {
    const choices = cqaChoices(example.input)!;
    const stated = /^rationale states "([^"]+)"/.exec(detail)![1];
    t.true(choices.includes(stated), `${example.id}: ${stated} is a choice`);
    t.true(choices.includes(label), `${example.id}: ${label} is a choice`);
    t.not(stated.toLowerCase(), label.toLowerCase(), example.id);
  }
});

test('recorded SVAMP train rationales rarely if ever state a different answer', async (t) => {
  const rows = await recorded('svamp', 'train');
  const usable = rows.filter((r) => r.parsed.ok);
  t.true(usable.length > 700);
  const flagged = usable.filter(
    ({ example, parsed }) =>
      parsed.ok && checkRationale('svamp', parsed, example.label, mismatchOnly, { input: example.input }) !== undefined
  );
  t.true(flagged.length < usable.length * 0.01, `${flagged.length} of ${usable.length} flagged`);
});

// ---------------------------------------------------------------------------------------------------------------
// The activity

let store: ArtifactStore;
let activities: Activities;
let close: (() => Promise<void>) | undefined;

test.before(async () => {
  ({ store, activities, close } = await activityFixture('stepwise-validate-'));
});

test.after.always(async () => {
  await close?.();
});

interface Report {
  total: number;
  kept: number;
  filters: Record<string, unknown>;
  dropped: Record<string, number>;
  droppedExamples: Record<
    string,
    {
      id: string;
      split: string;
      completion: string;
      gold: string;
      parsedLabel?: string;
      detail?: string;
      error?: string;
    }[]
  >;
  teacherCorrect: number;
  teacherAccuracy: number;
}

const review = (words: [string, string, string]) =>
  `The food was ${words[0]}, the staff was ${words[1]} and the view was ${words[2]}.`;

/** One demo example per outcome; the completions are what a teacher might say about it. */
const cases: { ex: Example; completion?: string; error?: string; votes?: Record<string, number>; fate: string }[] = [
  {
    ex: { id: 'ok', input: review(['great', 'lovely', 'awful']), label: 'positive' },
    completion: 'great is positive, lovely is positive and awful is negative. So the answer is positive.',
    votes: { positive: 3, negative: 1 },
    fate: 'kept',
  },
  {
    ex: { id: 'ok2', input: review(['bad', 'rude', 'nice']), label: 'negative' },
    completion: 'bad is negative, rude is negative and nice is positive. So the answer is negative.',
    fate: 'kept',
  },
  { ex: { id: 'none', input: review(['bad', 'bad', 'bad']), label: 'negative' }, fate: 'no-response' },
  {
    ex: { id: 'err', input: review(['good', 'good', 'good']), label: 'positive' },
    completion: '',
    error: 'timed out after 3 attempts',
    fate: 'teacher-error',
  },
  {
    ex: { id: 'unparsed', input: review(['good', 'bad', 'good']), label: 'positive' },
    completion: "I don't know.",
    fate: 'no-answer',
  },
  {
    ex: { id: 'dots', input: review(['poor', 'poor', 'good']), label: 'negative' },
    completion: '... So the answer is negative.',
    fate: 'empty-rationale',
  },
  {
    ex: { id: 'short', input: review(['nice', 'nice', 'poor']), label: 'positive' },
    completion: 'Mostly nice. So the answer is positive.',
    fate: 'rationale-too-short',
  },
  {
    ex: { id: 'long', input: review(['clean', 'fair', 'slow']), label: 'positive' },
    completion: `${'clean is positive and fair is positive, '.repeat(6)}slow is negative. So the answer is positive.`,
    fate: 'rationale-too-long',
  },
  {
    ex: { id: 'contradicts', input: review(['dirty', 'slow', 'good']), label: 'negative' },
    completion: 'dirty is negative and slow is negative; the answer is negative. So the answer is positive.',
    fate: 'label-mismatch',
  },
  {
    ex: { id: 'wrong', input: review(['noisy', 'bland', 'superb']), label: 'negative' },
    completion: 'noisy is negative, bland is negative and superb is positive. So the answer is positive.',
    fate: 'gold-disagreement',
  },
];
const allFilters = {
  minRationaleChars: 20,
  maxRationaleChars: 200,
  dropLabelMismatch: true,
  requireGoldAgreement: true,
};

async function stage(
  rows: typeof cases,
  validate?: Partial<RationaleCheckOptions>,
  task: TaskKind = 'demo',
  validRows: typeof cases = []
) {
  const responses = [...rows, ...validRows]
    .filter((c) => c.completion !== undefined)
    .map((c) => ({
      id: c.ex.id,
      completion: c.completion,
      cached: false,
      ...(c.error ? { error: c.error } : {}),
      ...(c.votes ? { votes: c.votes, samples: 4 } : {}),
    }));
  const [train, valid, responsesRef] = await Promise.all([
    store.putJsonl(rows.map((c) => c.ex)),
    store.putJsonl(validRows.map((c) => c.ex)),
    store.putJsonl(responses),
  ]);
  return runIn(new MockActivityEnvironment(), activities.validateRationales, {
    task,
    train,
    valid,
    responses: responsesRef,
    ...(validate ? { validate } : {}),
  });
}

test('validateRationales counts every drop reason, with examples and the filter settings', async (t) => {
  const r = await stage(cases, allFilters);
  const expected: Record<string, number> = {};
  for (const c of cases) if (c.fate !== 'kept') expected[c.fate] = (expected[c.fate] ?? 0) + 1;
  t.deepEqual(r.dropped, expected);
  t.is(r.kept, cases.filter((c) => c.fate === 'kept').length);

  const report = await store.getJson<Report>(r.report);
  t.deepEqual(report.filters, allFilters);
  t.deepEqual(report.dropped, expected);
  for (const c of cases.filter((c) => c.fate !== 'kept')) {
    const [example] = report.droppedExamples[c.fate];
    t.is(example.id, c.ex.id);
    t.is(example.split, 'train');
    t.is(example.gold, c.ex.label);
  }
  t.is(report.droppedExamples['teacher-error'][0].error, 'timed out after 3 attempts');
  const mismatch = report.droppedExamples['label-mismatch'][0];
  t.is(mismatch.parsedLabel, 'positive');
  t.regex(mismatch.detail!, /states "negative" \("dirty is negative and slow is negative; the answer is negative\."\)/);
  t.regex(mismatch.completion, /^dirty is negative/);
  const disagreement = report.droppedExamples['gold-disagreement'][0];
  t.is(disagreement.parsedLabel, 'positive');
  t.regex(disagreement.detail!, /disagrees with gold "negative"/);
  t.regex(report.droppedExamples['rationale-too-long'][0].detail!, /at most 200 allowed/);
});

test('teacher accuracy counts every example, whatever the filters drop', async (t) => {
  const filtered = await stage(cases, allFilters);
  const unfiltered = await stage(cases);
  const correct = cases.filter(({ ex, completion }) => {
    const parsed = parseCompletion('demo', completion ?? '');
    return parsed.ok && labelsMatch('demo', parsed.label, ex.label);
  }).length;
  t.is(filtered.teacherAccuracy, correct / cases.length);
  t.is(unfiltered.teacherAccuracy, filtered.teacherAccuracy);
  t.true(filtered.kept < unfiltered.kept);
});

test('with the default filters the stage keeps what it kept before: only empty rationales are new drops', async (t) => {
  const r = await stage(cases, undefined, 'demo', []);
  const withSpecDefaults = await stage(
    cases,
    parseSpec({ name: 'x', data: { kind: 'demo' }, teacher: { kind: 'scripted' } }).validate
  );
  t.deepEqual(withSpecDefaults.dropped, r.dropped);

  // What the stage kept before filters existed: every example with a parsable, error-free completion.
  const before = cases.filter(
    (c) => !c.error && c.completion !== undefined && parseCompletion('demo', c.completion).ok
  );
  const kept = await store.getJsonl<RationaleRecord>(r.train);
  t.deepEqual(
    kept.map((k) => k.id),
    before.filter((c) => c.fate !== 'empty-rationale').map((c) => c.ex.id)
  );
  t.deepEqual(Object.keys(r.dropped).sort(), ['empty-rationale', 'no-answer', 'no-response', 'teacher-error']);
  const report = await store.getJson<Report>(r.report);
  t.deepEqual(report.filters, { ...DEFAULT_RATIONALE_CHECKS, maxRationaleChars: null });
  for (const record of kept) {
    const c = cases.find((x) => x.ex.id === record.id)!;
    const parsed = parseCompletion('demo', c.completion!);
    t.true(parsed.ok);
    if (parsed.ok) t.like(record, { goldLabel: c.ex.label, teacherLabel: parsed.label, rationale: parsed.rationale });
  }
});

test('self-consistency votes pass through to the kept record only where the teacher recorded them', async (t) => {
  const r = await stage(cases.slice(0, 2));
  const [voted, plain] = await store.getJsonl<RationaleRecord>(r.train);
  t.deepEqual(voted.votes, { positive: 3, negative: 1 });
  t.false('votes' in plain);
});

test('the report keeps three examples of a reason however many there are, and names the split', async (t) => {
  const many = Array.from({ length: 5 }, (_, i) => ({
    ex: { id: `short-${i}`, input: review(['nice', 'nice', 'good']), label: 'positive' },
    completion: 'Nice. So the answer is positive.',
    fate: 'rationale-too-short',
  }));
  const r = await stage([cases[0], ...many.slice(0, 3)], { minRationaleChars: 10 }, 'demo', many.slice(3));
  t.is(r.dropped['rationale-too-short'], 5);
  const report = await store.getJson<Report>(r.report);
  const examples = report.droppedExamples['rationale-too-short'];
  t.deepEqual(
    examples.map((e) => [e.id, e.split]),
    [
      ['short-0', 'train'],
      ['short-1', 'train'],
      ['short-2', 'train'],
    ]
  );
});

test('validateRationales fails for good when the filters leave no training rationale', async (t) => {
  const err = await t.throwsAsync(stage([cases[0], cases[1]], { minRationaleChars: 500 }));
  t.true(err instanceof ApplicationFailure);
  t.is((err as ApplicationFailure).type, 'NoUsableRationales');
  t.true((err as ApplicationFailure).nonRetryable);
  t.regex(err!.message, /rationale-too-short: 2/);
});

test('bad filter settings in the activity input fail for good, naming the field', async (t) => {
  const err = await t.throwsAsync(stage(cases.slice(0, 1), { maxRationaleChars: 0 }));
  t.true(err instanceof ApplicationFailure);
  t.is((err as ApplicationFailure).type, 'InputError');
  t.true((err as ApplicationFailure).nonRetryable);
  t.regex(err!.message, /validate\.maxRationaleChars is 0/);
});

test('on recorded CQA completions, gold agreement keeps exactly the correct answers and accuracy is unchanged', async (t) => {
  const rows = await recorded('cqa', 'test');
  const completions = await loadReferenceCompletions(DATASETS, 'cqa', 'test');
  const [train, valid, responses] = await Promise.all([
    store.putJsonl(rows.map((r) => r.example)),
    store.putJsonl([]),
    store.putJsonl(rows.map((r, i) => ({ id: r.example.id, completion: completions[i], cached: false }))),
  ]);
  const run = (validate: Partial<RationaleCheckOptions>) =>
    runIn(new MockActivityEnvironment(), activities.validateRationales, {
      task: 'cqa',
      train,
      valid,
      responses,
      validate,
    });
  const plain = await run({});
  const strict = await run({ requireGoldAgreement: true });
  t.is(strict.teacherAccuracy, plain.teacherAccuracy);
  const correct = rows.filter((r) => r.parsed.ok && labelsMatch('cqa', r.parsed.label, r.example.label)).length;
  t.is(strict.kept, correct);
  t.is(plain.kept - strict.kept, strict.dropped['gold-disagreement']);
  const kept = await store.getJsonl<RationaleRecord>(strict.train);
  t.true(kept.every((k) => labelsMatch('cqa', k.teacherLabel, k.goldLabel)));
  const report = await store.getJson<Report>(strict.report);
  t.is(report.droppedExamples['gold-disagreement'].length, 3);
});
