/** Activity tests' common ground: a real filesystem store in a temp folder with the activities over it. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MockActivityEnvironment } from '@temporalio/testing';
import { createActivities } from '../../activities';
import type { Activities } from '../../contract';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import type { ScriptedTeacherProvider } from '../../lib/teacher/stage';

export interface ActivityFixture {
  tmp: string;
  store: ArtifactStore;
  activities: Activities;
  close(): Promise<void>;
}

/** A fresh store under a temp folder and the activities wired to it, as a worker wires them (keys from the env). */
export async function activityFixture(
  prefix: string,
  scripted: ScriptedTeacherProvider = async () => {
    throw new Error('no scripted teacher in these tests');
  }
): Promise<ActivityFixture> {
  const tmp = await mkdtemp(join(tmpdir(), prefix));
  const store = openStore(join(tmp, 'store'));
  const activities = createActivities({
    store,
    codeVersion: 'test',
    apiKey: (variable) => process.env[variable],
    scripted,
  });
  return {
    tmp,
    store,
    activities,
    async close() {
      await store.close();
      await rm(tmp, { recursive: true, force: true });
    },
  };
}

/** `env.run` with the activity's own types (the SDK's signature erases them). */
export function runIn<A extends unknown[], R>(
  env: MockActivityEnvironment,
  fn: (...args: A) => Promise<R>,
  ...args: A
): Promise<R> {
  return env.run(fn, ...args);
}
