/**
 * Debian packages the project needs at test time (Graphviz's dot, headless Chromium), pinned by version and
 * installed with apt-get, the one route these machines have to them. The .deb files are kept in the cache dir so a
 * reinstall downloads nothing. A binary already on PATH is used as it is.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheDir, runCommand, which, withLock, type Log } from './cache';

export interface DebianPackage {
  /** The package name, e.g. `graphviz`. */
  name: string;
  /** The exact version (`apt-cache policy <name>`). */
  version: string;
  /** The executables it provides, in the order they are looked for on PATH. */
  binaries: string[];
  /** How long to wait for another process installing it (large packages on a slow mirror take minutes). */
  lockTimeoutMs?: number;
}

const onPath = (pkg: DebianPackage) => pkg.binaries.map((name) => which(name)).find((path) => path !== undefined);

/** The path of the package's first binary found on PATH, installing the pinned package first when none is. */
export async function ensureDebianPackage(pkg: DebianPackage, log?: Log): Promise<string> {
  const existing = onPath(pkg);
  if (existing) return existing;
  const spec = `${pkg.name}=${pkg.version}`;
  if (process.getuid?.() !== 0) {
    throw new Error(
      `${pkg.binaries[0]} is not on PATH, and installing it needs root: run \`apt-get install ${spec}\` ` +
        `(or your system’s ${pkg.name} package) and try again`
    );
  }
  const archives = join(cacheDir(), 'apt-archives');
  // Several test processes may ask at once; apt-get itself would refuse all but one of them.
  await withLock(
    join(cacheDir(), `${pkg.name}.lock`),
    async () => {
      if (onPath(pkg)) return;
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
            spec,
          ],
          { env, log }
        );
      log?.(`installing ${pkg.name} ${pkg.version} with apt-get (once; packages cached in ${archives})`);
      try {
        await install();
      } catch {
        // Package lists older than the pinned version (a fresh image has none): refresh them once, then retry.
        await runCommand('apt-get', ['update'], { env, log });
        await install();
      }
    },
    { log, ...(pkg.lockTimeoutMs ? { timeoutMs: pkg.lockTimeoutMs } : {}) }
  );
  const installed = onPath(pkg);
  if (!installed) {
    throw new Error(`${spec} was installed but ${pkg.binaries.join(' / ')} is not on PATH (${process.env.PATH})`);
  }
  return installed;
}
