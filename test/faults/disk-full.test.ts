/**
 * Disk full under the filesystem store: a 2 MiB tmpfs is the store's volume. Writes fail with a StoreFullError that
 * names the store and ENOSPC; nothing half-written is left under a final key (every object still hashes to its key,
 * the temp folder is empty), earlier objects stay intact, and freeing space makes writes work again. A pipeline whose
 * store is full fails with that error in the workflow's failure.
 *
 * Needs root (it mounts a tmpfs), as the test machine and CI run. Where mount fails the test fails, saying why,
 * rather than passing without having tried.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { WorkflowFailedError } from '@temporalio/client';

import { CPU_TASK_QUEUE } from '../../contract';
import { distillationPipeline } from '../../workflows';
import { openStore, sha256Hex, StoreFullError, type ArtifactStore } from '../../lib/store';
import { figuresOnOutcome } from '../helpers/figures-hook';
import { servicesForFile, startWorkerProcess } from '../helpers/services';
import { killGroup } from '../helpers/processes';

const MOUNT_SIZE = '2m';
let mountPoint: string | undefined;
let mounted = false;
const workers = new Set<ChildProcess>();

test.before(async () => {
  mountPoint = await mkdtemp(join(tmpdir(), 'stepwise-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${MOUNT_SIZE}`, 'tmpfs', mountPoint], { stdio: 'pipe' });
    mounted = true;
  } catch (err) {
    const why = (err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message;
    throw new Error(
      `disk-full test: cannot mount a ${MOUNT_SIZE} tmpfs at ${mountPoint} (${why}); it needs root (or CAP_SYS_ADMIN)`
    );
  }
});

// Registered before the services, so it runs first: the worker goes before the servers it is connected to.
test.after.always(async () => {
  for (const w of workers) killGroup(w, 'SIGKILL');
  if (mounted) execFileSync('umount', ['-l', mountPoint!]);
  if (mountPoint) await rm(mountPoint, { recursive: true, force: true });
});

const services = servicesForFile({ s3: false, workers: [] });

const expectFigures = figuresOnOutcome();

/** Every object under the store's root hashes to its key, and the temp folder holds nothing. */
async function assertNothingHalfWritten(t: import('ava').ExecutionContext, store: ArtifactStore, root: string) {
  const keys = await store.listKeys('objects/');
  for (const key of keys) {
    const bytes = (await store.getKey(key))!;
    t.is(sha256Hex(bytes), key.slice(key.lastIndexOf('/') + 1), `${key} is complete`);
  }
  const leftovers = await readdir(join(root, '.stepwise-tmp')).catch((): string[] => []);
  t.deepEqual(leftovers, [], 'no temp files left behind');
  return keys.length;
}

test.serial('a full store fails writes with a StoreFullError naming it, and leaves nothing half-written', async (t) => {
  expectFigures('disk-full-store', { faultsTried: 3, faultsSurvived: 3, examplesLost: 0 });
  const root = join(mountPoint!, 'store');
  await mkdir(root);
  const store = openStore(pathToFileURL(root).href);
  const written: { sha256: string }[] = [];
  let failure: unknown;
  // 200 KiB objects until the 2 MiB volume is full: the last one fails partway through its bytes.
  for (let i = 0; i < 64 && failure === undefined; i++) {
    try {
      written.push(await store.put(randomBytes(200 * 1024)));
    } catch (err) {
      failure = err;
    }
  }
  t.true(written.length >= 5, `${written.length} objects fit`);
  t.true(failure instanceof StoreFullError, `got ${String(failure)}`);
  const full = failure as StoreFullError;
  t.is(full.code, 'ENOSPC');
  t.true(full.message.includes(store.location), full.message);
  t.regex(full.message, /is full: no space left .*ENOSPC/);
  t.is(await assertNothingHalfWritten(t, store, root), written.length, 'only the completed objects are there');

  // A streamed file larger than the space left fails the same way; a named key too.
  const file = join(services().tmp, 'big.bin');
  await writeFile(file, randomBytes(1024 * 1024));
  await t.throwsAsync(store.putFile(file), { instanceOf: StoreFullError, message: /ENOSPC/ });
  await t.throwsAsync(store.putKey('runs/r1/manifest.json', randomBytes(512 * 1024)), { instanceOf: StoreFullError });
  t.is(await store.getKey('runs/r1/manifest.json'), undefined, 'the failed named key is absent, not truncated');
  t.is(await assertNothingHalfWritten(t, store, root), written.length);

  // Earlier objects are intact (get verifies their hash), and once space is freed writes work again.
  for (const ref of written) t.is((await store.get({ sha256: ref.sha256, size: 200 * 1024 })).length, 200 * 1024);
  await rm(join(root, 'objects'), { recursive: true });
  t.truthy(await store.putFile(file));
  await store.close();
});

test.serial('a pipeline on a full store fails with the StoreFullError in its failure', async (t) => {
  expectFigures('disk-full-pipeline', { faultsTried: 1, faultsSurvived: 1, examplesLost: 0 });
  const root = join(mountPoint!, 'pipeline-store');
  await mkdir(root);
  // Fill the volume (outside the store's root) so the first stage's first write finds no room.
  for (let i = 0; ; i++) {
    try {
      await writeFile(join(mountPoint!, `filler-${i}`), Buffer.alloc(64 * 1024));
    } catch {
      break;
    }
  }
  const location = pathToFileURL(root).href;
  const log: string[] = [];
  const worker = await startWorkerProcess(services(), 'cpu', log, {
    detached: true,
    env: { STEPWISE_STORE: location },
  });
  workers.add(worker);
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `disk-full-${Date.now()}`,
    args: [
      {
        name: 'disk-full',
        data: { kind: 'demo', size: 100, seed: 3 },
        teacher: { kind: 'scripted' },
        student: { method: 'standard-finetune' },
      },
    ],
  });
  const err = await t.throwsAsync(handle.result(), { instanceOf: WorkflowFailedError });
  // The activity failure's cause is the store's error, by name and message, after its retries.
  const causes: { name?: string; message?: string; type?: string }[] = [];
  for (let c: unknown = err?.cause; c; c = (c as { cause?: unknown }).cause) causes.push(c as never);
  const storeFull = causes.find((c) => c.type === 'StoreFullError');
  t.truthy(storeFull, `failure chain: ${causes.map((c) => `${c.name}(${c.type}): ${c.message}`).join(' <- ')}`);
  t.true(storeFull!.message!.includes(location), storeFull!.message);
  t.regex(storeFull!.message!, /ENOSPC/);
  const store = openStore(location);
  const objects = await assertNothingHalfWritten(t, store, root);
  await store.close();
  t.log(`failed as expected: ${storeFull!.message}; ${objects} complete object(s) in the store`);
});
