/**
 * The fault tests' afterEach hook that records figures once a test's outcome is known. Kept apart from figures.ts,
 * which `bench/faults.ts` imports outside ava (importing ava there throws).
 */
import test from 'ava';
import { recordFigures, type FaultFigures } from './figures';

/**
 * For a test file whose faults are recorded once each test's outcome is known (ava's `t.passed` is accurate in
 * afterEach, and a failed assertion throws, so a record at the end of a test body is never reached on failure):
 * returns `expect(name, figures)`, whose figures the file's afterEach hook records, with `faultsSurvived: 0` when
 * the test failed. Call once, at the top level of the test file.
 */
export function figuresOnOutcome(): (name: string, figures: FaultFigures) => FaultFigures {
  let pending: { name: string; figures: FaultFigures } | undefined;
  test.afterEach.always((t) => {
    if (!pending) return;
    const { name, figures } = pending;
    pending = undefined;
    recordFigures(name, t.passed ? figures : { ...figures, faultsSurvived: 0 });
  });
  return (name, figures) => {
    pending = { name, figures };
    return figures;
  };
}
