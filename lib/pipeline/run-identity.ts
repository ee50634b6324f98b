/**
 * A run's workflow id, derived from what the run computes: the validated spec and the content of the data it names.
 * Starting the same spec on the same data again then names the same workflow, which Temporal resolves to the run
 * already in flight (`stepwise run` starts with the USE_EXISTING conflict policy) instead of a second run.
 */
import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { DEFAULT_GATE, type PipelineSpec } from './spec';
import { specPaths } from '../data/roots';
import { canonicalJson } from '../store/artifact-store';
import { hashFileInto } from '../../infra/cache';

// JSON with keys sorted at every level, so equal specs print equally whatever order their fields came in: the store's
// one definition (content hashes use it too), re-exported for the callers that name runs.
export { canonicalJson };

/** sha256 of the validated spec (canonical JSON, defaults filled in): what a refresh compares with its champion's. */
export function specHash(spec: PipelineSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex');
}

/**
 * The files and folders a spec reads besides the store: datasets, recorded completions, an init checkpoint. The
 * demo has none: its generator's parameters are spec fields.
 */
export function dataPathsOf(spec: PipelineSpec): string[] {
  // The same paths the data roots confine (lib/data/roots.ts); a reference folder holds every task, and only the
  // spec's task's files are its data.
  return specPaths(spec).map(({ field, path }) =>
    field === 'data.dir' && spec.data.kind === 'reference' ? join(path, spec.data.task) : path
  );
}

/**
 * Folds a file, or every file under a folder in name order, into the hash: relative names and contents. A path this
 * machine cannot read (a cluster worker's mount) counts by its name only; the workers report it if it is missing.
 */
async function hashPath(path: string, into: ReturnType<typeof createHash>, name = path): Promise<void> {
  let info;
  try {
    info = await stat(path);
  } catch {
    into.update(`unreadable ${name}\n`);
    return;
  }
  if (info.isDirectory()) {
    const entries = (await readdir(path)).sort();
    for (const entry of entries) await hashPath(join(path, entry), into, `${name}/${entry}`);
    return;
  }
  into.update(`file ${name} ${info.size}\n`);
  await hashFileInto(path, into);
}

/** sha256 of the data a spec reads, in hex. */
export async function dataHash(spec: PipelineSpec): Promise<string> {
  const hash = createHash('sha256');
  // Names inside the hash are relative: the paths themselves are already in the spec.
  for (const [i, path] of dataPathsOf(spec).entries()) {
    hash.update(`path ${i}\n`);
    await hashPath(resolve(path), hash, '.');
  }
  return hash.digest('hex');
}

/**
 * `stepwise-<name>-<12 hex of sha256(canonical spec, data hash)>`: equal for the same spec on the same data. A caller
 * naming many specs over the same data (a sweep's cells) passes the data's hash once, so the files are read once.
 */
export async function runWorkflowId(spec: PipelineSpec, knownDataHash?: string): Promise<string> {
  // A default gate is left out, so a spec keeps the id it had before the gate existed: `stepwise run` of the same spec
  // after an upgrade still finds (and resumes) the run it started before.
  const { gate, ...rest } = spec;
  const hashed = canonicalJson(gate) === canonicalJson(DEFAULT_GATE) ? rest : spec;
  const digest = createHash('sha256')
    .update(canonicalJson(hashed))
    .update('\n')
    .update(knownDataHash ?? (await dataHash(spec)))
    .digest('hex');
  return `stepwise-${spec.name}-${digest.slice(0, 12)}`;
}
