/**
 * A refresh's two questions of the registry: is there anything to do (the champion was trained on this very spec and
 * data: training is deterministic, so a rerun would only reproduce it), and where does training start (a warm start
 * from a registered version, or from scratch when the version does not exist yet).
 */
import type { ArtifactStore } from '../store/artifact-store';
import type { PipelineSpec } from '../pipeline/spec';
import { specHash } from '../pipeline/run-identity';
import type { TrivialBaselines } from '../data/baselines';
import { InputError } from '../errors';
import { getAlias, recordUnchanged, REGISTRY_IDENTITY } from './audit';
import { parseModelRef, resolveInit } from './refs';
import { getVersion, latestVersion, versionKey, type ModelVersion, type ScheduleTrigger } from './registry';

export interface RefreshCheckInput {
  spec: PipelineSpec;
  /** The dataset hash the sample stage computed for this run. */
  datasetHash: string;
  workflowId: string;
  runId: string;
  trigger?: ScheduleTrigger;
}

/** The version a refresh found unchanged, as a run's result reports a registered one. */
export interface UnchangedVersion {
  name: string;
  version: number;
  alias: string;
  accuracy: number;
  correct: number;
  total: number;
  majorityBaseline: number;
  baselines?: TrivialBaselines;
  backend: string;
  manifestUri: string;
  checkpointUri: string;
  registryKey: string;
  /** The audit record written for this refresh, on the version's chain. */
  audit: { chain: string; seq: number };
}

export type RefreshCheck = { unchanged: true; version: UnchangedVersion } | { unchanged: false; reason: string };

/**
 * Whether the version `gate.alias` names was trained on this spec and this data. When it was, one audit record says
 * so (idempotent by the run's id) and the run has nothing left to do; otherwise the reason, for the run's progress.
 */
export async function checkRefresh(store: ArtifactStore, input: RefreshCheckInput): Promise<RefreshCheck> {
  const { spec } = input;
  const alias = await getAlias(store, spec.name, spec.gate.alias);
  if (!alias) return { unchanged: false, reason: `${spec.name} has no ${spec.gate.alias} yet` };
  const version = await getVersion(store, spec.name, alias.version);
  if (!version)
    return { unchanged: false, reason: `${spec.name}@${spec.gate.alias} names v${alias.version}, not found` };
  const champion = `${spec.name} v${version.version} (${spec.gate.alias})`;
  const hash = specHash(spec);
  if (version.lineage.specHash === undefined) {
    return { unchanged: false, reason: `${champion} predates recorded spec hashes` };
  }
  if (version.lineage.specHash !== hash) return { unchanged: false, reason: `the spec differs from ${champion}'s` };
  if (version.lineage.dataset.datasetHash !== input.datasetHash) {
    return { unchanged: false, reason: `the data differs from ${champion}'s` };
  }
  const record = await recordUnchanged(store, spec.name, version.version, {
    id: `refresh:${input.runId}`,
    who: REGISTRY_IDENTITY,
    why: `refresh found the spec and data of v${version.version} unchanged: nothing to train`,
    workflowId: input.workflowId,
    details: {
      specHash: hash,
      datasetHash: input.datasetHash,
      runId: input.runId,
      ...(input.trigger ? { trigger: input.trigger } : {}),
    },
  });
  return { unchanged: true, version: { ...summaryOf(version, spec.gate.alias), audit: record } };
}

function summaryOf(v: ModelVersion, alias: string): Omit<UnchangedVersion, 'audit'> {
  return {
    name: v.name,
    version: v.version,
    alias,
    accuracy: v.metrics.accuracy,
    correct: v.metrics.correct,
    total: v.metrics.total,
    majorityBaseline: v.metrics.majorityBaseline,
    ...(v.metrics.baselines ? { baselines: v.metrics.baselines } : {}),
    backend: v.lineage.training.backend,
    manifestUri: v.lineage.manifest,
    checkpointUri: v.checkpoint.uri,
    registryKey: versionKey(v.name, v.version),
  };
}

/**
 * A `student.warmStart` resolved now: the version it names, or null when an alias or `latest` names none yet (the
 * model's first run trains from scratch). A version number that does not exist is a mistake, not a first run.
 */
export async function resolveWarmStart(
  store: ArtifactStore,
  ref: string
): Promise<Awaited<ReturnType<typeof resolveInit>> | null> {
  const parsed = parseModelRef(ref, 'student.warmStart');
  if (parsed.kind === 'alias' && !(await getAlias(store, parsed.name, parsed.alias))) return null;
  if (parsed.kind === 'latest' && !(await latestVersion(store, parsed.name))) return null;
  try {
    return await resolveInit(store, ref);
  } catch (err) {
    if (err instanceof InputError)
      throw new InputError(err.message.replace(/^student\.init/, 'student.warmStart'), 'student.warmStart');
    throw err;
  }
}
