import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { evaluateCheckpoint } from '../lib/student/evaluate-split';
import type { EvaluateInput, EvaluateResult } from '../contract';
import { mapErrors, progressReporter, withKeepalive } from './progress';

/** Decode and score the test split (GPU queue); cancelling the activity kills the decoding child. */
export async function evaluate(
  deps: { store: ArtifactStore; client?: Client },
  input: EvaluateInput
): Promise<EvaluateResult> {
  // Progress arrives only between decoded batches (and not while the child loads its model): the keepalive keeps the
  // short GPU heartbeat timeout from taking a slow batch for a dead worker.
  return mapErrors(() =>
    withKeepalive(() => {
      const report = progressReporter(deps.client, 'evaluate');
      return evaluateCheckpoint(deps.store, input, {
        signal: Context.current().cancellationSignal,
        onProgress: (done, total) => report(done, total),
      });
    })
  );
}
