/**
 * From training records to what the student is trained on: text pairs per method, then token ids cut to the run's
 * length limits.
 */
import { InputError } from '../errors';
import { defaultLabelSource, METHODS, type LabelSource, type Method } from './options';
import type { StudentTokenizer } from './tokenizer';

/** One training example, with what the teacher said about it where a teacher was asked. */
export interface TrainRecord {
  input: string;
  goldLabel: string;
  teacherLabel?: string;
  rationale?: string;
}

/** A source → target text pair for the seq2seq student. */
export interface TextPair {
  source: string;
  target: string;
}

/** Label pairs, and for distilling step-by-step the rationale pairs of the same examples, index for index. */
export interface PairSet {
  label: TextPair[];
  rationale?: TextPair[];
}

export const PREDICT_PREFIX = 'predict: ';
export const EXPLAIN_PREFIX = 'explain: ';

export function isMethod(value: unknown): value is Method {
  return typeof value === 'string' && (METHODS as readonly string[]).includes(value);
}

/**
 * Turns records into the text pairs a method trains on.
 * @throws InputError naming the record and field when the method needs a field the record lacks, or when
 *   `labelSource` contradicts a standard method.
 */
export function buildPairs(
  records: readonly TrainRecord[],
  method: Method,
  opts: { labelSource?: LabelSource } = {}
): PairSet {
  if (!isMethod(method))
    throw new InputError(`method is ${JSON.stringify(method)}; expected one of ${METHODS.join(', ')}`, 'method');
  const labelSource = opts.labelSource ?? defaultLabelSource(method);
  if (labelSource !== 'gold' && labelSource !== 'teacher') {
    throw new InputError(`labelSource is ${JSON.stringify(labelSource)}; expected 'gold' or 'teacher'`, 'labelSource');
  }
  if (method !== 'distill-step-by-step' && labelSource !== defaultLabelSource(method)) {
    throw new InputError(
      `labelSource is '${labelSource}' but ${method} trains on ${defaultLabelSource(method)} labels by definition`,
      'labelSource'
    );
  }
  if (!Array.isArray(records)) throw new InputError(`records is ${typeof records}; expected an array`, 'records');
  const text = (i: number, field: keyof TrainRecord): string => {
    const value = records[i]?.[field];
    if (typeof value !== 'string' || value.trim() === '') {
      const why = method === 'standard-finetune' ? '' : ` (${method} with ${labelSource} labels needs it)`;
      throw new InputError(
        `records[${i}].${field} is ${JSON.stringify(value)}; expected a non-empty string${why}`,
        `records[${i}].${field}`
      );
    }
    return value;
  };
  const labelField = labelSource === 'gold' ? 'goldLabel' : 'teacherLabel';
  if (method !== 'distill-step-by-step') {
    return { label: records.map((_, i) => ({ source: text(i, 'input'), target: text(i, labelField) })) };
  }
  return {
    label: records.map((_, i) => ({ source: PREDICT_PREFIX + text(i, 'input'), target: text(i, labelField) })),
    rationale: records.map((_, i) => ({ source: EXPLAIN_PREFIX + text(i, 'input'), target: text(i, 'rationale') })),
  };
}

/** Encoded, truncated pairs: token ids ending in eos. */
export interface EncodedPairs {
  sources: number[][];
  targets: number[][];
}

export interface EncodedSet {
  label: EncodedPairs;
  rationale?: EncodedPairs;
}

/** The length limits pairs are cut to, in tokens with eos included. */
export interface LengthLimits {
  maxInputLength: number;
  maxTargetLength: number;
  maxRationaleLength: number;
}

/** Token ids of each text, cut to `maxLength` with eos kept last (HF truncation counts the eos it appends). */
function encodeAll(tokenizer: StudentTokenizer, texts: readonly string[], maxLength: number): number[][] {
  return texts.map((text) => {
    const ids = tokenizer.encode(text);
    return ids.length <= maxLength ? ids : [...ids.slice(0, maxLength - 1), tokenizer.eosId];
  });
}

/** Label pairs (and rationale pairs) as truncated token ids, each target cut to its own length limit. */
export function encodePairs(tokenizer: StudentTokenizer, set: PairSet, limits: LengthLimits): EncodedSet {
  const encode = (pairs: TextPair[], maxTarget: number): EncodedPairs => ({
    sources: encodeAll(
      tokenizer,
      pairs.map((p) => p.source),
      limits.maxInputLength
    ),
    targets: encodeAll(
      tokenizer,
      pairs.map((p) => p.target),
      maxTarget
    ),
  });
  return {
    label: encode(set.label, limits.maxTargetLength),
    ...(set.rationale ? { rationale: encode(set.rationale, limits.maxRationaleLength) } : {}),
  };
}

/** Tokens of each example across all its sequences: what padding it to a batch's longest rows costs. */
export function exampleLengths(set: EncodedSet): number[] {
  return set.label.sources.map(
    (s, i) =>
      s.length +
      set.label.targets[i].length +
      (set.rationale ? set.rationale.sources[i].length + set.rationale.targets[i].length : 0)
  );
}
