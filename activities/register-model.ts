import type { Client } from '@temporalio/client';
import { Context } from '@temporalio/activity';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { registerRun } from '../lib/registry/run';
import type { RunWorkers } from '../lib/registry/registry';
import type { RegisterModelInput, RegisterModelResult } from '../contract';
import { mapErrors, withKeepalive } from './progress';
import { stageWorkers } from './stage-workers';
import { exportToMlflow } from './mlflow';

/**
 * Write the manifest and append a model version with its lineage, including which worker ran each stage; then, with
 * `STEPWISE_MLFLOW_URI` set, mirror the version to MLflow (best effort: a warning at worst, after the registry write).
 */
export async function registerModel(
  deps: { store: ArtifactStore; codeVersion: string; client?: Client },
  input: RegisterModelInput
): Promise<RegisterModelResult> {
  return mapErrors(() =>
    withKeepalive(async () => {
      const result = await registerRun(deps.store, input, deps.codeVersion, await workersOf(deps.client, input));
      await exportToMlflow(deps, { name: result.name, version: result.version });
      return result;
    })
  );
}

/**
 * The workers of the run's stages, from its history. Lineage is better without them than a run that cannot register:
 * a history that cannot be read (no client wired, a visibility hiccup) leaves them out, with a warning.
 */
async function workersOf(client: Client | undefined, input: RegisterModelInput): Promise<RunWorkers | undefined> {
  if (!client) return undefined;
  try {
    return await stageWorkers(client, input.workflowId, input.runId);
  } catch (err) {
    const line = `registerModel: could not read which workers ran the stages: ${err instanceof Error ? err.message : String(err)}`;
    try {
      Context.current().log.warn(line);
    } catch {
      console.warn(line); // called outside an activity (a bench's direct call)
    }
    return undefined;
  }
}
