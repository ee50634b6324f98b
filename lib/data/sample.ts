/**
 * The sample stage's work: load a dataset (generated, the reference layout, or JSONL files), subsample it, split off
 * validation, and store the splits by content. The hashes it returns identify the dataset version and exactly what
 * a run trained and tested on.
 */
import { canonicalJson, sha256Hex, type ArtifactRef, type ArtifactStore } from '../store/artifact-store';
import type { Example } from './types';
import { loadReferenceSplit, referenceSplitExists } from './reference';
import { loadJsonl } from './jsonl';
import { generateDemoTask } from './demo-task';
import { subsample, trainValidSplit } from './splits';
import { InputError, inputErrorAt, withInputField } from '../errors';
import { isModelRef, type PipelineSpec } from '../pipeline/spec';
import { resolveRef } from '../registry/refs';
import { checkSpecPaths, resolveInRoots } from './roots';

export interface SampleResult {
  /** sha256 over the full loaded splits, before subsampling: identifies the dataset version. */
  datasetHash: string;
  /** sha256 over the sampled split references: identifies exactly what this run trained and tested on. */
  sampleHash: string;
  /** Human-readable origin, e.g. `reference:/data/cqa` or `demo(seed=7,size=1500)`. */
  source: string;
  train: ArtifactRef;
  valid: ArtifactRef;
  test: ArtifactRef;
  counts: { train: number; valid: number; test: number };
}

/** Share of the generated demo examples held out as its test split. */
const DEMO_TEST_FRACTION = 0.2;

interface LoadedSplits {
  source: string;
  train: Example[];
  test: Example[];
  valid?: Example[];
}

/**
 * Reads one spec-named path: checked against the roots again at the read itself (the path may have changed since the
 * stage's first check), and with a loader's InputError restated against the spec field that named the file.
 */
function readAt<T>(field: string, path: string, roots: readonly string[] | undefined, load: () => Promise<T>) {
  return withInputField(field, async () => {
    if (roots) await resolveInRoots(path, field, roots);
    return load();
  });
}

async function loadSplits(data: PipelineSpec['data'], roots: readonly string[] | undefined): Promise<LoadedSplits> {
  switch (data.kind) {
    case 'demo': {
      const all = generateDemoTask({ n: data.size, seed: data.seed });
      // A split of our own generated data: seeded like everything else, so the demo is reproducible.
      const { train, valid: test } = trainValidSplit(all, DEMO_TEST_FRACTION, data.seed);
      return { source: `demo(size=${data.size},seed=${data.seed})`, train, test };
    }
    case 'reference': {
      const load = (split: 'train' | 'test' | 'valid') =>
        readAt('data.dir', data.dir, roots, () => loadReferenceSplit(data.dir, data.task, split));
      const [train, test] = await Promise.all([load('train'), load('test')]);
      const valid = (await referenceSplitExists(data.dir, data.task, 'valid')) ? await load('valid') : undefined;
      return { source: `reference:${data.dir}#${data.task}`, train, test, valid };
    }
    case 'jsonl': {
      const fields = { inputField: data.inputField, labelField: data.labelField, idField: data.idField };
      const load = (field: string, path: string) => readAt(field, path, roots, () => loadJsonl(path, fields));
      const [train, test, valid] = await Promise.all([
        load('data.train', data.train),
        load('data.test', data.test),
        data.valid ? load('data.valid', data.valid) : Promise.resolve(undefined),
      ]);
      return { source: `jsonl:${data.train}`, train, test, valid };
    }
  }
}

/**
 * Load the dataset, hold out validation where the data has none, subsample the rest of train with a seed, write the
 * splits.
 * With `roots` (a worker always passes its own), every path the spec names is checked first: under the roots, there,
 * and `student.init` a checkpoint (or a registered version: `NAME@REF`); nothing is read or written before that
 * (lib/data/roots.ts).
 * @throws InputError when a path is outside the roots or wrong, a split is empty or duplicates an example id (jsonl
 *   with an id field), or the sample leaves no training examples.
 */
export async function sampleDataset(
  store: ArtifactStore,
  spec: Pick<PipelineSpec, 'data' | 'sample'> & Partial<Pick<PipelineSpec, 'teacher' | 'student'>>,
  roots?: readonly string[]
): Promise<SampleResult> {
  if (roots) await checkSpecPaths(spec, roots);
  // A registered version as the init must exist before a teacher is paid; training resolves it again, once.
  const init = spec.student?.init;
  if (init !== undefined && isModelRef(init)) await resolveRef(store, init, 'student.init');
  const loaded = await loadSplits(spec.data, roots);
  for (const [name, rows] of Object.entries({ train: loaded.train, test: loaded.test })) {
    if (rows.length === 0) throw new InputError(`data: the ${name} split of ${loaded.source} is empty`, 'data');
  }
  const datasetHash = sha256Hex(canonicalJson({ train: loaded.train, test: loaded.test, valid: loaded.valid ?? null }));
  let train: Example[];
  let valid: Example[];
  try {
    // Validation is carved from the whole training split first, as the reference does, then the rest subsampled: every
    // fraction validates on the same examples, and a small fraction still validates on a tenth of the data.
    let rest = loaded.train;
    if (loaded.valid) valid = loaded.valid;
    else ({ train: rest, valid } = trainValidSplit(loaded.train, spec.sample.validFraction, spec.sample.seed));
    train = subsample(rest, spec.sample.fraction, spec.sample.seed);
  } catch (err) {
    // The split helpers name their own parameter (`validFraction`); the user wrote it under `sample`.
    if (err instanceof InputError) throw inputErrorAt(`sample.${err.field ?? 'fraction'}`, err);
    throw err;
  }
  if (train.length === 0) {
    throw new InputError(
      `sample.fraction: got ${spec.sample.fraction}, which leaves no training examples of ${loaded.train.length}`,
      'sample.fraction'
    );
  }
  const [trainRef, validRef, testRef] = await Promise.all([
    store.putJsonl(train),
    store.putJsonl(valid),
    store.putJsonl(loaded.test),
  ]);
  return {
    datasetHash,
    sampleHash: sha256Hex(canonicalJson({ train: trainRef.sha256, valid: validRef.sha256, test: testRef.sha256 })),
    source: loaded.source,
    train: trainRef,
    valid: validRef,
    test: testRef,
    counts: { train: train.length, valid: valid.length, test: loaded.test.length },
  };
}
