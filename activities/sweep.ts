/**
 * The sweep's own activities (workflows/sweep.ts): planning its cells and storing its table and plot. Thin adapters:
 * error mapping and a heartbeat every second; the work is in lib/sweep.
 */
import type { ArtifactStore } from '../lib/store/artifact-store';
import { planSweep as plan } from '../lib/sweep/plan';
import { finishSweep as finish } from '../lib/sweep/finish';
import type { FinishSweepInput, SweepArtifacts, SweepDefinition, SweepPlan } from '../contract';
import { mapErrors, withKeepalive } from './progress';

/** Every cell's spec, name and workflow id, and the cells a registered run already answered. */
export async function planSweep(
  store: ArtifactStore,
  def: SweepDefinition,
  dataRoots?: readonly string[]
): Promise<SweepPlan> {
  return mapErrors(() => withKeepalive(() => plan(store, def, dataRoots)));
}

/** The table and the plot, stored by content, and the record that names them. */
export async function finishSweep(store: ArtifactStore, input: FinishSweepInput): Promise<SweepArtifacts> {
  return mapErrors(() => withKeepalive(() => finish(store, input)));
}
