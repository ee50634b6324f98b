/**
 * One Temporal dev server per SQLite file. Two servers on one database corrupt each other's view of every run, so a
 * server start takes a lock file next to the database first (`temporal.db.lock`), naming the process that started
 * the server and, once it runs, the server itself. A lock whose server (or, while starting, whose owner) is gone is
 * stale and is taken over; a live holder is refused with an error that names the state folder.
 */
import { link, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { randomUUID } from 'node:crypto';

import { processRunning, processStartTime, type Log } from './cache';

/** What a lock file says. `*Start` is the process's start time (Linux), so a reused pid is not taken for the holder. */
export interface LockHolder {
  pid: number;
  pidStart?: string;
  serverPid?: number;
  serverStart?: string;
  host: string;
  since: string;
}

/** The database is in use by a live server: the message says which folder, which processes and since when. */
export class StateInUseError extends Error {
  constructor(
    readonly stateDir: string,
    readonly holder: LockHolder
  ) {
    super(
      `the state folder ${stateDir} is in use by another Stepwise process (pid ${holder.pid}` +
        (holder.serverPid ? `, Temporal dev server pid ${holder.serverPid}` : '') +
        `${holder.host === hostname() ? '' : ` on ${holder.host}`}, since ${holder.since}): ` +
        'wait for it to finish, stop it, or set STEPWISE_HOME to another folder'
    );
    this.name = 'StateInUseError';
  }
}

export interface DbLock {
  readonly file: string;
  /** Records the server's pid: from now on the lock is live exactly as long as the server is. */
  setServer(pid: number): Promise<void>;
  /** Removes the lock if it is still this one (a later server may have taken over after this one was killed). */
  release(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Creates `file` with `content` only if it does not exist, atomically: a reader never sees it half-written. */
async function createExclusive(file: string, content: string): Promise<boolean> {
  const scratch = `${file}.${process.pid}.${randomUUID().slice(0, 8)}`;
  await writeFile(scratch, content);
  try {
    await link(scratch, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await unlink(scratch).catch(() => undefined);
  }
}

async function readHolder(file: string): Promise<{ raw: string; holder?: LockHolder } | undefined> {
  let raw: string;
  try {
    raw = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return { raw, holder: JSON.parse(raw) as LockHolder };
  } catch {
    return { raw };
  }
}

/**
 * Whether the holder still owns the database. The server is what has the file open, so once it is recorded its
 * life decides; before that (the server is starting) the owner's does. A server whose owner died is waited for
 * (its watchdog stops it within seconds, infra/service-process.ts) and killed if it lingers: nobody is left to
 * use it.
 */
async function holderIsLive(holder: LockHolder, orphanWaitMs: number, log?: Log): Promise<boolean> {
  if (holder.host !== hostname()) return true;
  if (!holder.serverPid) return processRunning(holder.pid, holder.pidStart);
  if (!processRunning(holder.serverPid, holder.serverStart)) return false;
  if (processRunning(holder.pid, holder.pidStart)) return true;
  log?.(
    `waiting for the Temporal dev server ${holder.serverPid} of a stopped Stepwise process (${holder.pid}) to exit`
  );
  const deadline = Date.now() + orphanWaitMs;
  while (processRunning(holder.serverPid, holder.serverStart)) {
    if (Date.now() > deadline) {
      try {
        process.kill(holder.serverPid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
      await sleep(500);
      return processRunning(holder.serverPid, holder.serverStart);
    }
    await sleep(250);
  }
  return false;
}

/**
 * Take the lock of `dbFile`, taking over a stale one. Throws {@link StateInUseError} when a live server holds it.
 * `orphanWaitMs`: how long a server whose owner died gets to exit on its own before it is killed.
 */
export async function acquireDbLock(dbFile: string, opts: { orphanWaitMs?: number; log?: Log } = {}): Promise<DbLock> {
  const file = `${dbFile}.lock`;
  const mine: LockHolder = {
    pid: process.pid,
    pidStart: processStartTime(process.pid),
    host: hostname(),
    since: new Date().toISOString(),
  };
  let taken = false;
  // Each pass either takes the lock, fails, or removes a stale one; many passes mean another process keeps racing.
  for (let attempt = 0; attempt < 20 && !taken; attempt++) {
    taken = await createExclusive(file, JSON.stringify(mine));
    if (taken) break;
    const current = await readHolder(file);
    if (!current) continue; // released meanwhile
    if (!current.holder) {
      // Unparsable: written by something else, or damaged. Never half-written by us (createExclusive), so stale.
      await takeOver(file, current.raw);
      continue;
    }
    if (await holderIsLive(current.holder, opts.orphanWaitMs ?? 20_000, opts.log)) {
      throw new StateInUseError(dirname(dbFile), current.holder);
    }
    opts.log?.(
      `the lock ${file} of process ${current.holder.pid} is stale (no server holds the database): taking it over`
    );
    await takeOver(file, current.raw);
  }
  if (!taken) throw new Error(`could not take the lock ${file}: it keeps changing`);
  let held: LockHolder = mine;
  return {
    file,
    async setServer(pid) {
      held = { ...mine, serverPid: pid, serverStart: processStartTime(pid) };
      const scratch = `${file}.${process.pid}.${randomUUID().slice(0, 8)}`;
      await writeFile(scratch, JSON.stringify(held));
      await rename(scratch, file);
    },
    async release() {
      const current = await readHolder(file);
      if (current?.raw === JSON.stringify(held)) await unlink(file).catch(() => undefined);
    },
  };
}

/**
 * Removes a stale lock, unless another process replaced it since it was read: rename is atomic, so of two processes
 * taking over at once only one moves the file, and one that moved a fresh lock puts it back.
 */
async function takeOver(file: string, staleRaw: string): Promise<void> {
  const aside = `${file}.stale.${process.pid}.${randomUUID().slice(0, 8)}`;
  try {
    await rename(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const moved = await readFile(aside, 'utf8');
  if (moved !== staleRaw) await link(aside, file).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}
