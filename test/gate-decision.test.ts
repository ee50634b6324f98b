/**
 * The gate's decision (lib/registry/gate.ts): McNemar's exact test against exact rational arithmetic, pairing by
 * example id, and each rule, including the issue's case of a candidate better by one example out of 300.
 */
import test from 'ava';
import { decideGate, mcNemarExact, pairOutcomes, type OutcomeRow } from '../lib/registry/gate';
import { DEFAULT_GATE, type GateSpec } from '../lib/pipeline/spec';
import { exactP } from './helpers/exact-mcnemar';

test('McNemar exact p-values equal exact binomial sums, are symmetric, and stay finite at large n', (t) => {
  for (const [b, c] of [
    [0, 0],
    [1, 0],
    [5, 5],
    [30, 5],
    [10, 2],
    [51, 49],
    [120, 80],
    [700, 640],
  ]) {
    const p = mcNemarExact(b, c);
    t.true(
      Math.abs(p - exactP(b, c)) <= 1e-9 * Math.max(1, exactP(b, c)) + 1e-15,
      `(${b}, ${c}): ${p} vs ${exactP(b, c)}`
    );
    t.is(mcNemarExact(c, b), p, 'symmetric');
  }
  t.is(mcNemarExact(7, 7), 1);
  t.true(mcNemarExact(30, 5) < 1e-4);
  const huge = mcNemarExact(50_000, 49_000);
  t.true(Number.isFinite(huge) && huge > 0 && huge < 0.01, String(huge));
  t.throws(() => mcNemarExact(-1, 2), { instanceOf: RangeError });
});

const rows = (pattern: boolean[], prefix = 'ex'): OutcomeRow[] =>
  pattern.map((correct, i) => ({ id: `${prefix}${i}`, correct }));

test('outcomes pair by example id, and two different sets are refused naming the counts', (t) => {
  const champion = rows([true, true, false, false]);
  const candidate = rows([true, false, true, false]).reverse();
  t.deepEqual(pairOutcomes(candidate, champion), {
    n: 4,
    bothRight: 1,
    candidateOnly: 1,
    championOnly: 1,
    bothWrong: 1,
    candidateAccuracy: 0.5,
    championAccuracy: 0.5,
  });
  t.throws(() => pairOutcomes(rows([true, true, true]), rows([true, true], 'other')), {
    message:
      /not evaluated on the same examples: 2 of the champion's 2 are missing from the candidate's outcomes, 3 of the candidate's 3/,
  });
  t.throws(() => pairOutcomes([...rows([true]), ...rows([false])], rows([true])), { message: /repeat example "ex0"/ });
});

const gate = (patch: Partial<GateSpec> = {}): GateSpec => ({ ...DEFAULT_GATE, ...patch });

/** Outcomes on 300 examples where the candidate and champion differ on `b` + `c` examples. */
function scenario(both: number, b: number, c: number, n = 300) {
  const cand: boolean[] = [];
  const champ: boolean[] = [];
  for (let i = 0; i < n; i++) {
    const kind = i < both ? 'both' : i < both + b ? 'b' : i < both + b + c ? 'c' : 'none';
    cand.push(kind === 'both' || kind === 'b');
    champ.push(kind === 'both' || kind === 'c');
  }
  const paired = pairOutcomes(rows(cand), rows(champ));
  return {
    paired,
    candidate: { version: 2, accuracy: paired.candidateAccuracy },
    champion: { version: 1, accuracy: paired.championAccuracy },
    majorityBaseline: 0.5,
  };
}

test('a candidate better by one example out of 300 passes a 0 margin but is not promoted at α = 0.05', (t) => {
  const s = scenario(200, 11, 10);
  t.is(decideGate({ ...s, gate: gate() }).outcome, 'pass');
  const d = decideGate({ ...s, gate: gate({ mcNemarAlpha: 0.05 }) });
  t.is(d.outcome, 'fail');
  t.is(d.rule, 'significance');
  t.true(d.pValue! > 0.05);
  t.regex(d.reason, /candidate 70\.3% vs champion v1 70\.0%: \+0\.3 points, but McNemar p = 1\.00 on 11 vs 10/);
  // A real improvement does pass the test.
  const strong = decideGate({ ...scenario(180, 40, 10), gate: gate({ mcNemarAlpha: 0.05 }) });
  t.is(strong.outcome, 'pass', strong.reason);
  t.true(strong.pValue! < 0.001);
  // Significantly worse is not promoted either, whatever the margin allows.
  t.is(
    decideGate({ ...scenario(180, 10, 40), gate: gate({ minImprovement: -1, mcNemarAlpha: 0.05 }) }).outcome,
    'fail'
  );
});

test('the margin rule, the first-version rule and the teacher rule', (t) => {
  const s = scenario(200, 12, 6);
  const margin = decideGate({ ...s, gate: gate({ minImprovement: 0.05 }) });
  t.is(margin.outcome, 'fail');
  t.is(margin.rule, 'margin');
  t.regex(margin.reason, /\+2\.0 points, below the required \+5\.0 points/);
  t.is(decideGate({ ...s, gate: gate({ minImprovement: 0.02 }) }).outcome, 'pass', 'exactly the margin passes');

  const first = { candidate: { version: 1, accuracy: 0.55 }, champion: null, majorityBaseline: 0.6 };
  const below = decideGate({ ...first, gate: gate() });
  t.is(below.outcome, 'fail');
  t.regex(below.reason, /does not beat the majority-class baseline/);
  t.is(decideGate({ ...first, gate: gate({ firstVersion: 'always' }) }).outcome, 'pass');
  t.is(decideGate({ ...first, majorityBaseline: 0.5, gate: gate() }).outcome, 'pass');

  const teacher = { ...s, gate: gate({ requireBeatTeacher: true }) };
  t.is(decideGate({ ...teacher, teacherAccuracy: 0.9 }).outcome, 'fail');
  t.is(decideGate({ ...teacher, teacherAccuracy: 0.6 }).outcome, 'pass');
  t.regex(decideGate(teacher).reason, /was not measured/);
  t.is(
    decideGate({ ...s, gate: gate(), teacherAccuracy: 0.9 }).teacherAccuracy,
    0.9,
    'recorded even when not required'
  );
});
