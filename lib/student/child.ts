/**
 * Runs a student job (training or prediction) in a child process. tfjs kernels are synchronous native calls that
 * hold the JavaScript thread for the whole of a step; in a Temporal worker that would stall heartbeats and
 * cancellation (an activity in the worker's own event loop cannot heartbeat while a kernel runs, and cancellation
 * reaches it only through heartbeats). In a child, the caller's event loop stays free: progress arrives
 * as IPC messages, an abort kills the child, and a crash (out of memory, a native fault) is reported instead of
 * taking the worker down with it. The checkpoint goes to a file, not over IPC.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { InputError } from '../errors';
import type { BackendName } from './backend';
import type { StudentOptions } from './options';
import type { TrainProgress, TrainRecord, TrainResult } from './train';

export interface TrainJob {
  kind: 'train';
  records: TrainRecord[];
  valid?: TrainRecord[];
  /**
   * Validated training options (`studentOptionsOf` a spec's section, or `parseStudentOptions`), passed to `train()`
   * as they are; the resume and init checkpoints travel as files (`resumeFromPath`, `initFromPath`), not in here.
   */
  options: StudentOptions;
  /** Where the child writes the safetensors checkpoint (atomically: a temporary file, then a rename). */
  checkpointPath: string;
  /** A resume checkpoint file to continue training from (see `TrainOptions.resumeFrom`). */
  resumeFromPath?: string;
  /** A Stepwise checkpoint file to start from instead of a fresh init (see `TrainOptions.initFrom`). */
  initFromPath?: string;
  /**
   * Where the child writes the periodic resume checkpoints that `options.checkpointEvery` and
   * `checkpointEveryMinutes` ask for, as `resume-<step>.safetensors` (atomically), each reported to
   * `hooks.onCheckpoint`. The caller owns the files: it uploads and deletes them. Without it, none are written.
   */
  checkpointDir?: string;
  /** Overrides `options.backend` (a caller that has picked one already). */
  backend?: BackendName | 'auto';
}

export interface PredictJob {
  kind: 'predict';
  checkpointPath: string;
  inputs: string[];
  maxLength: number;
  batchSize: number;
  backend?: BackendName | 'auto';
}

export type StudentJob = TrainJob | PredictJob;

/** A training result without the checkpoint bytes, which are at the job's `checkpointPath`. */
export type TrainJobResult = Omit<TrainResult, 'checkpoint'> & { checkpointPath: string };

export interface PredictJobResult {
  outputs: string[];
  backend: string;
}

/** Prediction progress: inputs done of the total. */
export interface PredictProgress {
  step: number;
  totalSteps: number;
}

/** A resume checkpoint the child has written (train jobs with a `checkpointDir`). */
export interface CheckpointFile {
  /** Steps completed when it was taken. */
  step: number;
  path: string;
}

export interface JobHooks<P> {
  onProgress?(p: P): void;
  /** A resume checkpoint file is complete at `path` (train jobs with a `checkpointDir`). */
  onCheckpoint?(c: CheckpointFile): void;
  /** Aborting kills the child (SIGTERM, then SIGKILL after 2 s) and rejects with an `AbortError`. */
  signal?: AbortSignal;
  /** The child's pid, once it is running (for logs, and for tests that need to kill it). */
  onSpawn?(pid: number): void;
}

/** Messages from the child. */
export type ChildMessage =
  | { type: 'progress'; progress: TrainProgress | PredictProgress }
  | ({ type: 'checkpoint' } & CheckpointFile)
  | { type: 'result'; result: TrainJobResult | PredictJobResult }
  | { type: 'error'; error: { name: string; message: string; stack?: string; field?: string } };

/** The child ended without a result: killed, out of memory, a native crash. Retrying may help. */
export class StudentChildCrashError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly signal: NodeJS.Signals | null,
    readonly stderrTail: string
  ) {
    super(message);
    this.name = 'StudentChildCrashError';
  }
}

const KILL_GRACE_MS = 2000;
const STDERR_TAIL_BYTES = 8192;

/** The TypeScript loader for the child: the parent's own flags when it was started with tsx, else tsx's hook. */
function childExecArgv(): string[] {
  // An inspector flag would make the child fight the parent for the debugger port.
  const inherited = process.execArgv.filter((arg) => !arg.startsWith('--inspect'));
  if (inherited.some((arg) => arg.includes('tsx'))) return inherited;
  return [...inherited, '--require', require.resolve('tsx/cjs')];
}

/**
 * Runs `job` in a child process and resolves with its result.
 * Rejects with an `InputError` when the child rejected the job's input (never worth retrying), an `AbortError` when
 * `hooks.signal` aborted it, a {@link StudentChildCrashError} (exit code or signal, and the stderr tail) when the
 * child died without answering, and otherwise with the child's error (name, message and stack preserved).
 */
export function runStudentJob(job: TrainJob, hooks?: JobHooks<TrainProgress>): Promise<TrainJobResult>;
export function runStudentJob(job: PredictJob, hooks?: JobHooks<PredictProgress>): Promise<PredictJobResult>;
export function runStudentJob(
  job: StudentJob,
  hooks: JobHooks<TrainProgress> | JobHooks<PredictProgress> = {}
): Promise<TrainJobResult | PredictJobResult> {
  return new Promise((resolve, reject) => {
    const { signal } = hooks;
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    let child: ChildProcess;
    try {
      child = fork(require.resolve('./child-main'), [], {
        execArgv: childExecArgv(),
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        serialization: 'advanced',
      });
    } catch (err) {
      reject(err);
      return;
    }
    let stderr = '';
    const keepTail = (chunk: Buffer) => {
      stderr = (stderr + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
    };
    child.stderr?.on('data', keepTail);
    // The child never writes results to stdout; whatever libraries print there is kept with stderr for diagnosis.
    child.stdout?.on('data', keepTail);

    let outcome: { ok: true; value: TrainJobResult | PredictJobResult } | { ok: false; error: unknown } | undefined;
    let aborted = false;
    let killTimer: NodeJS.Timeout | undefined;

    const onAbort = () => {
      aborted = true;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
      killTimer.unref();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    child.on('message', (message: ChildMessage) => {
      if (message.type === 'progress') {
        try {
          (hooks.onProgress as ((p: unknown) => void) | undefined)?.(message.progress);
        } catch {
          // A failing progress callback (a heartbeat after cancellation, say) must not lose the job's result.
        }
      } else if (message.type === 'checkpoint') {
        try {
          hooks.onCheckpoint?.({ step: message.step, path: message.path });
        } catch {
          // As for progress: the caller's bookkeeping must not lose the job.
        }
      } else if (message.type === 'result') {
        outcome = { ok: true, value: message.result };
        child.disconnect();
      } else if (message.type === 'error') {
        outcome = { ok: false, error: reviveError(message.error) };
        child.disconnect();
      }
    });

    child.on('spawn', () => {
      if (child.pid !== undefined) hooks.onSpawn?.(child.pid);
      child.send({ type: 'job', job });
    });

    child.on('error', (err) => {
      // Spawn failures; a child that did spawn reports through 'exit'.
      if (child.pid === undefined) {
        signal?.removeEventListener('abort', onAbort);
        reject(err);
      }
    });

    child.on('exit', (code, exitSignal) => {
      signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      if (aborted && !outcome) {
        reject(abortError(signal!));
      } else if (outcome?.ok) {
        resolve(outcome.value);
      } else if (outcome) {
        reject(outcome.error);
      } else {
        const how = exitSignal ? `was killed by ${exitSignal}` : `exited with code ${code}`;
        const tail = stderr.trim().split('\n').slice(-20).join('\n');
        reject(
          new StudentChildCrashError(
            `student ${job.kind} process ${how} before reporting a result${tail ? `; stderr tail:\n${tail}` : ''}`,
            code,
            exitSignal,
            stderr
          )
        );
      }
    });
  });
}

function abortError(signal: AbortSignal): Error {
  const err = new Error('student job aborted: the child process was killed', { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}

function reviveError(e: { name: string; message: string; stack?: string; field?: string }): Error {
  const err = e.name === 'InputError' ? new InputError(e.message, e.field) : new Error(e.message);
  err.name = e.name;
  if (e.stack) err.stack = e.stack;
  return err;
}
