import type { ArtifactStore } from '../lib/store/artifact-store';
import { registerRun } from '../lib/registry/run';
import type { RegisterModelInput, RegisterModelResult } from '../contract';
import { mapErrors, withKeepalive } from './progress';

/** Write the manifest and append a model version with its lineage. */
export async function registerModel(
  deps: { store: ArtifactStore; codeVersion: string },
  input: RegisterModelInput
): Promise<RegisterModelResult> {
  return mapErrors(() => withKeepalive(() => registerRun(deps.store, input, deps.codeVersion)));
}
