/**
 * Validation filters for parsed teacher rationales: checks beyond parsing that drop a rationale which is empty, too
 * short or too long, which itself states a label other than the one the completion answers, or whose label disagrees
 * with gold. The paper keeps every parsable completion, so all but the empty check are opt-in.
 *
 * Finding the label a rationale states is heuristic, and it errs towards keeping: a statement counts only when it is
 * an explicit answer statement ("the answer is (b)", "answer: 12", "(b) is correct", and for multiple choice "the
 * closest answer is X" or "only X is ..."), names exactly one label of the task, is not negated, hypothetical or a
 * question, and both it and the parsed label are labels of the task. A rationale that merely discusses other options
 * ("(a) is wrong because ...") is never flagged.
 */
import { InputError } from '../errors';
import { evaluateExpression } from './arith';
import { DEMO_LABELS } from './demo-task';
import { NLI_LABELS } from './reference';
import { labelsMatch } from './score';
import { TaskKind } from './types';

/** Why a parsed rationale was dropped, in the order the checks run (the first failing one is reported). */
export const RATIONALE_DROP_REASONS = [
  'empty-rationale',
  'rationale-too-short',
  'rationale-too-long',
  'label-mismatch',
  'gold-disagreement',
] as const;
export type RationaleDropReason = (typeof RATIONALE_DROP_REASONS)[number];

/** The filters, as the pipeline spec's `validate` section states them. */
export interface RationaleCheckOptions {
  /** Drop a rationale of fewer characters (trimmed, counted in code points). */
  minRationaleChars: number;
  /** Drop a rationale of more characters (trimmed): run-on or looping generations. Unset: no limit. */
  maxRationaleChars?: number;
  /** Drop a rationale that itself states a label other than the parsed one. */
  dropLabelMismatch: boolean;
  /** Drop an example whose parsed label disagrees with its gold label, where there is one. */
  requireGoldAgreement: boolean;
}

/** The defaults, equal to the spec's: only an empty rationale is dropped, as the paper keeps the rest. */
export const DEFAULT_RATIONALE_CHECKS: Readonly<RationaleCheckOptions> = Object.freeze({
  minRationaleChars: 1,
  dropLabelMismatch: false,
  requireGoldAgreement: false,
});

/** A failed check: the reason, and a sentence for the report saying what was wrong with this rationale. */
export interface RationaleCheckFailure {
  reason: RationaleDropReason;
  detail: string;
}

/** What the label statements of a rationale are resolved against, beyond the task's own label set. */
export interface LabelContext {
  /** The example's input: for multiple choice (CQA), its `(a) ...` lines are the labels. */
  input?: string;
  /** The label set of a task without a fixed one (`jsonl`); without it no statement is resolved there. */
  labels?: readonly string[];
}

/** One answer statement found in a rationale. */
export interface StatedLabel {
  /** The label it states, in the task's form: the choice text (CQA), the number or expression (SVAMP), the label word. */
  label: string;
  /** The statement, as written (trimmed to a sentence's worth). */
  statement: string;
  /** Where the statement starts in the rationale. */
  index: number;
}

/**
 * Fills defaults and checks the values, so a hand-written activity input fails with a message a user can act on.
 * @throws InputError naming the field when a value is out of range or of the wrong type.
 */
export function resolveRationaleChecks(options: Partial<RationaleCheckOptions> = {}): RationaleCheckOptions {
  const resolved: RationaleCheckOptions = { ...DEFAULT_RATIONALE_CHECKS };
  const { minRationaleChars, maxRationaleChars, dropLabelMismatch, requireGoldAgreement } = options;
  if (minRationaleChars !== undefined) {
    if (!Number.isSafeInteger(minRationaleChars) || minRationaleChars < 1) {
      throw new InputError(
        `validate.minRationaleChars is ${JSON.stringify(minRationaleChars)}; expected an integer of at least 1`,
        'validate.minRationaleChars'
      );
    }
    resolved.minRationaleChars = minRationaleChars;
  }
  if (maxRationaleChars !== undefined && maxRationaleChars !== null) {
    if (!Number.isSafeInteger(maxRationaleChars) || maxRationaleChars < resolved.minRationaleChars) {
      throw new InputError(
        `validate.maxRationaleChars is ${JSON.stringify(maxRationaleChars)}; expected an integer of at least ` +
          `validate.minRationaleChars (${resolved.minRationaleChars})`,
        'validate.maxRationaleChars'
      );
    }
    resolved.maxRationaleChars = maxRationaleChars;
  }
  for (const [field, value] of [
    ['dropLabelMismatch', dropLabelMismatch],
    ['requireGoldAgreement', requireGoldAgreement],
  ] as const) {
    if (value === undefined) continue;
    if (typeof value !== 'boolean') {
      throw new InputError(
        `validate.${field} is ${JSON.stringify(value)}; expected true or false`,
        `validate.${field}`
      );
    }
    resolved[field] = value;
  }
  return resolved;
}

/**
 * Runs the checks on one parsed rationale, in the order of {@link RATIONALE_DROP_REASONS}, and returns the first that
 * fails, or undefined when the rationale is kept. `gold` undefined (or empty) skips the gold check: unlabelled data.
 * `context` carries what label statements are resolved against (the CQA input's choices, a `jsonl` label set).
 * @throws InputError when the options are invalid (see {@link resolveRationaleChecks}).
 */
export function checkRationale(
  task: TaskKind,
  parsed: { rationale: string; label: string },
  gold: string | undefined,
  options: Partial<RationaleCheckOptions> = {},
  context: LabelContext = {}
): RationaleCheckFailure | undefined {
  const opts = resolveRationaleChecks(options);
  const rationale = parsed.rationale.trim();
  // A rationale of punctuation or markup only explains nothing, whatever its length.
  if (!/[\p{L}\p{N}]/u.test(rationale)) {
    return { reason: 'empty-rationale', detail: `rationale ${JSON.stringify(rationale)} has no letters or digits` };
  }
  const chars = [...rationale].length;
  if (chars < opts.minRationaleChars) {
    return {
      reason: 'rationale-too-short',
      detail: `rationale is ${chars} characters; at least ${opts.minRationaleChars} required`,
    };
  }
  if (opts.maxRationaleChars !== undefined && chars > opts.maxRationaleChars) {
    return {
      reason: 'rationale-too-long',
      detail: `rationale is ${chars} characters; at most ${opts.maxRationaleChars} allowed`,
    };
  }
  if (opts.dropLabelMismatch) {
    const other = conflictingStatement(task, rationale, parsed.label, context);
    if (other !== undefined) {
      return {
        reason: 'label-mismatch',
        detail: `rationale states ${JSON.stringify(other.label)} ("${other.statement}") but the answer is ${JSON.stringify(parsed.label)}`,
      };
    }
  }
  if (opts.requireGoldAgreement && gold !== undefined && gold.trim() !== '' && !labelsMatch(task, parsed.label, gold)) {
    return {
      reason: 'gold-disagreement',
      detail: `teacher label ${JSON.stringify(parsed.label)} disagrees with gold ${JSON.stringify(gold)}`,
    };
  }
  return undefined;
}

/**
 * The first answer statement in `rationale` whose label is a label of the task and differs from `label` (itself a
 * label of the task), or undefined. Either side not being a recognisable label means no conflict: we cannot tell.
 */
export function conflictingStatement(
  task: TaskKind,
  rationale: string,
  label: string,
  context: LabelContext = {}
): StatedLabel | undefined {
  const labels = labelSet(task, context);
  if (task === 'svamp') {
    if (evaluates(label) === undefined) return undefined;
    return statedLabels(task, rationale, context).find((s) => !labelsMatch('svamp', s.label, label));
  }
  if (labels === undefined) return undefined;
  const own = normalise(label);
  if (!labels.some((l) => normalise(l) === own)) return undefined;
  return statedLabels(task, rationale, context).find((s) => normalise(s.label) !== own);
}

/**
 * Every explicit answer statement in a rationale that names exactly one label of the task, in order. CQA needs the
 * example's input (its choices) in `context`, and `jsonl` a label set; without them nothing is found.
 */
export function statedLabels(task: TaskKind, rationale: string, context: LabelContext = {}): StatedLabel[] {
  const labels = labelSet(task, context);
  if (task !== 'svamp' && (labels === undefined || labels.length === 0)) return [];
  const resolver: Resolver =
    task === 'svamp'
      ? numberAt
      : task === 'cqa'
        ? (text, at, end, articles) => choiceAt(cqaChoices(context.input ?? '') ?? [], text, at, end, articles)
        : (text, at, end, articles) => wordLabelAt(labels ?? [], text, at, end, articles);

  const found = new Map<number, StatedLabel>();
  const add = (start: number, labelAt: number, label: string) => {
    // Two phrasings can lead to the same label ("the correct answer is"): one statement.
    if (isHedged(rationale, start, labelAt) || found.has(labelAt)) return;
    found.set(labelAt, { label, statement: sentenceAround(rationale, start), index: start });
  };

  const forward = [...FORWARD_STATEMENTS, ...(task === 'cqa' ? CHOICE_STATEMENTS : [])];
  for (const pattern of forward) {
    for (const match of rationale.matchAll(pattern)) {
      const at = match.index + match[0].length;
      // "The answer must be a planet." describes the answer's kind, even where one choice is "planet": after "must
      // be" / "should be" only a label without an article is a statement of it.
      const label = resolver(rationale, at, 'clause', !/\bbe\s*:?\s*$/i.test(match[0]));
      if (label !== undefined) add(match.index, at, label);
    }
  }
  if (task === 'cqa') {
    for (const match of rationale.matchAll(ONLY_CHOICE)) {
      const at = match.index + match[0].length;
      const label = resolver(rationale, at, 'verb', true);
      if (label !== undefined) add(match.index, at, label);
    }
  }
  for (const match of rationale.matchAll(IS_CORRECT)) {
    if (!CLAUSE_END.test(rationale.slice(match.index + match[0].length))) continue;
    const before = labelBefore(task, labels ?? [], context, rationale, match.index);
    if (before !== undefined) add(before.start, before.start, before.label);
  }
  return [...found.values()].sort((a, b) => a.index - b.index);
}

/**
 * The choices of a multiple-choice input in the paper's format (`(a) text` lines after `Answer Choices:`), in order,
 * or undefined when the input has none.
 */
export function cqaChoices(input: string): string[] | undefined {
  const header = input.lastIndexOf('Answer Choices:');
  const lines = (header >= 0 ? input.slice(header) : input).split('\n');
  const choices: string[] = [];
  for (const line of lines) {
    const match = /^\s*\(([a-z])\)\s*(.*\S)\s*$/i.exec(line);
    if (match === null) continue;
    // Letters must run a, b, c, ... as the prompt writes them; anything else is not a choice list we understand.
    if (match[1].toLowerCase().charCodeAt(0) - 97 !== choices.length) return choices.length ? choices : undefined;
    choices.push(match[2]);
  }
  return choices.length >= 2 ? choices : undefined;
}

/** Where a label is looked for after a statement: up to the end of a clause, or before a verb ("only X is ..."). */
type Ending = 'clause' | 'verb';
/** `articles`: whether "a"/"an"/"the" may come before the label ("the answer is a ledge"). */
type Resolver = (text: string, at: number, ending: Ending, articles: boolean) => string | undefined;

/** "the answer is", "the correct option must be", "answer:", ... : the label follows. */
const FORWARD_STATEMENTS = [
  /\b(?:answer|choice|option|label)\s+(?:is|must be|has to be|should be|will be)\s*:?\s*/gi,
  /\b(?:answer|choice|option|label)\s*:\s*/gi,
];

/** Multiple-choice phrasings PaLM uses: "the closest answer is (c) ...", "the best choice would be ...". */
const CHOICE_STATEMENTS = [
  /\b(?:closest|best|most likely|correct|right)\s+[\w'-]+(?:\s+[\w'-]+){0,4}?\s+(?:is|must be|would be)\s*:?\s*/gi,
  /\bthe only\s+(?:thing|one|choice|option|answer)\b(?:\s+[\w'-]+){0,4}?\s+is\s*:?\s*/gi,
];

/** "Of the above choices, only X is ...": CQA's usual answer statement, the choice between "only" and a verb. */
const ONLY_CHOICE = /\bonly\s+/gi;

/** "X is correct", "X is the best answer": the label precedes. */
const IS_CORRECT =
  /\s+is\s+(?:the\s+)?(?:(?:correct|right)(?:\s+(?:answer|choice|option))?|(?:best|most likely|only)\s+(?:answer|choice|option))\b/gi;

/** What may follow a stated label: the end of its clause (a reason may follow the comma or a `because`). */
const CLAUSE_END = /^["'”’*)]*\s*(?:$|[.!?;:\n,]|(?:because|since|as|which|so|but)\b)/i;

/** Verbs that end the choice in "only X <verb> ...", so that "only death of every person" is not "death of". */
const VERB_AFTER =
  /^["'”’*]*\s+(?:is|are|was|were|makes?\s+sense|fits?|can|could|has|have|would|will|does|do|seems?)\b/i;

/** A second label right after the first: "(a) or (b)", "saltwater and seawater": not one answer, so no statement. */
const LIST_AFTER = /^["'”’]*\s*(?:,\s*(?:and\s+|or\s+)?|\/\s*|&\s*|and\s+|or\s+)/i;

/** Words that make the statement's clause not an assertion: negated, hypothetical or doubtful. */
const HEDGE =
  /\b(?:if|whether|unless|suppose|supposing|assume|assuming|not|never|no|cannot|can't|isn't|wasn't|doesn't|don't|wouldn't|won't|might|may|maybe|perhaps)\b/i;

/** Where the clause holding position `at` starts: after a sentence end, a semicolon, or ", so" / ", but" ... */
function clauseStart(text: string, at: number): number {
  let start = 0;
  // A period ends a sentence only before a space: "3.5" and "e.g" do not.
  for (const match of text.slice(0, at).matchAll(/[.!?;](?:\s|$)|\n|,\s*(?:so|thus|therefore|hence|and|but)\b/gi)) {
    start = match.index + match[0].length;
  }
  return start;
}

/** A statement is hedged when its clause says "if", "not", "maybe" ... before the label, or asks a question. */
function isHedged(text: string, start: number, labelAt: number): boolean {
  if (HEDGE.test(text.slice(clauseStart(text, start), labelAt))) return true;
  const end = /[.!?](?:\s|$)|\n/.exec(text.slice(labelAt));
  return end !== null && end[0][0] === '?';
}

/** The sentence holding position `at`, for the report: the statement with its context. */
function sentenceAround(text: string, at: number): string {
  let start = 0;
  for (const match of text.slice(0, at).matchAll(/[.!?](?:\s|$)|\n/g)) start = match.index + match[0].length;
  const rest = text.slice(at);
  const end = /[.!?\n](?:\s|$)/.exec(rest);
  const sentence = text.slice(start, end === null ? text.length : at + end.index + 1).trim();
  return sentence.length > 160 ? `${sentence.slice(0, 157)}...` : sentence;
}

/** Lower case, single spaces, no quotes, final period or leading article: how labels are compared here. */
function normalise(label: string): string {
  return label
    .toLowerCase()
    .replace(/["'“”‘’`*]/g, '')
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/[.!]+$/, '')
    .trim()
    .replace(/^(?:a|an|the) /, '');
}

function labelSet(task: TaskKind, context: LabelContext): readonly string[] | undefined {
  switch (task) {
    case 'cqa':
      return cqaChoices(context.input ?? '');
    case 'demo':
      return DEMO_LABELS;
    case 'esnli':
    case 'anli1':
      return NLI_LABELS;
    case 'jsonl':
      return context.labels;
    case 'svamp':
      return undefined;
  }
}

function evaluates(expr: string): number | undefined {
  try {
    return evaluateExpression(expr);
  } catch {
    return undefined;
  }
}

function skipQuotes(text: string, at: number): number {
  while (at < text.length && /["'“‘*]/.test(text[at])) at++;
  return at;
}

/** The longest of `labels` starting at `at` (case-insensitive, optionally after an article) on a word boundary. */
function longestLabelAt(
  labels: readonly string[],
  text: string,
  at: number,
  articles = true
): { label: string; end: number } | undefined {
  const lower = text.toLowerCase();
  let best: { label: string; end: number } | undefined;
  for (const start of articles ? articleStarts(lower, at) : [at]) {
    for (const label of labels) {
      const want = label.toLowerCase().trim();
      if (want === '' || !lower.startsWith(want, start)) continue;
      const end = start + want.length;
      if (/[\p{L}\p{N}]/u.test(text[end] ?? '')) continue;
      if (best === undefined || end > best.end) best = { label, end };
    }
  }
  return best;
}

function articleStarts(lower: string, at: number): number[] {
  const article = /^(?:a|an|the)\s+/.exec(lower.slice(at));
  return article === null ? [at] : [at, at + article[0].length];
}

/** True when `rest` (the text after a label) is where that label's clause may end, or its verb follows. */
function endsWell(rest: string, ending: Ending): boolean {
  return ending === 'clause' ? CLAUSE_END.test(rest) : VERB_AFTER.test(rest);
}

/** Whether another label follows a list separator: then the statement names several labels, not one. */
function continuesList(rest: string, labels: readonly string[]): boolean {
  const sep = LIST_AFTER.exec(rest);
  if (sep === null) return false;
  const next = rest.slice(sep[0].length);
  return /^\(\w\)/.test(next) || longestLabelAt(labels, next, skipQuotes(next, 0)) !== undefined;
}

/** A CQA choice at `at`: a `(x)` marker (with or without its text) or a choice's text. */
function choiceAt(
  choices: readonly string[],
  text: string,
  at: number,
  ending: Ending,
  articles: boolean
): string | undefined {
  if (choices.length === 0) return undefined;
  at = skipQuotes(text, at);
  const marker = /^\(([a-z])\)/i.exec(text.slice(at));
  let byLetter: string | undefined;
  if (marker !== null) {
    byLetter = choices[marker[1].toLowerCase().charCodeAt(0) - 97];
    if (byLetter === undefined) return undefined;
    at += marker[0].length;
  }
  const byText = longestLabelAt(choices, text, at + (marker ? /^\s*/.exec(text.slice(at))![0].length : 0), articles);
  if (byText !== undefined && endsWell(text.slice(byText.end), ending)) {
    // "(c) bank" where (c) is not bank: which one is meant is anyone's guess.
    if (byLetter !== undefined && normalise(byLetter) !== normalise(byText.label)) return undefined;
    if (continuesList(text.slice(byText.end), choices)) return undefined;
    return byText.label;
  }
  // A bare marker counts only where its clause ends (or its verb follows) right after it: "the answer is (c)."
  // A marker followed by wording that is not its choice's text ("(c) banks") is ambiguous.
  const rest = text.slice(at);
  if (byLetter === undefined || !endsWell(rest, ending) || continuesList(rest, choices)) return undefined;
  return byLetter;
}

/** A label of a fixed set (NLI, demo, a jsonl label set) at `at`, optionally after a `(x)` marker. */
function wordLabelAt(
  labels: readonly string[],
  text: string,
  at: number,
  ending: Ending,
  articles: boolean
): string | undefined {
  at = skipQuotes(text, at);
  const marker = /^\(([a-z])\)\s*/i.exec(text.slice(at));
  if (marker !== null) at += marker[0].length;
  const found = longestLabelAt(labels, text, at, articles);
  if (found === undefined) return undefined;
  const rest = text.slice(found.end);
  if (!endsWell(rest, ending) || continuesList(rest, labels)) return undefined;
  return found.label;
}

/** A number (`12`, `1,200`, `$3.50`, `-4`) or a parenthesised expression at `at`, standing alone as an answer. */
function numberAt(text: string, at: number): string | undefined {
  at = skipQuotes(text, at);
  const rest = text.slice(at);
  const paren = /^\((?:[^()\n]|\([^()\n]*\))*\)/.exec(rest);
  const number = /^\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)/.exec(rest);
  const match = paren ?? number;
  if (match === null) return undefined;
  const after = rest.slice(match[0].length);
  // "12 - 5 = 7", "3/4", "12%", "4 or 5": an expression, a fraction, a percentage or a list is not a stated answer.
  if (/^\s*(?:[-+*/=×÷^%]|x\s*\d|\d)/.test(after) || /^\s*(?:,\s*|\s+(?:and|or|to)\s+)\$?\d/.test(after))
    return undefined;
  const label = paren ? match[0] : match[1].replace(/,/g, '');
  return evaluates(label) === undefined ? undefined : label;
}

/** The label just before "is correct" at `at`: a marker, a choice, a label word or a number. */
function labelBefore(
  task: TaskKind,
  labels: readonly string[],
  context: LabelContext,
  text: string,
  at: number
): { label: string; start: number } | undefined {
  const before = text.slice(0, at).replace(/["'”’*]+$/, '');
  let found: { label: string; start: number } | undefined;
  if (task === 'svamp') {
    const number = /\$?(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)$/.exec(before);
    if (number === null) return undefined;
    // Part of a longer number ("1,2345"), or the result of arithmetic ("5 + 7 = 12 is correct"): not a plain answer.
    if (/(?:[\d.,]|[-+*/=×÷^]\s*)$/.test(before.slice(0, number.index))) return undefined;
    found = { label: number[1].replace(/,/g, ''), start: number.index };
  } else {
    const choices = task === 'cqa' ? (cqaChoices(context.input ?? '') ?? []) : labels;
    const lower = before.toLowerCase();
    for (const label of choices) {
      const want = label.toLowerCase().trim();
      if (want === '' || !lower.endsWith(want)) continue;
      const start = lower.length - want.length;
      if (/[\p{L}\p{N}]/u.test(before[start - 1] ?? '')) continue;
      if (found === undefined || start < found.start) found = { label, start };
    }
    const marker = /\(([a-z])\)\s*$/i.exec(before.slice(0, found?.start ?? before.length));
    if (task === 'cqa' && marker !== null) {
      const byLetter = choices[marker[1].toLowerCase().charCodeAt(0) - 97];
      if (byLetter === undefined) return undefined;
      if (found !== undefined && normalise(found.label) !== normalise(byLetter)) return undefined;
      found = { label: byLetter, start: marker.index };
    }
  }
  if (found === undefined) return undefined;
  // "(a) and (b) are ...", "both X and Y": a list, not one answer.
  if (/(?:,|\band|\bor|\/|&|\bboth|\beither)\s*$/i.test(text.slice(0, found.start))) return undefined;
  return found;
}
