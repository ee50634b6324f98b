/**
 * The fault suite's figures. Each fault test asserts its own claim; when `STEPWISE_FAULT_FIGURES` names a folder
 * (`npm run bench:faults` sets it) it also writes what it tried and what it saw there, one JSON file per record, and
 * the bench adds them up. Outside the bench this is a no-op, so tests never depend on it.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import test from 'ava';

export interface FaultFigures {
  /** Faults injected, and how many of them the run survived (completed with the promised outcome). */
  faultsTried?: number;
  faultsSurvived?: number;
  /** Examples present in the input but missing from what the run produced. */
  examplesLost?: number;
  /** Teacher requests answered more than once for the same example. */
  teacherCallsRepeated?: number;
  /** Registry versions beyond one per run. */
  registryDuplicates?: number;
  badInputsTried?: number;
  badInputsRejectedCleanly?: number;
  /** Canary secrets found anywhere they must not be. */
  secretsFound?: number;
}

export const FIGURE_NAMES: (keyof FaultFigures)[] = [
  'faultsTried',
  'faultsSurvived',
  'examplesLost',
  'teacherCallsRepeated',
  'registryDuplicates',
  'badInputsTried',
  'badInputsRejectedCleanly',
  'secretsFound',
];

/** Record one fault's figures (a no-op unless the bench asked for them). `name` says which fault, for the log. */
export function recordFigures(name: string, figures: FaultFigures): void {
  const dir = process.env.STEPWISE_FAULT_FIGURES;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name.replace(/[^a-zA-Z0-9_-]+/g, '-')}-${randomUUID().slice(0, 8)}.json`);
  writeFileSync(file, JSON.stringify({ name, ...figures }));
}

/**
 * `quick` (the default, what `npm test` runs) or `full` (`STEPWISE_FAULTS=full`, what `npm run bench:faults` runs
 * without `--quick`): full mode tries every variant of a fault and the larger loads.
 */
export function faultMode(): 'quick' | 'full' {
  return process.env.STEPWISE_FAULTS === 'full' ? 'full' : 'quick';
}

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
