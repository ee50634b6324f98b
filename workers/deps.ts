import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { openStore } from '../lib/store';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { startLocalTeacherServer } from '../lib/teacher/local-server';
import type { ActivityDeps } from '../activities';
import { apiKeyFrom, settings } from '../infra/config';

const ROOT = join(__dirname, '..');

/** `<package version>+<git sha>` (or STEPWISE_CODE_VERSION when set by a deployment), for lineage. */
export function codeVersion(): string {
  const configured = settings().codeVersion;
  if (configured) return configured;
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  try {
    const sha = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .toString()
      .trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .toString()
      .trim();
    return `${version}+${sha}${dirty ? '.dirty' : ''}`;
  } catch {
    return version;
  }
}

/**
 * Build the activities' dependencies for one worker process. The scripted demo teacher is started lazily, once
 * per error rate, on a free loopback port: only workers that actually run a demo's teacher stage pay for it.
 */
export function createActivityDeps(opts: { store: ArtifactStore | string; client?: Client }): ActivityDeps & {
  close(): Promise<void>;
} {
  const store = typeof opts.store === 'string' ? openStore(opts.store) : opts.store;
  const servers = new Map<number, ReturnType<typeof startLocalTeacherServer>>();
  return {
    store,
    client: opts.client,
    codeVersion: codeVersion(),
    apiKey: (variable) => apiKeyFrom(variable),
    dataRoots: settings().dataRoots,
    scripted: async (errorRate) => {
      let server = servers.get(errorRate);
      if (!server) {
        server = startLocalTeacherServer({ errorRate, model: `stepwise-scripted-e${errorRate}` });
        servers.set(errorRate, server);
      }
      const { url } = await server;
      return { url, model: `stepwise-scripted-e${errorRate}` };
    },
    async close() {
      await Promise.all([...servers.values()].map(async (s) => (await s).close()));
      servers.clear();
    },
  };
}
