/**
 * A registered version's run manifest, as its lineage points at it. Every reader of a version's manifest (the lineage
 * tree, the promotion gate, `models diff`, the MLflow export) goes through {@link readVersionManifest}, so each gets
 * the same checks: a content-addressed manifest is read by its hash and its bytes verified; a version registered
 * before manifests were content-addressed points at the workflow's named key, which a later run of the same workflow
 * overwrites, so it is read only while it still names the version's own run.
 */
import type { PipelineSpec } from '../pipeline/spec';
import { IntegrityError, NotFoundError, type ArtifactStore } from '../store/artifact-store';
import type { ModelVersion } from './registry';

export interface ManifestArtifact {
  role: string;
  sha256: string;
  size: number;
  uri: string;
}

/** What lib/registry/run.ts writes for each registered run. */
export interface RunManifest {
  workflowId: string;
  runId: string;
  codeVersion: string;
  spec: PipelineSpec;
  artifacts: ManifestArtifact[];
}

/** The hash a content-addressed URI names (`…/objects/sha256/ab/<64 hex>`), or undefined for a named key. */
export function hashOfUri(uri: string): string | undefined {
  return /objects\/sha256\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(uri)?.[1];
}

/** Read a stored object by hash, saying why not instead of throwing when it is missing or altered. */
export async function readObject(
  store: ArtifactStore,
  sha256: string
): Promise<{ bytes: Buffer } | { problem: string }> {
  try {
    return { bytes: await store.get({ sha256, size: 0 }) };
  } catch (err) {
    if (err instanceof NotFoundError) return { problem: 'missing' };
    if (err instanceof IntegrityError) {
      return {
        problem: err.expected === sha256 ? `altered (its bytes hash to ${err.actual})` : `altered (${err.message})`,
      };
    }
    throw err;
  }
}

/**
 * The manifest `version`'s lineage points at, or why it cannot be had: `missing`, `altered (…)`, `unparsable`,
 * `overwritten by run … of the same workflow` or `not in this store (…)`. `named` says the lineage points at a named
 * key (an older registration), which has no recorded hash to verify it by; the artifacts it lists carry theirs.
 */
export async function readVersionManifest(
  store: ArtifactStore,
  version: ModelVersion
): Promise<{ manifest: RunManifest; named: boolean } | { problem: string; named: boolean }> {
  const l = version.lineage;
  const hash = hashOfUri(l.manifest);
  const named = hash === undefined;
  let bytes: Buffer | undefined;
  if (hash !== undefined) {
    const read = await readObject(store, hash);
    if ('problem' in read) return { problem: read.problem, named };
    bytes = read.bytes;
  } else {
    const base = store.uri('');
    if (!l.manifest.startsWith(base)) return { problem: `not in this store (${base})`, named };
    bytes = await store.getKey(l.manifest.slice(base.length));
    if (!bytes) return { problem: 'missing', named };
  }
  let manifest: RunManifest;
  try {
    manifest = JSON.parse(bytes.toString('utf8')) as RunManifest;
  } catch {
    return { problem: 'unparsable', named };
  }
  if (named && manifest.runId !== l.runId) {
    return { problem: `overwritten by run ${manifest.runId} of the same workflow`, named };
  }
  return { manifest, named };
}
