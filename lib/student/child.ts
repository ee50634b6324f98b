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
import { CheckpointCorruptError } from './checkpoint-file';
import type { StudentOptions } from './options';
import type { TrainProgress, TrainResult } from './train';
import type { TrainRecord } from './pairs';

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
  /**
   * Also generate the `explain:` rationale of the first `count` inputs (for the run report's examples), in the same
   * child, after the predictions. Ignored for a student not trained to explain.
   */
  explain?: { count: number };
}

export type StudentJob = TrainJob | PredictJob;

/** A training result without the checkpoint bytes, which are at the job's `checkpointPath`. */
export type TrainJobResult = Omit<TrainResult, 'checkpoint'> & { checkpointPath: string };

export interface PredictJobResult {
  outputs: string[];
  backend: string;
  /** The rationales asked for with `explain`, and the wall time they took (absent when none were generated). */
  explanations?: string[];
  explainMs?: number;
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
  | { type: 'error'; error: ChildError };

/** An error as it crosses IPC: enough to rebuild the error classes a caller tells apart. */
export interface ChildError {
  name: string;
  message: string;
  stack?: string;
  field?: string;
  /** A {@link CheckpointCorruptError}'s source. */
  source?: string;
}

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

/**
 * The child's flags: TensorFlow.js's bundle, loaded first; tsx's CommonJS hook; the parent's other flags; and
 * `--expose-gc`, with which the checkpoint writer frees the tensors it has read back as it goes (checkpoint-file.ts).
 *
 * Every child loads `@tensorflow/tfjs` (lib/student/tf.ts), a few MB of plain JavaScript. Through tsx's hook, which
 * reads and checks each file it loads, that took 0.6–0.7 s of the child's start; required before the hook is in place,
 * 0.3 s, and the TypeScript that imports it later gets the same module from the cache. Two children per pipeline run.
 *
 * The TypeScript loader is always tsx's CommonJS hook, as `stepwise` itself registers it (bin/stepwise.js), even when
 * the parent was started with `--import tsx` (the benches): that form also starts tsx's ES module hooks on a
 * thread of their own, which the child (CommonJS throughout) never uses and which cost it ~0.5 s of CPU at start.
 */
function childExecArgv(): string[] {
  return [
    '--require',
    require.resolve('@tensorflow/tfjs'),
    ...inheritedFlags(process.execArgv),
    '--require',
    require.resolve('tsx/cjs'),
    '--expose-gc',
  ];
}

/** Flags that take their value as the next argument when not written `--flag=value`. */
const LOADER_FLAGS = new Set(['--import', '--require', '-r', '--loader', '--experimental-loader']);

/**
 * The parent's flags a child keeps: not an inspector flag (the child would fight the parent for the debugger port),
 * not `--expose-gc` (added once), and not a flag that loads tsx, whose hook the child registers its own way.
 */
export function inheritedFlags(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i];
    if (arg.startsWith('--inspect') || arg === '--expose-gc') continue;
    const eq = arg.indexOf('=');
    const flag = eq < 0 ? arg : arg.slice(0, eq);
    if (LOADER_FLAGS.has(flag)) {
      const value = eq < 0 ? execArgv[i + 1] : arg.slice(eq + 1);
      if (eq < 0) i++;
      if (value !== undefined && !isTsx(value)) kept.push(flag, value);
      continue;
    }
    kept.push(arg);
  }
  return kept;
}

/** `tsx`, `tsx/cjs`, `tsx/esm` or a resolved path into tsx's package. */
function isTsx(specifier: string): boolean {
  return /^tsx(\/|$)/.test(specifier) || /[\\/]node_modules[\\/]tsx[\\/]/.test(specifier);
}

/** How a job ended, as far as the child told us: its result or its error. */
type Outcome = { ok: true; value: TrainJobResult | PredictJobResult } | { ok: false; error: unknown };

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
      child = forkChild();
    } catch (err) {
      reject(err);
      return;
    }
    const stderrTail = keepOutputTail(child);
    // Set once the child has answered; the promise settles only at 'exit', so the process is gone by then.
    let outcome: Outcome | undefined;
    const abort = killOnAbort(child, signal);
    forwardMessages(child, hooks, (o) => (outcome = o));

    child.on('spawn', () => {
      if (child.pid !== undefined) hooks.onSpawn?.(child.pid);
      child.send({ type: 'job', job });
    });

    child.on('error', (err) => {
      // Spawn failures; a child that did spawn reports through 'exit'.
      if (child.pid === undefined) {
        abort.stopListening();
        reject(err);
      }
    });

    child.on('exit', (code, exitSignal) => {
      abort.stopListening();
      abort.cancelKill();
      if (abort.aborted() && !outcome) {
        reject(abortError(signal!));
      } else if (outcome?.ok) {
        resolve(outcome.value);
      } else if (outcome) {
        reject(outcome.error);
      } else {
        reject(crashError(job.kind, code, exitSignal, stderrTail()));
      }
    });
  });
}

/** Forks `child-main` with the TypeScript loader, its stdout and stderr piped back, and an IPC channel. */
function forkChild(): ChildProcess {
  return fork(require.resolve('./child-main'), [], {
    execArgv: childExecArgv(),
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    // Structured clone rather than JSON: NaN (a final loss with no steps) and undefined fields arrive as they were sent.
    serialization: 'advanced',
  });
}

/** Keeps the last {@link STDERR_TAIL_BYTES} of the child's output; returns a reader of what is kept so far. */
function keepOutputTail(child: ChildProcess): () => string {
  let stderr = '';
  const keepTail = (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
  };
  child.stderr?.on('data', keepTail);
  // The child never writes results to stdout; whatever libraries print there is kept with stderr for diagnosis.
  child.stdout?.on('data', keepTail);
  return () => stderr;
}

/** The abort wiring of one child: whether it was aborted, and the clean-up once the child is gone. */
interface AbortWiring {
  aborted(): boolean;
  /** Removes the listener from the signal (which may outlive the job). */
  stopListening(): void;
  /** Cancels a pending SIGKILL. */
  cancelKill(): void;
}

/** On abort, SIGTERM the child (a chance to exit cleanly) and SIGKILL it if it is still there after the grace period. */
function killOnAbort(child: ChildProcess, signal: AbortSignal | undefined): AbortWiring {
  let aborted = false;
  let killTimer: NodeJS.Timeout | undefined;
  const onAbort = () => {
    aborted = true;
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
    // The timer must not keep the parent alive on its own.
    killTimer.unref();
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  return {
    aborted: () => aborted,
    stopListening: () => signal?.removeEventListener('abort', onAbort),
    cancelKill: () => {
      if (killTimer) clearTimeout(killTimer);
    },
  };
}

/**
 * Passes progress and checkpoint messages to the hooks, and hands the child's answer (result or error) to `onOutcome`,
 * then disconnects so that the child can exit.
 */
function forwardMessages(
  child: ChildProcess,
  hooks: JobHooks<TrainProgress> | JobHooks<PredictProgress>,
  onOutcome: (outcome: Outcome) => void
): void {
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
      onOutcome({ ok: true, value: message.result });
      child.disconnect();
    } else if (message.type === 'error') {
      onOutcome({ ok: false, error: reviveError(message.error) });
      child.disconnect();
    }
  });
}

/** The error for a child that exited without answering, with the last 20 lines of its output in the message. */
function crashError(
  kind: StudentJob['kind'],
  code: number | null,
  exitSignal: NodeJS.Signals | null,
  stderr: string
): StudentChildCrashError {
  const how = exitSignal ? `was killed by ${exitSignal}` : `exited with code ${code}`;
  const tail = stderr.trim().split('\n').slice(-20).join('\n');
  return new StudentChildCrashError(
    `student ${kind} process ${how} before reporting a result${tail ? `; stderr tail:\n${tail}` : ''}`,
    code,
    exitSignal,
    stderr
  );
}

function abortError(signal: AbortSignal): Error {
  const err = new Error('student job aborted: the child process was killed', { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}

function reviveError(e: ChildError): Error {
  // Rebuilt as the classes they were: an InputError (a corrupt checkpoint is one) must stay non-retryable.
  const err =
    e.name === 'CheckpointCorruptError'
      ? new CheckpointCorruptError(e.message, e.field ?? 'checkpoint', e.source ?? e.field ?? 'checkpoint')
      : e.name === 'InputError'
        ? new InputError(e.message, e.field)
        : new Error(e.message);
  err.name = e.name;
  if (e.stack) err.stack = e.stack;
  return err;
}
