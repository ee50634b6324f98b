import { spawn, type ChildProcess } from 'node:child_process';

import type { Log } from './cache';

/** A long-running dev service (Temporal, the S3 gateway) owned by this Node process. */
export interface ServiceProcess {
  readonly name: string;
  readonly pid: number;
  /** Why it ended (`exit 1`, `signal SIGKILL`), or undefined while it runs. */
  exitReason(): string | undefined;
  /** Settles with the exit reason once the process has ended, whether stopped or not. */
  readonly exited: Promise<string>;
  /** Whether `stop()` was called (by its owner, or by the exit hooks on a signal to this process). */
  stopRequested(): boolean;
  /** The last few KB of its stdout and stderr, for error messages when it dies. */
  outputTail(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has been reaped. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<ServiceProcess>();
let hooksInstalled = false;

/**
 * Services must not outlive the process that started them. On a normal exit (and `process.exit`) they get SIGTERM
 * synchronously; on SIGINT/SIGTERM/SIGHUP they are stopped gracefully — unless another handler (a Temporal worker's
 * graceful shutdown, a CLI's own) is listening, in which case that handler decides when the process ends and the
 * exit hook cleans up after it, so a draining worker keeps its server until the end. A SIGKILLed parent is covered
 * by the per-service watchdog.
 */
function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const service of live) {
      try {
        process.kill(-service.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      if (process.listenerCount(signal) > 1) return;
      void Promise.allSettled([...live].map((s) => s.stop(5_000))).then(() => {
        process.removeListener(signal, handler);
        // Die by the same signal, so the parent shell sees the usual status (130 for Ctrl-C).
        process.kill(process.pid, signal);
      });
    };
    process.on(signal, handler);
  }
}

/**
 * Start `cmd` as a service in its own process group: a terminal's Ctrl-C then reaches only this Node process, which
 * stops the service in order (after workers drain) instead of the server vanishing under them.
 */
export function startServiceProcess(
  name: string,
  cmd: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; log?: Log } = {}
): ServiceProcess {
  installExitHooks();
  const child = spawn(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let tail = '';
  let reason: string | undefined;
  let spawnError: string | undefined;
  let quiet = false;
  const onData = (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    tail = (tail + text).slice(-16 * 1024);
    if (opts.log && !quiet) for (const line of text.split('\n')) if (line.trim()) opts.log(`[${name}] ${line}`);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<void>((resolve) => {
    child.on('error', (err) => {
      spawnError = err.message;
      reason = `could not start: ${err.message}`;
      resolve();
    });
    child.on('exit', (code, signal) => {
      reason = signal ? `signal ${signal}` : `exit ${code}`;
      resolve();
    });
  });
  if (child.pid === undefined) {
    // spawn failed synchronously-ish (ENOENT); the 'error' event carries the reason.
    return {
      name,
      pid: -1,
      exited: exited.then(() => reason ?? spawnError ?? 'could not start'),
      stopRequested: () => false,
      exitReason: () => reason ?? spawnError ?? 'could not start',
      outputTail: () => tail,
      stop: async () => {
        await exited;
      },
    };
  }
  const pid = child.pid;
  const watchdog = startWatchdog(pid);
  let stopping: Promise<void> | undefined;
  const service: ServiceProcess = {
    name,
    pid,
    exited: exited.then(() => reason ?? 'exited'),
    stopRequested: () => stopping !== undefined,
    exitReason: () => reason,
    outputTail: () => tail,
    stop(graceMs = 10_000) {
      stopping ??= (async () => {
        // Shutdown chatter (pollers losing their connection) is expected, not news.
        quiet = true;
        if (reason === undefined) {
          signalGroup(pid, 'SIGTERM');
          const killTimer = setTimeout(() => signalGroup(pid, 'SIGKILL'), graceMs);
          await exited;
          clearTimeout(killTimer);
        }
        watchdog?.kill('SIGKILL');
        live.delete(service);
      })();
      return stopping;
    },
  };
  live.add(service);
  void exited.then(() => live.delete(service));
  return service;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/**
 * A tiny shell loop that outlives a SIGKILLed parent (test runner timeouts, OOM kills) and then stops the service,
 * which would otherwise hold its ports and database forever.
 */
function startWatchdog(servicePid: number): ChildProcess | undefined {
  const script =
    `while kill -0 ${process.pid} 2>/dev/null && kill -0 ${servicePid} 2>/dev/null; do sleep 1; done; ` +
    `kill -0 ${servicePid} 2>/dev/null || exit 0; kill -TERM -${servicePid} 2>/dev/null; i=0; ` +
    `while kill -0 ${servicePid} 2>/dev/null && [ $i -lt 10 ]; do sleep 0.5; i=$((i+1)); done; ` +
    `kill -KILL -${servicePid} 2>/dev/null`;
  try {
    const watchdog = spawn('/bin/sh', ['-c', script], { stdio: 'ignore', detached: true });
    watchdog.on('error', () => undefined);
    watchdog.unref();
    return watchdog;
  } catch {
    return undefined;
  }
}
