import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { ExecutionContext } from 'ava';

/**
 * A fresh folder under the system's temp dir, removed when the test ends, passed or failed: left behind, every run
 * of the suite would add its folders (and any state a CLI wrote there) to the machine's /tmp.
 */
export async function tempDir(t: ExecutionContext, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
