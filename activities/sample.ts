import type { ArtifactStore } from '../lib/store/artifact-store';
import { sampleDataset } from '../lib/data/sample';
import type { PipelineSpec, SampleResult } from '../contract';
import { mapErrors, withKeepalive } from './progress';

/**
 * Load, subsample and split the dataset; write the splits to the store. With `dataRoots` (every worker passes its
 * `STEPWISE_DATA_ROOTS`), a spec naming a path outside them fails here, non-retryably, before anything is read.
 */
export async function sample(
  store: ArtifactStore,
  spec: PipelineSpec,
  dataRoots?: readonly string[]
): Promise<SampleResult> {
  return mapErrors(() => withKeepalive(() => sampleDataset(store, spec, dataRoots)));
}
