import { ApplicationFailure } from '@temporalio/common';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { NoUsableRationalesError, validateRationales as validate } from '../lib/data/rationales';
import type { ValidateRationalesInput, ValidateRationalesResult } from '../contract';
import { mapErrors, withKeepalive } from './progress';

/** Parse completions into rationales and labels; report what was dropped and why. */
export async function validateRationales(
  store: ArtifactStore,
  input: ValidateRationalesInput
): Promise<ValidateRationalesResult> {
  return mapErrors(async () => {
    try {
      return await withKeepalive(() => validate(store, input));
    } catch (err) {
      // Nothing to learn from: retrying the same completions gives the same answer, so fail for good.
      if (err instanceof NoUsableRationalesError) throw ApplicationFailure.nonRetryable(err.message, err.name);
      throw err;
    }
  });
}
