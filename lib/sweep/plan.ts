/**
 * A sweep: one pipeline run per (method, training fraction, seed) of a base spec, the paper's comparison as a grid.
 * This module turns a sweep's definition into its cells: each cell's spec, its registry name and its workflow id
 * (the same id `stepwise run` would give that spec, so a cell and a plain run of the same spec are one run), and
 * finds the cells a finished run already answered, in the registry, so they are reused instead of trained again.
 */
import { InputError } from '../errors';
import { parseSpec, taskOf, type PipelineSpec, type PipelineSpecInput, type TaskKind } from '../pipeline/spec';
import { runWorkflowId, canonicalJson, dataHash } from '../pipeline/run-identity';
import { METHODS, type Method } from '../student/options';
import { getVersion, listVersions, type ModelVersion } from '../registry/registry';
import { sampleDataset } from '../data/sample';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import { createHash } from 'node:crypto';
import type { SweepCell } from './summary';

/** What a user asks for: the base spec and the grid. */
export interface SweepDefinition {
  spec: PipelineSpecInput;
  methods: Method[];
  fractions: number[];
  seeds: number[];
}

/** One cell as planned: what to run, and its outcome when a finished run already answered it. */
export interface SweepCellPlan {
  method: Method;
  fraction: number;
  seed: number;
  name: string;
  workflowId: string;
  /** The cell's spec, validated, defaults filled in: exactly what the child pipeline runs. */
  spec: PipelineSpec;
  /** A registered version of this very spec on this very data: reused, not trained again. */
  reused?: SweepCell;
}

export interface SweepPlan {
  task: TaskKind;
  /** The split each cell's evaluate stage scores. */
  split: 'test' | 'valid';
  cells: SweepCellPlan[];
  /** The scored split (identical in every cell: validation is carved before subsampling), for the teacher's score. */
  evalSet: ArtifactRef;
  /** The base spec's name, for the report. */
  specName: string;
}

/** Most cells one sweep may hold: each is a child workflow of the sweep, and its history must stay small. */
export const MAX_CELLS = 500;

const METHOD_TAGS: Record<Method, string> = {
  'standard-finetune': 'ft',
  'standard-distill': 'sd',
  'distill-step-by-step': 'dss',
};

/** `<name>-<ft|sd|dss>-f<fraction>-s<seed>`: a cell's registry name, readable in `stepwise models ls`. */
export function cellName(base: string, method: Method, fraction: number, seed: number): string {
  return `${base}-${METHOD_TAGS[method]}-f${fraction}-s${seed}`;
}

function listOf<T>(field: string, values: readonly T[], valid: (v: T) => boolean, expected: string): T[] {
  if (!Array.isArray(values) || values.length === 0) {
    throw new InputError(`${field} is empty; expected at least one ${expected}`, field);
  }
  for (const v of values) {
    if (!valid(v)) throw new InputError(`${field} has ${JSON.stringify(v)}; expected ${expected}`, field);
  }
  const unique = new Set(values.map((v) => JSON.stringify(v)));
  if (unique.size !== values.length) throw new InputError(`${field} repeats a value: ${values.join(',')}`, field);
  return [...values];
}

/**
 * The grid, checked: methods known, fractions in (0, 1], seeds integers, no repeats, not more than {@link MAX_CELLS}.
 * @throws InputError naming the list (`methods`, `fractions`, `seeds`) and the bad value.
 */
export function checkSweep(def: Omit<SweepDefinition, 'spec'>): Omit<SweepDefinition, 'spec'> {
  const methods = listOf('methods', def.methods, (m) => (METHODS as readonly string[]).includes(m), METHODS.join('|'));
  const fractions = listOf(
    'fractions',
    def.fractions,
    (f) => typeof f === 'number' && f > 0 && f <= 1,
    'a number in (0, 1]'
  );
  const seeds = listOf('seeds', def.seeds, (s) => Number.isSafeInteger(s), 'an integer');
  const count = methods.length * fractions.length * seeds.length;
  if (count > MAX_CELLS) {
    throw new InputError(`the sweep has ${count} cells; expected at most ${MAX_CELLS}`, 'methods');
  }
  return { methods, fractions: [...fractions].sort((a, b) => a - b), seeds };
}

/**
 * A cell's spec: the base with the method, the training fraction and the seed set, under the cell's own name, gate
 * off (a sweep measures; promoting a grid's winner is a decision for a person or a separate run). The seed is the
 * student's (initial weights, batches, dropout); `sample.seed` stays the base's, so every cell validates on the same
 * held-out examples and the cells of one fraction train on the same subset.
 * @throws InputError when the cell's name would be too long or its spec does not validate.
 */
export function cellSpec(base: PipelineSpec, method: Method, fraction: number, seed: number): PipelineSpec {
  const name = cellName(base.name, method, fraction, seed);
  // The spec's own name rule (lowercase, 63 characters), so the cell's spec validates.
  if (name.length > 63) {
    throw new InputError(
      `name ${JSON.stringify(base.name)} is too long for a sweep: its cell names (${name}) must fit 63 characters`,
      'name'
    );
  }
  // A label source belongs to distilling step-by-step; the standard methods have theirs by definition.
  const { labelSource, ...student } = base.student;
  return parseSpec({
    ...base,
    name,
    sample: { ...base.sample, fraction },
    student: { ...student, method, seed, ...(method === 'distill-step-by-step' && labelSource ? { labelSource } : {}) },
    gate: { ...base.gate, enabled: false },
  });
}

/**
 * The sweep's workflow id: `stepwise-sweep-<name>-<12 hex>` of the base spec, the grid and the data, so the same
 * command attaches to its sweep in flight (and a finished one reports again). `--parallel` is left out: it changes
 * how fast, not what.
 */
export async function sweepWorkflowId(def: SweepDefinition): Promise<string> {
  const base = parseSpec(def.spec);
  const grid = checkSweep(def);
  const digest = createHash('sha256')
    .update(canonicalJson({ spec: base, ...grid }))
    .update('\n')
    .update(await dataHash(base))
    .digest('hex');
  return `stepwise-sweep-${base.name}-${digest.slice(0, 12)}`;
}

/** The newest registered version of `name` that run `workflowId` registered, if any. */
export async function registeredRun(
  store: ArtifactStore,
  name: string,
  workflowId: string
): Promise<ModelVersion | undefined> {
  const versions = await listVersions(store, name);
  for (const v of versions.reverse()) {
    const version = await getVersion(store, name, v);
    if (version?.lineage.workflowId === workflowId) return version;
  }
  return undefined;
}

/** A registered version as a sweep cell's outcome. */
export function cellFromVersion(plan: Omit<SweepCellPlan, 'spec' | 'reused'>, v: ModelVersion): SweepCell {
  const { method, fraction, seed, name, workflowId } = plan;
  const metrics = v.metrics as ModelVersion['metrics'] & {
    baselines?: { bestOperation?: { operation: string; accuracy: number } };
  };
  return {
    method,
    fraction,
    seed,
    name,
    workflowId,
    version: v.version,
    status: 'reused',
    accuracy: metrics.accuracy,
    correct: metrics.correct,
    total: metrics.total,
    majorityBaseline: metrics.majorityBaseline,
    ...(metrics.baselines?.bestOperation ? { bestOperation: metrics.baselines.bestOperation } : {}),
    backend: v.lineage.training.backend,
  };
}

/**
 * Plans a sweep: every cell's spec, name and workflow id, and the cells a finished run already answered (found in
 * the registry by workflow id, so reuse survives Temporal's retention of closed runs). Also samples the base spec
 * once, for the scored split the teacher is measured on. Reads only, apart from the content-addressed splits the
 * sample stage would write anyway.
 * @throws InputError for a bad grid or spec, or data the sample stage refuses.
 */
export async function planSweep(
  store: ArtifactStore,
  def: SweepDefinition,
  roots?: readonly string[]
): Promise<SweepPlan> {
  const base = parseSpec(def.spec);
  const grid = checkSweep(def);
  const cells: SweepCellPlan[] = [];
  // Cells differ in method, fraction and seed only: they read the same files, hashed once here.
  const hash = await dataHash(base);
  for (const method of grid.methods) {
    for (const fraction of grid.fractions) {
      for (const seed of grid.seeds) {
        const spec = cellSpec(base, method, fraction, seed);
        const workflowId = await runWorkflowId(spec, hash);
        const cell = { method, fraction, seed, name: spec.name, workflowId };
        const found = await registeredRun(store, spec.name, workflowId);
        cells.push({ ...cell, spec, ...(found ? { reused: cellFromVersion(cell, found) } : {}) });
      }
    }
  }
  const sampled = await sampleDataset(store, { ...base, sample: { ...base.sample, fraction: 1 } }, roots);
  const split = base.evaluate.split ?? 'test';
  return {
    task: taskOf(base),
    split,
    cells,
    evalSet: split === 'valid' ? sampled.valid : sampled.test,
    specName: base.name,
  };
}
