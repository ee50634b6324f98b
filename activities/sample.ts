import type { ArtifactStore } from '../lib/store/artifact-store';
import { sampleDataset } from '../lib/data/sample';
import type { PipelineSpec, SampleResult } from '../contract';
import { mapErrors } from './progress';

/** Load, subsample and split the dataset; write the splits to the store. */
export async function sample(store: ArtifactStore, spec: PipelineSpec): Promise<SampleResult> {
  return mapErrors(() => sampleDataset(store, spec));
}
