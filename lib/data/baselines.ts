/**
 * Trivial baselines, so a student's accuracy is read beside what no learning at all would score. Each is chosen on
 * the training split (never the split it is scored on) and scored by the rule the student is scored by: for SVAMP
 * that is the value of an equation, not its text, so the majority baseline is the most common answer *value*.
 */
import { InputError } from '../errors';
import { evaluateExpression } from './arith';
import { EQUATION_TOLERANCE, labelsMatch, majorityBaseline } from './score';
import type { Example, TaskKind } from './types';

export interface TrivialBaselines {
  /** Always answer the most common scored value of the training split. */
  majority: { label: string; accuracy: number };
  /** Arithmetic tasks: the one operation on the question's first two numbers that scores best on train. */
  bestOperation?: { operation: string; accuracy: number };
}

/** Tasks whose labels are equations scored by value. */
const ARITHMETIC: readonly TaskKind[] = ['svamp'];

/** The operations tried on the first two numbers a and b of a question, in tie-breaking order. */
export const OPERATIONS = ['a+b', 'a-b', 'b-a', 'a*b', 'a/b', 'b/a'] as const;
type Operation = (typeof OPERATIONS)[number];

function valueOf(label: string): number | undefined {
  try {
    const v = evaluateExpression(label);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The numbers of a question in order of appearance, as written ("1,200" is 1200; "3.5" is 3.5). A number glued to
 * a word ("2nd") still counts: the baseline is meant to be naive.
 */
export function numbersIn(text: string): number[] {
  return [...text.matchAll(/\d[\d,]*(?:\.\d+)?/g)]
    .map((m) => Number(m[0].replace(/,/g, '')))
    .filter((n) => Number.isFinite(n));
}

function apply(op: Operation, a: number, b: number): number {
  switch (op) {
    case 'a+b':
      return a + b;
    case 'a-b':
      return a - b;
    case 'b-a':
      return b - a;
    case 'a*b':
      return a * b;
    case 'a/b':
      return a / b;
    case 'b/a':
      return b / a;
  }
}

/** What an operation answers for a question: a plain number, which the scorer evaluates like an equation. */
function equationFor(op: Operation, input: string): string | undefined {
  const [a, b] = numbersIn(input);
  if (a === undefined || b === undefined) return undefined;
  const value = apply(op, a, b);
  return Number.isFinite(value) ? String(value) : undefined;
}

function accuracyOf(examples: readonly Example[], predict: (ex: Example) => string | undefined, task: TaskKind) {
  const hits = examples.filter((ex) => {
    const p = predict(ex);
    return p !== undefined && labelsMatch(task, p, ex.label);
  }).length;
  return hits / examples.length;
}

/**
 * The most common scored value of `fitOn`: equal values group within {@link EQUATION_TOLERANCE} for arithmetic
 * tasks (a label that does not evaluate is skipped), exact label text otherwise. Ties go to the smallest value (or
 * the label that sorts first), so the baseline is the same on every run.
 */
function majorityLabel(task: TaskKind, fitOn: readonly Example[]): string {
  if (!ARITHMETIC.includes(task)) return majorityBaseline(fitOn).label;
  const values = fitOn
    .map((ex) => valueOf(ex.label))
    .filter((v): v is number => v !== undefined)
    .sort((a, b) => a - b);
  if (values.length === 0) throw new InputError('fitOn has no label that evaluates to a number', 'fitOn');
  let best = values[0];
  let bestCount = 0;
  for (let i = 0; i < values.length;) {
    let j = i;
    while (j < values.length && Math.abs(values[j] - values[i]) < EQUATION_TOLERANCE) j++;
    if (j - i > bestCount) [best, bestCount] = [values[i], j - i];
    i = j;
  }
  return String(best);
}

/**
 * The trivial baselines of a task: chosen on `fitOn` (the training split), scored on `examples` (the evaluated split).
 * @throws InputError when either set is empty, or an arithmetic task's training labels never evaluate.
 */
export function trivialBaselines(
  task: TaskKind,
  examples: readonly Example[],
  fitOn: readonly Example[]
): TrivialBaselines {
  if (examples.length === 0)
    throw new InputError('examples is empty; expected at least one example to score', 'examples');
  if (fitOn.length === 0) throw new InputError('fitOn is empty; expected the training examples', 'fitOn');
  const label = majorityLabel(task, fitOn);
  const majority = { label, accuracy: accuracyOf(examples, () => label, task) };
  if (!ARITHMETIC.includes(task)) return { majority };
  let chosen: Operation = OPERATIONS[0];
  let chosenOnTrain = -1;
  for (const op of OPERATIONS) {
    const acc = accuracyOf(fitOn, (ex) => equationFor(op, ex.input), task);
    if (acc > chosenOnTrain) [chosen, chosenOnTrain] = [op, acc];
  }
  return {
    majority,
    bestOperation: { operation: chosen, accuracy: accuracyOf(examples, (ex) => equationFor(chosen, ex.input), task) },
  };
}
