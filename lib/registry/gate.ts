/**
 * The promotion gate's decision: pure functions over per-example outcomes. Whether a candidate replaces the champion
 * is decided on the same frozen evaluation set, paired example by example, so the comparison is of the models and
 * not of two test sets; McNemar's exact test on the discordant pairs says whether a difference is more than noise.
 */
import type { GateSpec } from '../pipeline/spec';

export type GateOptions = GateSpec;

/** log Γ(x) for x > 0 (Lanczos, g = 7, n = 9): enough for binomial tails at any n a test set has. */
function logGamma(x: number): number {
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
    12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** log C(n, k). */
const logChoose = (n: number, k: number) => logGamma(n + 1) - logGamma(k + 1) - logGamma(n - k + 1);

/**
 * The two-sided exact McNemar p-value for `b` pairs the candidate alone got right and `c` the champion alone got
 * right: under "no difference" each discordant pair goes either way with probability 1/2, so the p-value is
 * min(1, 2·P(X ≤ min(b, c))) for X ~ Binomial(b + c, 1/2). Stable to n = 100k and beyond: no factorial
 * is ever formed, only its logarithm (tails below 1e-308 read as 0).
 */
export function mcNemarExact(b: number, c: number): number {
  for (const [name, v] of [
    ['b', b],
    ['c', c],
  ] as const) {
    if (!Number.isInteger(v) || v < 0) throw new RangeError(`mcNemarExact: ${name} must be a count, got ${v}`);
  }
  // |b − c| ≤ 1 gives exactly 1 (the tail up to min(b, c) holds half the mass or more): said outright, not summed
  // to 1 − ε, so a tie reads p = 1.
  if (Math.abs(b - c) <= 1) return 1;
  const n = b + c;
  const k = Math.min(b, c);
  // Walk the tail down from its largest term, P(X = k), in units of that term: each step multiplies by
  // i / (n − i + 1) < 1, so the sum never overflows and stops once the terms no longer change it. Only the one
  // log-space term carries lgamma's rounding (about 1e-11 relative at n = 100k).
  let term = 1;
  let sum = 1;
  for (let i = k; i > 0 && term > sum * 1e-17; i--) {
    term *= i / (n - i + 1);
    sum += term;
  }
  const logTail = logChoose(n, k) - n * Math.LN2 + Math.log(sum);
  return Math.min(1, 2 * Math.exp(logTail));
}

/** One example's outcome, as the evaluate stage's predictions JSONL records it. */
export interface OutcomeRow {
  id: string;
  correct: boolean;
}

export interface PairedOutcomes {
  n: number;
  bothRight: number;
  /** b: the candidate right, the champion wrong. */
  candidateOnly: number;
  /** c: the champion right, the candidate wrong. */
  championOnly: number;
  bothWrong: number;
  candidateAccuracy: number;
  championAccuracy: number;
}

/**
 * Pair two models' outcomes on one evaluation set by example id.
 * @throws Error when the two are not the same set (ids missing on either side, or repeated): a comparison across
 *   different examples is exactly what the gate exists to avoid.
 */
export function pairOutcomes(candidate: readonly OutcomeRow[], champion: readonly OutcomeRow[]): PairedOutcomes {
  const byId = (rows: readonly OutcomeRow[], who: string) => {
    const map = new Map<string, boolean>();
    for (const r of rows) {
      if (map.has(r.id)) throw new Error(`gate: the ${who}'s outcomes repeat example ${JSON.stringify(r.id)}`);
      map.set(r.id, r.correct);
    }
    return map;
  };
  const cand = byId(candidate, 'candidate');
  const champ = byId(champion, 'champion');
  const missingFromCandidate = [...champ.keys()].filter((id) => !cand.has(id)).length;
  const missingFromChampion = [...cand.keys()].filter((id) => !champ.has(id)).length;
  if (missingFromCandidate || missingFromChampion) {
    throw new Error(
      `gate: the candidate and the champion were not evaluated on the same examples: ${missingFromCandidate} of the ` +
        `champion's ${champ.size} are missing from the candidate's outcomes, ${missingFromChampion} of the ` +
        `candidate's ${cand.size} from the champion's`
    );
  }
  let bothRight = 0;
  let candidateOnly = 0;
  let championOnly = 0;
  let bothWrong = 0;
  for (const [id, a] of cand) {
    const b = champ.get(id)!;
    if (a && b) bothRight++;
    else if (a) candidateOnly++;
    else if (b) championOnly++;
    else bothWrong++;
  }
  const n = cand.size;
  return {
    n,
    bothRight,
    candidateOnly,
    championOnly,
    bothWrong,
    candidateAccuracy: n ? (bothRight + candidateOnly) / n : 0,
    championAccuracy: n ? (bothRight + championOnly) / n : 0,
  };
}

export interface GateInput {
  gate: GateOptions;
  candidate: { version: number; accuracy: number };
  /** The version the alias names, with its accuracy on the frozen set; null for a model's first promotion. */
  champion: { version: number; accuracy: number } | null;
  /** The paired outcomes on the frozen set (required when there is a champion). */
  paired?: PairedOutcomes;
  /** The majority-class baseline's accuracy on the frozen set. */
  majorityBaseline: number;
  /** The teacher's accuracy on the same examples, where it was measured. */
  teacherAccuracy?: number;
}

/** The gate's verdict, as it is recorded on the version and in the audit log. */
export interface GateDecision {
  outcome: 'pass' | 'fail';
  /** The rule that decided: the first that failed, or the last that passed. */
  rule: 'first-version' | 'margin' | 'significance' | 'teacher';
  /** One sentence with both numbers. */
  reason: string;
  metric: 'accuracy';
  candidate: { version: number; accuracy: number };
  champion?: { version: number; accuracy: number };
  /** Candidate minus champion (or minus the majority baseline for a first version), in accuracy points 0–1. */
  improvement: number;
  minImprovement: number;
  /** Discordant pairs: b (candidate alone right), c (champion alone right). */
  discordant?: { candidateOnly: number; championOnly: number; n: number };
  pValue?: number;
  alpha?: number;
  majorityBaseline: number;
  teacherAccuracy?: number;
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const points = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)} points`;

/**
 * Decide. A first version passes if it beats the majority-class baseline (or always, by `firstVersion`); a later one
 * must gain at least `minImprovement` over the champion (0: a tie passes), then, with `mcNemarAlpha`, be better with
 * p < alpha; with `requireBeatTeacher`, also reach the teacher's accuracy on the same examples.
 */
export function decideGate(input: GateInput): GateDecision {
  const { gate, candidate, champion } = input;
  const base = {
    metric: 'accuracy' as const,
    candidate,
    minImprovement: gate.minImprovement,
    majorityBaseline: input.majorityBaseline,
    ...(input.teacherAccuracy === undefined ? {} : { teacherAccuracy: input.teacherAccuracy }),
  };
  const fail = (rule: GateDecision['rule'], reason: string, extra: Partial<GateDecision>): GateDecision => ({
    ...base,
    improvement: 0,
    ...extra,
    outcome: 'fail',
    rule,
    reason,
  });

  let decided: GateDecision;
  if (!champion) {
    const improvement = candidate.accuracy - input.majorityBaseline;
    const vs = `candidate ${pct(candidate.accuracy)} vs majority-class baseline ${pct(input.majorityBaseline)}`;
    if (gate.firstVersion === 'beat-majority' && improvement <= 0) {
      return fail('first-version', `first version: ${vs}: does not beat the majority-class baseline`, { improvement });
    }
    decided = {
      ...base,
      outcome: 'pass',
      rule: 'first-version',
      improvement,
      reason:
        gate.firstVersion === 'always'
          ? `first version, promoted by rule (${vs})`
          : `first version: ${vs}: beats the majority-class baseline`,
    };
  } else {
    if (!input.paired) throw new Error('gate: a comparison with a champion needs the paired outcomes');
    const p = input.paired;
    const improvement = candidate.accuracy - champion.accuracy;
    const vs = `candidate ${pct(candidate.accuracy)} vs champion v${champion.version} ${pct(champion.accuracy)}: ${points(improvement)}`;
    const discordant = { candidateOnly: p.candidateOnly, championOnly: p.championOnly, n: p.n };
    const pValue = mcNemarExact(p.candidateOnly, p.championOnly);
    const compared = { champion, improvement, discordant, pValue };
    // A rounding hair below the margin (0.1 + 0.2) is not a failure.
    if (improvement < gate.minImprovement - 1e-12) {
      return fail('margin', `${vs}, below the required ${points(gate.minImprovement)}`, compared);
    }
    if (gate.mcNemarAlpha !== undefined) {
      const alpha = gate.mcNemarAlpha;
      const test = `McNemar p = ${pValue.toPrecision(3)} on ${p.candidateOnly} vs ${p.championOnly} discordant examples`;
      if (!(pValue < alpha) || p.candidateOnly <= p.championOnly) {
        return fail('significance', `${vs}, but ${test} is not below α = ${alpha}: not a significant improvement`, {
          ...compared,
          alpha,
        });
      }
      decided = {
        ...base,
        ...compared,
        alpha,
        outcome: 'pass',
        rule: 'significance',
        reason: `${vs}; ${test} < α = ${alpha}`,
      };
    } else {
      decided = {
        ...base,
        ...compared,
        outcome: 'pass',
        rule: 'margin',
        reason: `${vs}, at least the required ${points(gate.minImprovement)}`,
      };
    }
  }
  if (gate.requireBeatTeacher) {
    if (input.teacherAccuracy === undefined) {
      return fail(
        'teacher',
        `${decided.reason}; but the teacher's accuracy on these examples was not measured`,
        decided
      );
    }
    if (candidate.accuracy < input.teacherAccuracy) {
      return fail(
        'teacher',
        `${decided.reason}; but below the teacher's ${pct(input.teacherAccuracy)} on the same examples`,
        decided
      );
    }
    decided = {
      ...decided,
      rule: 'teacher',
      reason: `${decided.reason}; matches the teacher's ${pct(input.teacherAccuracy)}`,
    };
  }
  return decided;
}
