/**
 * Graphviz's `dot`, which renders `stepwise lineage --dot` (tests check that its output renders). Debian's package,
 * pinned and cached (infra/apt.ts).
 */
import { ensureDebianPackage } from './apt';
import type { Log } from './cache';

/** Debian bookworm's graphviz (`apt-cache policy graphviz`); bump together with the base image's release. */
export const GRAPHVIZ_DEB_VERSION = '2.42.2-7+deb12u1';

/** The path of `dot`, installing the pinned Debian package first when it is not on PATH. */
export function ensureGraphviz(log?: Log): Promise<string> {
  return ensureDebianPackage({ name: 'graphviz', version: GRAPHVIZ_DEB_VERSION, binaries: ['dot'] }, log);
}
