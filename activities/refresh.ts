/**
 * A refresh's registry questions (lib/registry/refresh.ts): nothing to do when the champion was trained on this spec
 * and data; otherwise where a warm start begins.
 */
import type { ArtifactStore } from '../lib/store/artifact-store';
import {
  checkRefresh as check,
  resolveWarmStart as resolve,
  type RefreshCheck,
  type RefreshCheckInput,
} from '../lib/registry/refresh';
import type { ResolvedInit } from '../lib/student/train-stage';
import { mapErrors, withKeepalive } from './progress';

type Deps = { store: ArtifactStore };

export function checkRefresh(deps: Deps, input: RefreshCheckInput): Promise<RefreshCheck> {
  return mapErrors(() => withKeepalive(() => check(deps.store, input)));
}

export function resolveWarmStart(deps: Deps, ref: string): Promise<ResolvedInit | null> {
  return mapErrors(() => withKeepalive(() => resolve(deps.store, ref)));
}
