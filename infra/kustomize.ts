/**
 * kustomize renders the cluster manifests under deploy/k8s/. No cluster runs in CI, so the manifest test renders
 * them with this binary (the same renderer `kubectl apply -k` embeds) and validates what comes out.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { cacheDir, ensureOnce, runCommand, which, type Log } from './cache';

/** kustomize's own release (`go list -m -versions sigs.k8s.io/kustomize/kustomize/v5`). */
export const KUSTOMIZE_VERSION = 'v5.8.1';

/**
 * Path of the pinned kustomize build in the cache, built once with
 * `go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1` (a few minutes on 2 cores; needs Go), as versitygw is.
 * A kustomize already on PATH is not used: its version, not the pin, would decide what the test renders.
 */
export async function ensureKustomize(log?: Log): Promise<string> {
  const target = join(cacheDir(), 'kustomize', KUSTOMIZE_VERSION, 'kustomize');
  return ensureOnce(
    target,
    async (scratch) => {
      const go = which('go') ?? (existsSync('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : undefined);
      if (!go) {
        throw new Error(`building kustomize ${KUSTOMIZE_VERSION} needs Go (https://go.dev/dl/) on PATH`);
      }
      const bin = `${scratch}.bin`;
      await mkdir(bin, { recursive: true });
      try {
        log?.(`building kustomize ${KUSTOMIZE_VERSION} with go install (about a minute, once)`);
        await runCommand(go, ['install', `sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}`], {
          env: { ...process.env, GOBIN: bin, GOFLAGS: '-mod=mod' },
          log,
        });
        await rename(join(bin, 'kustomize'), scratch);
      } finally {
        await rm(bin, { recursive: true, force: true });
      }
    },
    log
  );
}

/**
 * `kustomize build DIR`: the rendered manifests as one multi-document YAML string (stdout only: a warning on stderr
 * must not end up inside the YAML).
 * @throws Error with kustomize's message when the kustomization does not build.
 */
export async function kustomizeBuild(dir: string, log?: Log): Promise<string> {
  const binary = await ensureKustomize(log);
  try {
    const { stdout } = await promisify(execFile)(binary, ['build', dir], {
      timeout: 60_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new Error(`kustomize build ${dir} failed: ${stderr || (err as Error).message}`);
  }
}
