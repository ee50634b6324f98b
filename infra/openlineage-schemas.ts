/**
 * The published OpenLineage JSON schemas, for tests that validate our events. OpenLineage's own packages (the Java
 * jar, the Python wheel) ship generated classes, not the schema files; the crate pinned here ships them verbatim
 * (the core `OpenLineage.json`, `$id` 2-0-2, and the facet schemas from OpenLineage's release 1.50.0, under
 * `tests/schemas/openlineage/`), so they come from a registry, checked by hash, and are never copied into the repo.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheDir, ensureOnce, runCommand, sha256File, type Log } from './cache';

const CRATE = {
  name: 'datafusion-openlineage',
  version: '0.0.7',
  sha256: '6a76cd49d4134a44d91d0224c9a8a9bbe586900131437680c990a2c7d5c1bf72',
};

/** The crate's download, as cargo fetches it from the crates.io registry. */
const CRATE_URL = `https://static.crates.io/crates/${CRATE.name}/${CRATE.name}-${CRATE.version}.crate`;
const MEMBER = `${CRATE.name}-${CRATE.version}/tests/schemas/openlineage`;

/**
 * A folder holding `OpenLineage.json` and `facets/<Facet>.json`, fetched once into the cache and verified by the
 * crate's sha256. Returns its path.
 */
export async function ensureOpenLineageSchemas(log?: Log): Promise<string> {
  const target = join(cacheDir(), `openlineage-schemas-${CRATE.version}`);
  return ensureOnce(
    target,
    async (scratch) => {
      await mkdir(scratch, { recursive: true });
      const crate = join(scratch, 'crate.tar.gz');
      log?.(`downloading the OpenLineage schemas (${CRATE.name} ${CRATE.version} from crates.io)`);
      const res = await fetch(CRATE_URL, { signal: AbortSignal.timeout(120_000) });
      if (!res.ok) throw new Error(`GET ${CRATE_URL} answered ${res.status}`);
      await writeFile(crate, Buffer.from(await res.arrayBuffer()));
      const actual = await sha256File(crate);
      if (actual !== CRATE.sha256) {
        throw new Error(`${CRATE.name}-${CRATE.version}.crate has sha256 ${actual}, expected ${CRATE.sha256}`);
      }
      // A .crate is a gzipped tar; only the schema folder is kept.
      await runCommand('tar', ['-xzf', crate, '-C', scratch, '--strip-components=4', MEMBER]);
      await rm(crate, { force: true });
    },
    log
  );
}
