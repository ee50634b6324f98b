/**
 * The teacher the zero-config demo serves: it reasons correctly about demo reviews most of the time and, like a real
 * teacher, sometimes makes a plausible mistake. Apart from the server because it is the one part that knows the
 * demo task; everything else here serves any answer function.
 */
import { createHash } from 'node:crypto';

import { DEMO_LABELS, solveDemo } from '../../data/demo-task';
import { InputError } from '../../errors';
import type { ChatMessage } from '../types';
import type { RequestSampling } from './types';

/** The answer of a teacher that does not recognise the question: readable, and deliberately unparseable. */
export const UNKNOWN_ANSWER = "I don't know.";

/**
 * The demo's scripted teacher. It finds the last `Q:` question in the last user message, solves the review with
 * {@link solveDemo} and answers `<rationale> So the answer is <label>.`. For a share `errorRate` of questions, picked
 * by a hash of the question and `seed` (so the same question always gets the same answer), it miscounts instead: it
 * misreads just enough adjectives to flip the majority and answers the other label with a rationale that is wrong
 * but reads like a real one, as a real teacher's mistakes do. A question that is not a demo review gets
 * {@link UNKNOWN_ANSWER}.
 *
 * Sampling: at temperature 0 (or none) the request's seed is ignored, as greedy decoding would. At temperature > 0
 * the hash also covers the request's `seed`, so samples with distinct seeds are independent draws, each wrong with
 * probability `errorRate`, and the same seed gives the same sample again.
 * @throws InputError when errorRate is not in [0, 1] or seed is not an integer.
 */
export function scriptedDemoTeacher(
  opts: { errorRate?: number; seed?: number } = {}
): (messages: ChatMessage[], sampling?: RequestSampling) => string {
  const errorRate = opts.errorRate ?? 0.1;
  const seed = opts.seed ?? 0;
  if (!(errorRate >= 0 && errorRate <= 1)) {
    throw new InputError(`errorRate is ${JSON.stringify(opts.errorRate)}; expected a number from 0 to 1`, 'errorRate');
  }
  if (!Number.isSafeInteger(seed)) {
    throw new InputError(`seed is ${JSON.stringify(opts.seed)}; expected an integer`, 'seed');
  }
  return (messages, sampling) => {
    const question = lastQuestion(messages);
    const solved = question === undefined ? undefined : solveDemo(question);
    if (question === undefined || solved === undefined) return UNKNOWN_ANSWER;
    const sampled = sampling?.temperature !== undefined && sampling.temperature > 0;
    const key = sampled ? `${seed}\n${sampling.seed ?? 'none'}\n${question}` : `${seed}\n${question}`;
    const digest = createHash('sha256').update(key).digest();
    const wrong = digest.readUInt32BE(0) / 0x1_0000_0000 < errorRate;
    const { rationale, label } = wrong ? (miscount(solved.rationale, digest[4]) ?? solved) : solved;
    return `${rationale} So the answer is ${label}.`;
  };
}

/** The text after the last `Q:` that starts a line in the last user message, up to its `A:` line. */
function lastQuestion(messages: readonly ChatMessage[]): string | undefined {
  const user = [...messages].reverse().find((m) => m.role === 'user');
  if (user === undefined) return undefined;
  const starts = [...user.content.matchAll(/(?:^|\n)Q:[ \t]*/g)];
  const last = starts.at(-1);
  if (last === undefined) return undefined;
  const rest = user.content.slice(last.index + last[0].length);
  const end = rest.search(/\nA:/);
  return (end === -1 ? rest : rest.slice(0, end)).trim();
}

const RATIONALE = /^(\w+) is (positive|negative), (\w+) is (positive|negative) and (\w+) is (positive|negative)\./;

/**
 * A plausible wrong answer: starting at a hash-chosen word, misread majority-side adjectives as the opposite polarity
 * until the majority flips, then count and answer consistently with the misreading.
 */
function miscount(rationale: string, pick: number): { rationale: string; label: string } | undefined {
  const match = RATIONALE.exec(rationale);
  if (match === null) return undefined;
  const words = [match[1], match[3], match[5]];
  const polarities = [match[2], match[4], match[6]];
  const count = (p: string) => polarities.filter((q) => q === p).length;
  const majority = count('positive') > count('negative') ? 'positive' : 'negative';
  const other = DEMO_LABELS.find((l) => l !== majority)!;
  for (let k = 0; k < 3 && count(other) <= count(majority); k++) {
    const i = (pick + k) % 3;
    if (polarities[i] === majority) polarities[i] = other;
  }
  const [a, b, c] = words.map((w, i) => `${w} is ${polarities[i]}`);
  return {
    rationale: `${a}, ${b} and ${c}. That is ${count('positive')} positive and ${count('negative')} negative.`,
    label: other,
  };
}
