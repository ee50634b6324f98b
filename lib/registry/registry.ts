import type { ArtifactStore } from '../store/artifact-store';
import { checkModelName, checkRunId } from './names';

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
    /** sha256 of the template's worked examples, and how many (absent in versions registered before they were recorded). */
    exemplarsHash?: string;
    exemplarsCount?: number;
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
    /** The registered version training started from, when `student.init` named one (`my-model@champion`). */
    initFrom?: { ref: string; name: string; version: number; checkpoint: { sha256: string; size: number } };
    /** The student's full T5 config: preset, `student.config` overrides, vocabulary (absent in older versions). */
    model?: Record<string, unknown>;
  };
  /**
   * Which worker (its Temporal identity, `pid@host` by default: the pod name on Kubernetes) ran each stage's activities,
   * read from the run's history at registration: the attempt that completed, and the workers of the workflow itself
   * (absent in older versions, and where the history could not be read).
   */
  workers?: RunWorkers;
  /** sha256 of the run's validated spec (lib/pipeline/run-identity.ts specHash; absent in older versions). */
  specHash?: string;
  /** The schedule that started the run and the time it was due (absent for runs started by hand). */
  trigger?: ScheduleTrigger;
  codeVersion: string;
  /** `codeVersion` taken apart: the git commit and whether the tree had uncommitted changes (absent in older versions). */
  code?: { version: string; commit?: string; dirty?: boolean };
  workflowId: string;
  runId: string;
  /** URI of the run's manifest: content-addressed since claims exist (older versions name `runs/<workflowId>/…`). */
  manifest: string;
}

/** One activity execution of a run, as its history recorded it: the stage, the activity, who completed it. */
export interface StageWorker {
  stage: string;
  activity: string;
  worker: string;
  /** The attempt that completed (1: no retry). */
  attempt: number;
}

export interface RunWorkers {
  /** Workers that ran the pipeline workflow's (and the teacher stage's) workflow tasks. */
  workflow: string[];
  activities: StageWorker[];
}

/** A scheduled run's origin: the Temporal schedule's id and the nominal (due) time of its action, ISO-8601. */
export interface ScheduleTrigger {
  scheduleId: string;
  nominalTime: string;
}

export interface ModelVersion {
  name: string;
  version: number;
  createdAt: string;
  metrics: {
    accuracy: number;
    correct: number;
    total: number;
    majorityBaseline: number;
    /** Every trivial baseline, chosen on train (absent in versions registered before they existed). */
    baselines?: {
      majority: { label: string; accuracy: number };
      bestOperation?: { operation: string; accuracy: number };
    };
  };
  checkpoint: { sha256: string; size: number; uri: string };
  lineage: ModelLineage;
}

const pad = (v: number) => String(v).padStart(6, '0');
const versionsPrefix = (name: string) => `registry/${checkModelName(name)}/versions/`;
const claimsPrefix = (name: string) => `registry/${checkModelName(name)}/claims/`;
const claimKey = (name: string, version: number) => `${claimsPrefix(name)}${pad(version)}.json`;
const byRunKey = (name: string, runId: string) =>
  `registry/${checkModelName(name)}/by-run/${checkRunId(runId, 'runId')}.json`;
const JSON_TYPE = { contentType: 'application/json' };

/** Store key of one version's record: the registry's key layout lives here and nowhere else. */
export const versionKey = (name: string, version: number) => `${versionsPrefix(name)}${pad(version)}.json`;

/**
 * Store key of a workflow's manifest (every artifact by hash and role). A workflow id names its latest run's
 * manifest here; a version's lineage names the immutable, content-addressed copy, which no later run overwrites.
 */
export const runManifestKey = (workflowId: string) => `runs/${checkRunId(workflowId, 'workflowId')}/manifest.json`;

/**
 * Store keys of a workflow's report (lib/report/run-report.ts): the record naming the page, its charts and inputs, and
 * the page under a name a browser opens. Written when the run ends, after the manifest, which names them ahead.
 */
export const runReportKey = (workflowId: string) => `runs/${checkRunId(workflowId, 'workflowId')}/report.json`;
export const runReportHtmlKey = (workflowId: string) => `runs/${checkRunId(workflowId, 'workflowId')}/report.html`;

/**
 * A version number held by one run. Written once with a conditional create, before anything else of the version
 * exists, so every attempt of the run (a retry after a crash, or an overlapping attempt) finds the same number and
 * the same `createdAt`, and writes the same records.
 */
export interface VersionClaim {
  name: string;
  version: number;
  runId: string;
  workflowId: string;
  createdAt: string;
}

/** The numbers of `<prefix>NNNNNN.json` keys, ascending. */
async function numbersUnder(store: ArtifactStore, prefix: string): Promise<number[]> {
  const keys = await store.listKeys(prefix);
  return keys
    .map((k) => /\/(\d+)\.json$/.exec(k)?.[1])
    .filter((v): v is string => v !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

/** Registered versions of a model, oldest first. A claimed number shows here only once its version is published. */
export async function listVersions(store: ArtifactStore, name: string): Promise<number[]> {
  return numbersUnder(store, versionsPrefix(name));
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
 * The claim a run already holds, by its by-run record. Versions registered before claims existed have a by-run
 * record and a version but no claim: their claim is read back from the version itself.
 */
async function claimOfRun(store: ArtifactStore, name: string, runId: string): Promise<VersionClaim | undefined> {
  const byRun = await store.getKeyJson<{ version: number }>(byRunKey(name, runId));
  if (!byRun) return undefined;
  const claim = await store.getKeyJson<VersionClaim>(claimKey(name, byRun.version));
  if (claim) return claim;
  const old = await getVersion(store, name, byRun.version);
  if (old) return { name, version: old.version, runId, workflowId: old.lineage.workflowId, createdAt: old.createdAt };
  throw new Error(`registry: run ${runId} is recorded as version ${byRun.version} of ${name}, which has no claim`);
}

/**
 * Record `claim` as its run's one version. The by-run record is a conditional create too: should two attempts of a
 * run ever hold different numbers, the first recorded wins and the other number is left unused.
 */
async function settle(store: ArtifactStore, claim: VersionClaim): Promise<VersionClaim> {
  const key = byRunKey(claim.name, claim.runId);
  if (await store.putKey(key, JSON.stringify({ version: claim.version }), { createOnly: true, ...JSON_TYPE })) {
    return claim;
  }
  const recorded = await claimOfRun(store, claim.name, claim.runId);
  if (!recorded) throw new Error(`registry: ${key} was created but cannot be read back`);
  return recorded;
}

/**
 * Claim the run's version number, or find the one it claimed before. Numbers are claimed with conditional creates
 * from one past the highest claimed, so claims stay consecutive and concurrent runs never share one; a claim names
 * its run, so an attempt that loses a race to another attempt of the same run takes that claim as its own, and a
 * retry after a crash finds its unpublished claim again instead of claiming a second number.
 */
export async function claimVersion(
  store: ArtifactStore,
  name: string,
  run: { runId: string; workflowId: string },
  now: Date = new Date()
): Promise<VersionClaim> {
  checkRunId(run.workflowId, 'workflowId');
  const held = await claimOfRun(store, name, run.runId);
  if (held) return held;
  // Listed in this order, and the by-run record checked again after both, so that no claim of this run can hide
  // from the scan: one published before the versions were listed has a by-run record by the second check; one
  // claimed after the claims were listed lies above them, where the loop below meets it.
  const published = new Set(await listVersions(store, name));
  const claimed = await numbersUnder(store, claimsPrefix(name));
  const settled = await claimOfRun(store, name, run.runId);
  if (settled) return settled;
  for (const n of claimed.filter((v) => !published.has(v))) {
    const claim = await store.getKeyJson<VersionClaim>(claimKey(name, n));
    if (claim?.runId === run.runId) return settle(store, claim);
  }
  // Versions from before claims existed have no claim: numbering continues past them too.
  let version = Math.max(0, ...claimed, ...published) + 1;
  const createdAt = now.toISOString();
  for (;;) {
    const claim: VersionClaim = { name, version, runId: run.runId, workflowId: run.workflowId, createdAt };
    if (
      await store.putKey(claimKey(name, version), JSON.stringify(claim, null, 2), { createOnly: true, ...JSON_TYPE })
    ) {
      return settle(store, claim);
    }
    const holder = await store.getKeyJson<VersionClaim>(claimKey(name, version));
    if (holder?.runId === run.runId) return settle(store, holder);
    version += 1;
  }
}

/**
 * Publish the version a claim holds: the record appears in one conditional create, after everything it names
 * exists. Its content comes from the claim and the entry only, so whichever attempt of the run publishes it, the
 * record is the same; an attempt that finds it already published returns it.
 */
export async function publishVersion(
  store: ArtifactStore,
  claim: VersionClaim,
  entry: Omit<ModelVersion, 'version' | 'createdAt'>
): Promise<ModelVersion> {
  if (entry.name !== claim.name || entry.lineage.runId !== claim.runId) {
    throw new Error(
      `registry: version ${claim.version} of ${claim.name} is claimed by run ${claim.runId}, not this one`
    );
  }
  const record: ModelVersion = { ...entry, version: claim.version, createdAt: claim.createdAt };
  const key = versionKey(claim.name, claim.version);
  if (await store.putKey(key, JSON.stringify(record, null, 2), { createOnly: true, ...JSON_TYPE })) return record;
  const existing = await getVersion(store, claim.name, claim.version);
  if (existing?.lineage.runId === claim.runId) return existing;
  // Only a writer that skips claims (a worker from before they existed) can take a claimed number.
  throw new Error(
    `registry: ${key} holds run ${existing?.lineage.runId ?? '(unreadable)'}, but run ${claim.runId} claimed it`
  );
}

/**
 * Append a version: claim a number, then publish the record. Concurrent registrations of different runs get
 * consecutive numbers; registering the same run again (a retried activity, an overlapping attempt, a retry after a
 * crash between any two writes) returns the one version that run has.
 */
export async function registerVersion(
  store: ArtifactStore,
  entry: Omit<ModelVersion, 'version' | 'createdAt'>,
  now: Date = new Date()
): Promise<ModelVersion> {
  const claim = await claimVersion(store, entry.name, entry.lineage, now);
  return publishVersion(store, claim, entry);
}

/** Model names present in the registry. */
export async function listModels(store: ArtifactStore): Promise<string[]> {
  const keys = await store.listKeys('registry/');
  return [...new Set(keys.map((k) => k.split('/')[1]).filter(Boolean))].sort();
}
