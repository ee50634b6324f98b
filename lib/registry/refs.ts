/**
 * Model references, as users write them everywhere a model is named: `NAME@VERSION` (`my-model@3`), `NAME@ALIAS`
 * (`my-model@champion`), `NAME@latest`, or a bare `NAME` (its latest version).
 */
import type { ArtifactStore } from '../store/artifact-store';
import { InputError } from '../errors';
import { checkModelName } from './names';
import { checkAliasName, getAlias } from './audit';
import { getVersion, latestVersion, type ModelVersion } from './registry';

export { isModelRef, MODEL_REF_PATTERN } from '../pipeline/spec';

export type ModelRef =
  | { name: string; kind: 'version'; version: number }
  | { name: string; kind: 'alias'; alias: string }
  | { name: string; kind: 'latest' };

/** Parse a reference; `field` is what an error names (e.g. `student.init`). */
export function parseModelRef(ref: string, field = 'ref'): ModelRef {
  const at = ref.indexOf('@');
  const name = checkModelName(at === -1 ? ref : ref.slice(0, at), field);
  if (at === -1) return { name, kind: 'latest' };
  const tail = ref.slice(at + 1);
  if (tail === 'latest') return { name, kind: 'latest' };
  if (/^\d+$/.test(tail)) {
    const version = Number(tail);
    if (!Number.isSafeInteger(version) || version < 1) {
      throw new InputError(`${field}: ${JSON.stringify(ref)} names version ${tail}; versions count from 1`, field);
    }
    return { name, kind: 'version', version };
  }
  return { name, kind: 'alias', alias: checkAliasName(tail, field) };
}

export interface ResolvedRef {
  ref: ModelRef;
  version: ModelVersion;
  /** Set when the reference was an alias: the alias, resolved at this moment. */
  alias?: string;
}

/** The version a reference names now; an InputError naming the reference when it names none. */
export async function resolveRef(store: ArtifactStore, ref: string, field = 'ref'): Promise<ResolvedRef> {
  const parsed = parseModelRef(ref, field);
  let version: ModelVersion | undefined;
  if (parsed.kind === 'latest') version = await latestVersion(store, parsed.name);
  else if (parsed.kind === 'version') version = await getVersion(store, parsed.name, parsed.version);
  else {
    const alias = await getAlias(store, parsed.name, parsed.alias);
    if (!alias) {
      throw new InputError(
        `${field}: ${ref}: model ${parsed.name} has no alias ${JSON.stringify(parsed.alias)}`,
        field
      );
    }
    version = await getVersion(store, parsed.name, alias.version);
  }
  if (!version) {
    throw new InputError(
      `${field}: ${ref}: ${parsed.kind === 'version' ? `no version ${parsed.version} of` : 'no versions of'} model ${parsed.name} in ${store.location}`,
      field
    );
  }
  return { ref: parsed, version, ...(parsed.kind === 'alias' ? { alias: parsed.alias } : {}) };
}

/**
 * A `student.init` that names a registered version, resolved now: the version an alias names can change, so the
 * workflow resolves it once and every training attempt starts from the same weights (recorded in lineage).
 */
export async function resolveInit(
  store: ArtifactStore,
  ref: string
): Promise<{ ref: string; name: string; version: number; checkpoint: { sha256: string; size: number } }> {
  const { version } = await resolveRef(store, ref, 'student.init');
  return {
    ref,
    name: version.name,
    version: version.version,
    checkpoint: { sha256: version.checkpoint.sha256, size: version.checkpoint.size },
  };
}
