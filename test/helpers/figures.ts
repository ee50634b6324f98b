/**
 * The fault suite's figures. Each fault test asserts its own claim; when `STEPWISE_FAULT_FIGURES` names a folder
 * (`npm run bench:faults` sets it) it also writes what it tried and what it saw there, one JSON file per record, and
 * the bench adds them up. Outside the bench this is a no-op, so tests never depend on it.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';

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
