/**
 * Scratch folders for what a stage keeps on disk while it works: a training run's checkpoints, the checkpoint an
 * evaluation loads, the teacher stage's assembled responses, a tokenizer's corpus. Each user removes its folder when
 * it is done, but a worker killed mid-stage (SIGKILL, the OOM killer, a node drained hard) leaves its folders behind,
 * a partial checkpoint in each (measured: a killed training left `resume-60.safetensors.partial-…`). On a long-lived
 * machine, or in a pod whose `/tmp` is an emptyDir that outlives container restarts (deploy/k8s), those add up with
 * every kill. So each folder names the process that made it, and a worker that starts removes the folders whose maker
 * is provably gone ({@link sweepScratch}).
 *
 * "Provably": a pid alone is not enough, since pids are reused (a container's worker is often pid 1 on every restart).
 * The owner record holds the pid, the process's start time (Linux's /proc, in clock ticks since boot) and its pid
 * namespace. A folder is removed only when its owner was in this process's pid namespace and that pid is now free or
 * held by a process that started at another time. A folder made in another container that shares the volume, or one
 * whose owner cannot be read, is left alone. That leaves out a container's earlier incarnations (each restart is a new
 * pid namespace), so a worker told that its temp dir is its own (`STEPWISE_TMP_EXCLUSIVE=1`, as the Kubernetes
 * manifests' per-pod /tmp is) removes every scratch folder it did not make.
 */
import { readlinkSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';

import { processRunning, processStartTime } from '../infra/cache';

/** The file in each scratch folder that names its maker. */
export const OWNER_FILE = '.stepwise-owner';

/** Scratch folders' names start with this (each user adds its own word: `stepwise-train-…`). */
const PREFIX = 'stepwise-';

/** The process that made a scratch folder. */
export interface ScratchOwner {
  pid: number;
  /** Field 22 of /proc/<pid>/stat; absent where there is no /proc. */
  start?: string;
  /** `pid:[inode]` of /proc/self/ns/pid; absent where there is no /proc. */
  pidNamespace?: string;
  host: string;
}

function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

let self: ScratchOwner | undefined;

/** This process as an owner record (read once: none of it changes while the process lives). */
export function currentOwner(): ScratchOwner {
  if (!self) {
    const start = processStartTime(process.pid);
    const namespace = pidNamespace();
    self = {
      pid: process.pid,
      ...(start === undefined ? {} : { start }),
      ...(namespace === undefined ? {} : { pidNamespace: namespace }),
      host: hostname(),
    };
  }
  return self;
}

/** A new scratch folder under the system's temp dir (`stepwise-<word>-XXXXXX`), its owner recorded in it. */
export async function scratchDir(word: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${PREFIX}${word}-`));
  try {
    await writeFile(join(dir, OWNER_FILE), JSON.stringify(currentOwner()));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return dir;
}

const sameProcess = (a: ScratchOwner, b: ScratchOwner) =>
  a.pid === b.pid && a.start === b.start && a.pidNamespace === b.pidNamespace && a.host === b.host;

/**
 * Whether `owner` is provably gone, judged from this process (see the note at the top); with `exclusive`, whether it
 * is any other process.
 */
export function ownerGone(owner: ScratchOwner, me: ScratchOwner = currentOwner(), exclusive = false): boolean {
  if (exclusive) return !sameProcess(owner, me);
  if (owner.pidNamespace !== me.pidNamespace || owner.host !== me.host) return false;
  if (!Number.isSafeInteger(owner.pid) || owner.pid <= 0) return false;
  // The same judgement as the Temporal database's lock (infra/db-lock.ts): a pid taken by a process that started at
  // another time is not the owner, and one whose start time cannot be read is taken to be.
  return !processRunning(owner.pid, owner.start);
}

/** The owner record of a scratch folder, or undefined when it has none or one that is not a record of ours. */
async function readOwner(dir: string): Promise<ScratchOwner | undefined> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(join(dir, OWNER_FILE), 'utf8'));
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const { pid, start, pidNamespace, host } = parsed as Record<string, unknown>;
  if (typeof pid !== 'number' || typeof host !== 'string') return undefined;
  if (start !== undefined && typeof start !== 'string') return undefined;
  if (pidNamespace !== undefined && typeof pidNamespace !== 'string') return undefined;
  return parsed as ScratchOwner;
}

/**
 * Removes the scratch folders under `root` (default the system's temp dir) whose owner is provably gone (with
 * `exclusive`: made by any other process); returns their paths. Best effort: a folder that cannot be read or removed
 * is skipped, as is anything without an owner file.
 */
export async function sweepScratch(opts: { root?: string; exclusive?: boolean } = {}): Promise<string[]> {
  const root = opts.root ?? tmpdir();
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(PREFIX)) continue;
    const dir = join(root, name);
    const owner = await readOwner(dir);
    if (!owner || !ownerGone(owner, currentOwner(), opts.exclusive)) continue;
    try {
      await rm(dir, { recursive: true, force: true });
      removed.push(dir);
    } catch {
      // Another sweeper got there first, or the folder is not ours to remove: either way nothing to do.
    }
  }
  return removed;
}
