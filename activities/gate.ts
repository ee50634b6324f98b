/**
 * The promotion gate's activities: thin adapters over lib/registry/gate-stage.ts. A lost alias race is a
 * non-retryable `RegistryConflict`: the candidate was compared with a champion that is no longer the champion, and
 * no retry makes that comparison valid again; the workflow records it as not promoted.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { RegistryConflictError } from '../lib/registry/audit';
import {
  decideAndRecordGate,
  planGate as plan,
  promote,
  recordApproval as record,
  type ApprovalInput,
  type DecideGateInput,
  type GateOutcome,
  type GatePlan,
  type GatePlanInput,
  type PromoteInput,
} from '../lib/registry/gate-stage';
import { resolveInit as resolve } from '../lib/registry/refs';
import type { ResolvedInit } from '../lib/student/train-stage';
import { mapErrors, withKeepalive } from './progress';
import { syncMlflowAlias } from './mlflow';

type Deps = { store: ArtifactStore };

export function planGate(deps: Deps, input: GatePlanInput): Promise<GatePlan> {
  return mapErrors(() => withKeepalive(() => plan(deps.store, input)));
}

export function decideGate(deps: Deps, input: DecideGateInput): Promise<GateOutcome> {
  return mapErrors(() => withKeepalive(() => decideAndRecordGate(deps.store, input)));
}

export function recordApproval(deps: Deps, input: ApprovalInput): Promise<{ seq: number }> {
  return mapErrors(() => withKeepalive(() => record(deps.store, input)));
}

/** Move the alias; then, with `STEPWISE_MLFLOW_URI` set, move it in MLflow too (best effort, never a failed stage). */
export function promoteVersion(deps: Deps, input: PromoteInput): Promise<{ previous: number | null }> {
  return mapErrors(() =>
    withKeepalive(async () => {
      try {
        const moved = await promote(deps.store, input);
        await syncMlflowAlias(deps, { name: input.name, alias: input.alias });
        return moved;
      } catch (err) {
        if (err instanceof RegistryConflictError) {
          throw ApplicationFailure.nonRetryable(err.message, 'RegistryConflict', { current: err.current });
        }
        throw err;
      }
    })
  );
}

/** `student.init: NAME@REF`: the registered version it names now, resolved once for every training attempt. */
export function resolveInit(deps: Deps, ref: string): Promise<ResolvedInit> {
  return mapErrors(() => withKeepalive(() => resolve(deps.store, ref)));
}
