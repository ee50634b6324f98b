/**
 * Graphviz's `dot`, which renders `stepwise lineage --dot` (tests check that its output renders). Debian's package,
 * pinned by version and installed with apt-get, the one route these machines have to it; the .deb files are kept in
 * the cache dir so a reinstall downloads nothing. A `dot` already on PATH is used as it is.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheDir, runCommand, which, withLock, type Log } from './cache';

/** Debian bookworm's graphviz (`apt-cache policy graphviz`); bump together with the base image's release. */
export const GRAPHVIZ_DEB_VERSION = '2.42.2-7+deb12u1';

/** The path of `dot`, installing the pinned Debian package first when it is not on PATH. */
export async function ensureGraphviz(log?: Log): Promise<string> {
  const found = which('dot');
  if (found) return found;
  if (process.getuid?.() !== 0) {
    throw new Error(
      `Graphviz's dot is not on PATH, and installing it needs root: run \`apt-get install graphviz=${GRAPHVIZ_DEB_VERSION}\` ` +
        '(or your system’s graphviz package) and try again'
    );
  }
  const archives = join(cacheDir(), 'apt-archives');
  // Several test processes may ask at once; apt-get itself would refuse all but one of them.
  await withLock(
    join(cacheDir(), 'graphviz.lock'),
    async () => {
      if (which('dot')) return;
      await mkdir(join(archives, 'partial'), { recursive: true });
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      const install = () =>
        runCommand(
          'apt-get',
          [
            'install',
            '-y',
            '--no-install-recommends',
            // The cache dir is root's own, which apt's unprivileged download user cannot write to.
            '-o',
            'APT::Sandbox::User=root',
            '-o',
            `Dir::Cache::archives=${archives}`,
            `graphviz=${GRAPHVIZ_DEB_VERSION}`,
          ],
          { env, log }
        );
      log?.(`installing graphviz ${GRAPHVIZ_DEB_VERSION} with apt-get (once; packages cached in ${archives})`);
      try {
        await install();
      } catch {
        // Package lists older than the pinned version (a fresh image has none): refresh them once, then retry.
        await runCommand('apt-get', ['update'], { env, log });
        await install();
      }
    },
    { log }
  );
  const dot = which('dot');
  if (!dot)
    throw new Error(`graphviz ${GRAPHVIZ_DEB_VERSION} was installed but dot is not on PATH (${process.env.PATH})`);
  return dot;
}
