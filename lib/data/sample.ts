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
import { InputError } from '../errors';
import type { PipelineSpec } from '../pipeline/spec';

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

async function loadSplits(data: PipelineSpec['data']): Promise<LoadedSplits> {
  switch (data.kind) {
    case 'demo': {
      const all = generateDemoTask({ n: data.size, seed: data.seed });
      // A split of our own generated data: seeded like everything else, so the demo is reproducible.
      const { train, valid: test } = trainValidSplit(all, DEMO_TEST_FRACTION, data.seed);
      return { source: `demo(size=${data.size},seed=${data.seed})`, train, test };
    }
    case 'reference': {
      const [train, test] = await Promise.all([
        loadReferenceSplit(data.dir, data.task, 'train'),
        loadReferenceSplit(data.dir, data.task, 'test'),
      ]);
      const valid = (await referenceSplitExists(data.dir, data.task, 'valid'))
        ? await loadReferenceSplit(data.dir, data.task, 'valid')
        : undefined;
      return { source: `reference:${data.dir}#${data.task}`, train, test, valid };
    }
    case 'jsonl': {
      const fields = { inputField: data.inputField, labelField: data.labelField };
      const [train, test, valid] = await Promise.all([
        loadJsonl(data.train, fields),
        loadJsonl(data.test, fields),
        data.valid ? loadJsonl(data.valid, fields) : Promise.resolve(undefined),
      ]);
      return { source: `jsonl:${data.train}`, train, test, valid };
    }
  }
}

/**
 * Load the dataset, subsample train with a seed, hold out validation where the data has none, write the splits.
 * @throws InputError when a split is empty or the sample leaves no training examples.
 */
export async function sampleDataset(
  store: ArtifactStore,
  spec: Pick<PipelineSpec, 'data' | 'sample'>
): Promise<SampleResult> {
  const loaded = await loadSplits(spec.data);
  for (const [name, rows] of Object.entries({ train: loaded.train, test: loaded.test })) {
    if (rows.length === 0) throw new InputError(`data: the ${name} split of ${loaded.source} is empty`, 'data');
  }
  const datasetHash = sha256Hex(canonicalJson({ train: loaded.train, test: loaded.test, valid: loaded.valid ?? null }));
  let train = subsample(loaded.train, spec.sample.fraction, spec.sample.seed);
  let valid: Example[];
  if (loaded.valid) valid = loaded.valid;
  else ({ train, valid } = trainValidSplit(train, spec.sample.validFraction, spec.sample.seed));
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
