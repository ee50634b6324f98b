import type { ArtifactStore } from '../store/artifact-store';

/** Everything needed to audit a registered model: what data, which teacher, what training, which code and run. */
export interface ModelLineage {
  dataset: {
    kind: string;
    task: string;
    source: string;
    datasetHash: string;
    sampleHash: string;
    counts: Record<string, number>;
  };
  teacher?: {
    kind: string;
    model: string;
    templateHash: string;
    responses: string;
    cached: number;
    failed: number;
    /** How the stage got its answers and what they cost (absent in versions registered before they were recorded). */
    mode?: 'direct' | 'batch';
    samples?: number;
    shards?: number;
    notSent?: number;
    calls?: { planned: number; sent: number; resumed: number; cached: number };
    usage?: { promptTokens: number; completionTokens: number };
    costUsd?: number;
    budget?: { maxCostUsd: number; exhausted: boolean };
  };
  validation?: { report: string; kept: number; dropped: Record<string, number>; teacherAccuracy?: number };
  training: {
    method: string;
    labelSource: 'gold' | 'teacher';
    config: Record<string, unknown>;
    backend: string;
    steps: number;
    finalLoss: number;
    params: number;
  };
  codeVersion: string;
  workflowId: string;
  runId: string;
  manifest: string;
}

export interface ModelVersion {
  name: string;
  version: number;
  createdAt: string;
  metrics: { accuracy: number; correct: number; total: number; majorityBaseline: number };
  checkpoint: { sha256: string; size: number; uri: string };
  lineage: ModelLineage;
}

const pad = (v: number) => String(v).padStart(6, '0');
const versionsPrefix = (name: string) => `registry/${name}/versions/`;
const byRunKey = (name: string, runId: string) => `registry/${name}/by-run/${runId}.json`;

/** Store key of one version's record: the registry's key layout lives here and nowhere else. */
export const versionKey = (name: string, version: number) => `${versionsPrefix(name)}${pad(version)}.json`;

/** Store key of a run's manifest (every artifact by hash and role), next to the versions it produced. */
export const runManifestKey = (workflowId: string) => `runs/${workflowId}/manifest.json`;

/** Registered versions of a model, oldest first. */
export async function listVersions(store: ArtifactStore, name: string): Promise<number[]> {
  const keys = await store.listKeys(versionsPrefix(name));
  return keys
    .map((k) => /\/(\d+)\.json$/.exec(k)?.[1])
    .filter((v): v is string => v !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

export async function getVersion(
  store: ArtifactStore,
  name: string,
  version: number
): Promise<ModelVersion | undefined> {
  return store.getKeyJson<ModelVersion>(versionKey(name, version));
}

export async function latestVersion(store: ArtifactStore, name: string): Promise<ModelVersion | undefined> {
  const versions = await listVersions(store, name);
  return versions.length ? getVersion(store, name, versions[versions.length - 1]) : undefined;
}

/**
 * Append a version. Version numbers are claimed with conditional creates, so concurrent registrations never
 * overwrite each other: a loser of a race simply claims the next number. Registering the same run twice (an
 * activity retried after it had already succeeded) returns the version that run already has.
 */
export async function registerVersion(
  store: ArtifactStore,
  entry: Omit<ModelVersion, 'version' | 'createdAt'>,
  now: Date = new Date()
): Promise<ModelVersion> {
  const existing = await store.getKeyJson<{ version: number }>(byRunKey(entry.name, entry.lineage.runId));
  if (existing) {
    const found = await getVersion(store, entry.name, existing.version);
    if (found) return found;
  }
  const versions = await listVersions(store, entry.name);
  let version = (versions[versions.length - 1] ?? 0) + 1;
  for (;;) {
    const record: ModelVersion = { ...entry, version, createdAt: now.toISOString() };
    const created = await store.putKey(versionKey(entry.name, version), JSON.stringify(record, null, 2), {
      createOnly: true,
      contentType: 'application/json',
    });
    if (created) {
      await store.putKey(byRunKey(entry.name, entry.lineage.runId), JSON.stringify({ version }), {
        contentType: 'application/json',
      });
      return record;
    }
    version += 1;
  }
}

/** Model names present in the registry. */
export async function listModels(store: ArtifactStore): Promise<string[]> {
  const keys = await store.listKeys('registry/');
  return [...new Set(keys.map((k) => k.split('/')[1]).filter(Boolean))].sort();
}
