/**
 * Properties of the promotion gate's decision library (lib/registry/gate.ts) over generated outcome vectors: McNemar's
 * p-value equals the exact binomial tail computed another way (BigInt rationals), up to n = 100k; pairing is by id
 * whatever the order; and no gate setting can promote a candidate its own rules forbid. The worked examples (the
 * issue's one-in-300 case, each rule's sentence) are in test/gate-decision.test.ts.
 */
import test from 'ava';
import fc from 'fast-check';
import { decideGate, mcNemarExact, pairOutcomes, type OutcomeRow } from '../lib/registry/gate';
import { DEFAULT_GATE, type GateSpec } from '../lib/pipeline/spec';
import { exactP } from './helpers/exact-mcnemar';

const RUNS = { numRuns: 200 };

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b));

test('the McNemar p-value equals the exact binomial tail for any discordant counts up to 1,200', (t) => {
  fc.assert(
    fc.property(fc.nat(600), fc.nat(600), (b, c) => {
      const p = mcNemarExact(b, c);
      const exact = exactP(b, c);
      if (!close(p, exact)) throw new Error(`(${b}, ${c}): ${p}, exactly ${exact}`);
    }),
    RUNS
  );
  t.pass();
});

test('the McNemar p-value stays exact at n = 100,000 discordant pairs', (t) => {
  for (const [b, c] of [
    [50_100, 49_900],
    [50_500, 49_500],
  ]) {
    const p = mcNemarExact(b, c);
    t.true(close(p, exactP(b, c)), `(${b}, ${c}): ${p} vs ${exactP(b, c)}`);
  }
  t.is(mcNemarExact(50_000, 50_000), 1);
  t.is(mcNemarExact(99_990, 10), 0, 'a tail below the smallest double reads as 0, not NaN');
});

test('the McNemar p-value is symmetric, within [0, 1], 1 when the counts differ by at most one, and falls as b grows', (t) => {
  fc.assert(
    fc.property(fc.nat(3000), fc.nat(3000), fc.integer({ min: 1, max: 50 }), (b, c, step) => {
      const p = mcNemarExact(b, c);
      if (p !== mcNemarExact(c, b)) throw new Error(`(${b}, ${c}) not symmetric`);
      if (!(p >= 0 && p <= 1)) throw new Error(`(${b}, ${c}): ${p} outside [0, 1]`);
      if (Math.abs(b - c) <= 1 && p !== 1) throw new Error(`(${b}, ${c}): ${p}, expected 1`);
      // More discordant pairs on the side already ahead is stronger evidence, never weaker.
      if (b >= c && mcNemarExact(b + step, c) > p) throw new Error(`(${b}+${step}, ${c}) above (${b}, ${c})`);
    }),
    RUNS
  );
  t.pass();
});

/** Two models' outcomes on the same examples: pairs of (candidate right, champion right). */
const outcomePairs = fc.array(fc.tuple(fc.boolean(), fc.boolean()), { minLength: 1, maxLength: 400, size: 'medium' });

const rowsOf = (pairs: [boolean, boolean][], side: 0 | 1): OutcomeRow[] =>
  pairs.map((p, i) => ({ id: `ex-${i}`, correct: p[side] }));

/** `rows` rotated by `by` and reversed: the same set in another order, as a second evaluate stage may write it. */
const reorder = (rows: OutcomeRow[], by: number) => {
  const k = by % rows.length;
  return [...rows.slice(k), ...rows.slice(0, k)].reverse();
};

test('pairing by id counts each kind of example exactly, in any order, and swapping the sides swaps b and c', (t) => {
  fc.assert(
    fc.property(outcomePairs, fc.nat(), (pairs, by) => {
      const candidate = rowsOf(pairs, 0);
      const champion = reorder(rowsOf(pairs, 1), by);
      const got = pairOutcomes(candidate, champion);
      const count = (a: boolean, b: boolean) => pairs.filter(([x, y]) => x === a && y === b).length;
      const n = pairs.length;
      const expected = {
        n,
        bothRight: count(true, true),
        candidateOnly: count(true, false),
        championOnly: count(false, true),
        bothWrong: count(false, false),
        candidateAccuracy: pairs.filter(([x]) => x).length / n,
        championAccuracy: pairs.filter(([, y]) => y).length / n,
      };
      t.deepEqual(got, expected);
      const swapped = pairOutcomes(champion, candidate);
      t.is(swapped.candidateOnly, got.championOnly);
      t.is(swapped.championOnly, got.candidateOnly);
      t.is(swapped.candidateAccuracy, got.championAccuracy);
    }),
    { numRuns: 100 }
  );
});

test('two different example sets are refused, naming how many ids each side lacks', (t) => {
  fc.assert(
    fc.property(outcomePairs, fc.nat(50), fc.nat(50), fc.nat(), (pairs, dropped, extra, by) => {
      fc.pre(dropped + extra > 0 && dropped <= pairs.length);
      const candidate = [
        ...rowsOf(pairs, 0).slice(dropped),
        ...Array.from({ length: extra }, (_, i) => ({ id: `new-${i}`, correct: true })),
      ];
      const champion = reorder(rowsOf(pairs, 1), by);
      const err = t.throws(() => pairOutcomes(candidate, champion));
      t.regex(
        err!.message,
        new RegExp(
          `not evaluated on the same examples: ${dropped} of the champion's ${pairs.length} are missing from the ` +
            `candidate's outcomes, ${extra} of the candidate's ${candidate.length} from the champion's`
        )
      );
    }),
    { numRuns: 100 }
  );
});

test('an example listed twice on either side is refused, naming it', (t) => {
  fc.assert(
    fc.property(outcomePairs, fc.nat(), fc.boolean(), (pairs, which, onCandidate) => {
      const candidate = rowsOf(pairs, 0);
      const champion = rowsOf(pairs, 1);
      const side = onCandidate ? candidate : champion;
      const twice = side[which % side.length];
      side.push({ ...twice, correct: !twice.correct });
      t.throws(() => pairOutcomes(candidate, champion), {
        message: new RegExp(`the ${onCandidate ? 'candidate' : 'champion'}'s outcomes repeat example "${twice.id}"`),
      });
    }),
    { numRuns: 50 }
  );
});

/**
 * Outcomes of two models with their own accuracies (0.3 to 0.9), so that runs often hold a significant difference
 * either way; uniform outcomes would nearly always be a coin-flip tie.
 */
const skewedPairs = fc
  .tuple(
    fc.constantFrom(0.3, 0.6, 0.9),
    fc.constantFrom(0.3, 0.6, 0.9),
    fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true })), {
      minLength: 20,
      maxLength: 400,
      size: 'max',
    })
  )
  .map(([pCandidate, pChampion, draws]) => draws.map(([u, v]): [boolean, boolean] => [u < pCandidate, v < pChampion]));

const gateOptions: fc.Arbitrary<GateSpec> = fc
  .record({
    minImprovement: fc.constantFrom(-1, -0.05, 0, 0, 0.01, 0.02, 0.05),
    mcNemarAlpha: fc.option(fc.constantFrom(0.01, 0.05, 0.1), { nil: undefined }),
    firstVersion: fc.constantFrom('beat-majority' as const, 'always' as const),
    requireBeatTeacher: fc.boolean(),
  })
  .map((o) => {
    const { mcNemarAlpha, ...rest } = o;
    return { ...DEFAULT_GATE, ...rest, ...(mcNemarAlpha === undefined ? {} : { mcNemarAlpha }) };
  });

const accuracyPct = (x: number) => `${(100 * x).toFixed(1)}%`;

test('no gate setting promotes a candidate its rules forbid, and each rule only ever makes the gate stricter', (t) => {
  fc.assert(
    fc.property(
      fc.oneof(outcomePairs, skewedPairs),
      gateOptions,
      // The teacher's accuracy as an offset from the candidate's, so that ties and near misses are common.
      fc.option(fc.constantFrom(-0.3, -0.005, 0, 0.005, 0.3), { nil: undefined }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      (pairs, gate, teacherOffset, majorityBaseline) => {
        const paired = pairOutcomes(rowsOf(pairs, 0), rowsOf(pairs, 1));
        const teacherAccuracy =
          teacherOffset === undefined ? undefined : Math.min(1, Math.max(0, paired.candidateAccuracy + teacherOffset));
        const input = {
          gate,
          candidate: { version: 3, accuracy: paired.candidateAccuracy },
          champion: { version: 2, accuracy: paired.championAccuracy },
          paired,
          majorityBaseline,
          ...(teacherAccuracy === undefined ? {} : { teacherAccuracy }),
        };
        const d = decideGate(input);
        const improvement = paired.candidateAccuracy - paired.championAccuracy;
        t.is(d.improvement, improvement);
        t.is(d.pValue, mcNemarExact(paired.candidateOnly, paired.championOnly), 'the p-value is recorded either way');
        t.true(d.reason.includes(accuracyPct(paired.candidateAccuracy)), d.reason);
        t.true(d.reason.includes(`v2 ${accuracyPct(paired.championAccuracy)}`), d.reason);
        if (d.outcome === 'pass') {
          t.true(improvement >= gate.minImprovement - 1e-12, d.reason);
          if (gate.mcNemarAlpha !== undefined) {
            t.true(d.pValue! < gate.mcNemarAlpha && paired.candidateOnly > paired.championOnly, d.reason);
          }
          if (gate.requireBeatTeacher) t.true(paired.candidateAccuracy >= teacherAccuracy!, d.reason);
        }
        // Where the other rules pass, the teacher rule decides alone: the candidate must reach the teacher (ties pass).
        const withoutTeacher = decideGate({ ...input, gate: { ...gate, requireBeatTeacher: false } });
        if (gate.requireBeatTeacher && withoutTeacher.outcome === 'pass') {
          const reaches = teacherAccuracy !== undefined && paired.candidateAccuracy >= teacherAccuracy;
          t.is(d.outcome, reaches ? 'pass' : 'fail', d.reason);
          t.is(d.rule, 'teacher');
        }
        // Dropping a requirement never turns a pass into a fail.
        const looser = [
          { ...gate, mcNemarAlpha: undefined },
          { ...gate, requireBeatTeacher: false },
          { ...gate, minImprovement: Math.max(-1, gate.minImprovement - 0.05) },
        ];
        if (d.outcome === 'pass') {
          for (const g of looser) t.is(decideGate({ ...input, gate: g }).outcome, 'pass', JSON.stringify(g));
        }
        // A tie passes a 0 margin when nothing else is asked: "at least as good".
        if (improvement === 0) {
          const tie = { ...DEFAULT_GATE, minImprovement: 0 };
          t.is(decideGate({ ...input, gate: tie }).outcome, 'pass');
        }
      }
    ),
    { numRuns: 300 }
  );
});

test("a significant difference in the champion's favour never promotes, even where the margin allows any loss", (t) => {
  fc.assert(
    fc.property(skewedPairs, fc.constantFrom(0.01, 0.05, 0.1), (pairs, alpha) => {
      const paired = pairOutcomes(rowsOf(pairs, 0), rowsOf(pairs, 1));
      const d = decideGate({
        gate: { ...DEFAULT_GATE, minImprovement: -1, mcNemarAlpha: alpha },
        candidate: { version: 3, accuracy: paired.candidateAccuracy },
        champion: { version: 2, accuracy: paired.championAccuracy },
        paired,
        majorityBaseline: 0,
      });
      const better = paired.candidateOnly > paired.championOnly && d.pValue! < alpha;
      t.is(d.outcome, better ? 'pass' : 'fail', d.reason);
      if (!better) t.is(d.rule, 'significance');
    }),
    RUNS
  );
});

test('with the teacher required, a candidate that clears the other rules passes exactly when it reaches the teacher', (t) => {
  fc.assert(
    fc.property(
      fc.oneof(outcomePairs, skewedPairs),
      fc.option(fc.constantFrom(-0.3, -0.005, 0, 0.005, 0.3), { nil: undefined }),
      (pairs, teacherOffset) => {
        const paired = pairOutcomes(rowsOf(pairs, 0), rowsOf(pairs, 1));
        const teacherAccuracy =
          teacherOffset === undefined ? undefined : Math.min(1, Math.max(0, paired.candidateAccuracy + teacherOffset));
        const d = decideGate({
          gate: { ...DEFAULT_GATE, minImprovement: -1, requireBeatTeacher: true },
          candidate: { version: 3, accuracy: paired.candidateAccuracy },
          champion: { version: 2, accuracy: paired.championAccuracy },
          paired,
          majorityBaseline: 0,
          ...(teacherAccuracy === undefined ? {} : { teacherAccuracy }),
        });
        const reaches = teacherAccuracy !== undefined && paired.candidateAccuracy >= teacherAccuracy;
        t.is(d.outcome, reaches ? 'pass' : 'fail', d.reason);
        t.is(d.rule, 'teacher');
        t.is(d.teacherAccuracy, teacherAccuracy);
      }
    ),
    RUNS
  );
});

test('a first version passes "beat-majority" exactly when it beats the baseline, and "always" regardless', (t) => {
  fc.assert(
    fc.property(fc.nat(300), fc.nat(300), fc.integer({ min: 1, max: 300 }), (right, majority, n) => {
      const accuracy = Math.min(right, n) / n;
      const majorityBaseline = Math.min(majority, n) / n;
      const input = { candidate: { version: 1, accuracy }, champion: null, majorityBaseline };
      const strict = decideGate({ ...input, gate: DEFAULT_GATE });
      t.is(strict.outcome, accuracy > majorityBaseline ? 'pass' : 'fail');
      t.is(strict.rule, 'first-version');
      t.is(strict.improvement, accuracy - majorityBaseline);
      t.is(decideGate({ ...input, gate: { ...DEFAULT_GATE, firstVersion: 'always' } }).outcome, 'pass');
    }),
    RUNS
  );
});
