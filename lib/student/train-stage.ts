/**
 * The trainStudent stage's work, without Temporal: read the stage's records from the store and train in a child
 * process (child.ts), so the caller's event loop stays free for heartbeats. Each resume checkpoint the child writes is
 * stored as it comes (checkpoint-uploads.ts), so a later attempt, on any worker, can continue from the newest; the
 * trained checkpoint and the training log are stored at the end.
 *
 * A later attempt is given the last few stored checkpoints, newest first, and resumes from the newest that reads back
 * intact (its store hash, its embedded checksum, its tensor shapes): a checkpoint damaged at rest costs one more
 * interval of recomputation, never a run trained on from garbage. Training is deterministic, so falling back, even
 * all the way to the start, reaches the same weights.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors';
import { IntegrityError, NotFoundError, type ArtifactRef, type ArtifactStore } from '../store/artifact-store';
import { CheckpointCorruptError } from './checkpoint-file';
import { CheckpointUploads, type CheckpointUploadHooks } from './checkpoint-uploads';
import { runStudentJob, type TrainJobResult } from './child';
import { studentOptionsOf, type StudentOptions } from './options';
import type { TrainProgress } from './train';
import type { T5Config } from './config';
import type { TrainRecord } from './pairs';
import type { Example } from '../data/types';
import type { RationaleRecord } from '../data/rationales';
import type { PipelineSpec } from '../pipeline/spec';
import { scratchDir } from '../scratch';

/**
 * checkpoint.ts's `verifyCheckpoint`, loaded on first use: its shape checks bring in TensorFlow.js (seconds of
 * startup), which a worker needs only when it resumes or starts from an init, and otherwise leaves to the child.
 */
const verifyCheckpoint: typeof import('./checkpoint').verifyCheckpoint = (buf, from) =>
  (require('./checkpoint') as typeof import('./checkpoint')).verifyCheckpoint(buf, from);

/** A resume checkpoint in the store, and the step it was taken after. */
export interface StoredCheckpoint {
  ref: ArtifactRef;
  step: number;
}

/** A stored checkpoint that a resume passed over, and why (for the training log). */
export interface RejectedCheckpoint {
  step: number;
  sha256: string;
  reason: string;
}

interface StoredTrainingJob {
  /** Validated options (`studentOptionsOf` a spec's student section). */
  options: StudentOptions;
  records: TrainRecord[];
  valid: TrainRecord[];
  /** A Stepwise checkpoint file on this machine to start from (the spec's `student.init`). */
  init?: string;
  /** Or a stored checkpoint to start from: a registered version's, resolved from a `NAME@REF` init. */
  initStored?: ArtifactRef;
  /** Stored resume checkpoints to continue from, newest first: the first that reads back intact is used. */
  resumeFrom?: readonly StoredCheckpoint[];
}

export interface StoredTrainingHooks extends CheckpointUploadHooks {
  /** Aborting kills the training child. */
  signal?: AbortSignal;
  onProgress?(p: TrainProgress): void;
  /**
   * A stored checkpoint is unusable (corrupt, or gone from the store) and is passed over; the caller should stop
   * naming it as a place to resume from.
   */
  onRejected?(checkpoint: StoredCheckpoint, err: Error): void;
  /** Where this attempt starts: the checkpoint it resumes from, or undefined when it trains from the start. */
  onResumePoint?(checkpoint: StoredCheckpoint | undefined): void;
}

interface StoredTrainingResult {
  /** The trained student's checkpoint. */
  checkpoint: ArtifactRef;
  training: Omit<TrainJobResult, 'checkpointPath'>;
  /** The init weights, stored by content so lineage names exactly the weights this student started from. */
  init?: ArtifactRef;
  /** Resume checkpoints stored while training. */
  checkpointsStored: number;
  /** Stored checkpoints this attempt could not resume from. */
  rejected: RejectedCheckpoint[];
}

/** The init file (or a registered version's stored checkpoint), checked, stored, and written where the child reads it. */
async function stageInit(
  store: ArtifactStore,
  file: string | ArtifactRef,
  dir: string
): Promise<{ ref: ArtifactRef; path: string }> {
  const bytes =
    typeof file !== 'string'
      ? await store.get(file)
      : await readFile(file).catch((err: NodeJS.ErrnoException) => {
          throw new InputError(
            `student.init: cannot read '${file}' on this worker (${err.code ?? err.message}); expected a checkpoint file from \`stepwise import-t5\``,
            'student.init'
          );
        });
  const source = typeof file === 'string' ? file : store.uri(file);
  try {
    // Checked here, before anything is stored or trained: a damaged init is the user's to replace, not to retry.
    verifyCheckpoint(bytes, { field: 'student.init', source });
  } catch (err) {
    if (err instanceof CheckpointCorruptError || !(err instanceof InputError)) throw err;
    throw new InputError(`student.init: '${source}' is not a Stepwise checkpoint: ${err.message}`, 'student.init');
  }
  const ref = await store.put(bytes, 'application/octet-stream');
  const path = join(dir, 'init.safetensors');
  await writeFile(path, bytes);
  return { ref, path };
}

/**
 * A stored resume checkpoint's bytes, checked: the store's hash against the reference, then the checkpoint's own
 * checksum, format and shapes.
 * @throws CheckpointCorruptError when they fail a check; NotFoundError when the object is gone; the store's errors.
 */
async function readStoredCheckpoint(store: ArtifactStore, ref: ArtifactRef): Promise<Buffer> {
  const source = store.uri(ref);
  const bytes = await store.get(ref).catch((err: unknown) => {
    if (!(err instanceof IntegrityError)) throw err;
    throw new CheckpointCorruptError(
      `resumeFrom (${source}) is corrupt: its bytes hash to sha256 ${err.actual}, but it was stored as sha256 ${err.expected}`,
      'resumeFrom',
      source
    );
  });
  try {
    if (verifyCheckpoint(bytes, { field: 'resumeFrom', source }).kind !== 'resume') {
      throw new InputError('it is a model checkpoint, not one written during training', 'resumeFrom');
    }
  } catch (err) {
    // Bytes that hash to what training stored yet are no resume checkpoint were damaged before they were stored.
    if (err instanceof InputError && !(err instanceof CheckpointCorruptError)) {
      throw new CheckpointCorruptError(`resumeFrom (${source}) is corrupt: ${err.message}`, 'resumeFrom', source);
    }
    throw err;
  }
  return bytes;
}

/**
 * The newest of `candidates` that reads back intact, written to `path`; the others are reported to `hooks.onRejected`
 * and passed over. Undefined when none is intact: training then starts from scratch.
 */
async function pickResumePoint(
  store: ArtifactStore,
  candidates: readonly StoredCheckpoint[],
  path: string,
  hooks: StoredTrainingHooks,
  rejected: RejectedCheckpoint[]
): Promise<StoredCheckpoint | undefined> {
  for (const candidate of candidates) {
    try {
      await writeFile(path, await readStoredCheckpoint(store, candidate.ref));
      return candidate;
    } catch (err) {
      // A store that cannot be reached is no reason to give up a good checkpoint: that is retried, not passed over.
      if (!(err instanceof CheckpointCorruptError || err instanceof NotFoundError)) throw err;
      rejected.push({ step: candidate.step, sha256: candidate.ref.sha256, reason: err.message });
      hooks.onRejected?.(candidate, err);
    }
  }
  return undefined;
}

/**
 * Trains in a child process from `job`, storing resume checkpoints as they come and the trained checkpoint at the end.
 * @throws InputError for bad records, an unreadable or corrupt init file or a resume checkpoint of another run; an
 *   `AbortError` when `hooks.signal` aborted; `StudentChildCrashError` when the child died.
 */
async function trainFromStore(
  store: ArtifactStore,
  job: StoredTrainingJob,
  hooks: StoredTrainingHooks
): Promise<StoredTrainingResult> {
  const dir = await scratchDir('train');
  const rejected: RejectedCheckpoint[] = [];
  const damaged = new Set<string>();
  const uploads = new CheckpointUploads(store, hooks, damaged);
  try {
    // Staged on a resume too: the run's options record the init's hash (resume.ts), and a run that can use none of
    // its checkpoints starts over from it.
    const source = job.initStored ?? job.init;
    const init = source ? await stageInit(store, source, dir) : undefined;
    const resumePath = join(dir, 'resume-from.safetensors');
    const resumed = job.resumeFrom?.length
      ? await pickResumePoint(store, job.resumeFrom, resumePath, hooks, rejected)
      : undefined;
    for (const r of rejected) damaged.add(r.sha256);
    hooks.onResumePoint?.(resumed);
    const checkpointPath = join(dir, 'checkpoint.safetensors');
    const { checkpointPath: _written, ...training } = await runStudentJob(
      {
        kind: 'train',
        records: job.records,
        valid: job.valid,
        options: job.options,
        checkpointPath,
        resumeFromPath: resumed ? resumePath : undefined,
        initFromPath: init?.path,
        checkpointDir: dir,
      },
      { signal: hooks.signal, onProgress: hooks.onProgress, onCheckpoint: (file) => uploads.add(file) }
    );
    const checkpoint = await store.putFile(checkpointPath, 'application/octet-stream');
    return { checkpoint, training, init: init?.ref, checkpointsStored: uploads.stored, rejected };
  } finally {
    await uploads.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A `NAME@REF` init, as the workflow resolved it once (so every attempt starts from the same version). */
export interface ResolvedInit {
  /** The reference as the spec wrote it, e.g. `my-model@champion`. */
  ref: string;
  name: string;
  version: number;
  checkpoint: ArtifactRef;
}

export interface TrainStudentInput {
  student: PipelineSpec['student'];
  /** Set when `student.init` names a registered version: its checkpoint replaces the path. */
  initFrom?: ResolvedInit;
  /** Validated rationale records, or plain examples when the method needs no teacher (standard finetuning). */
  train: ArtifactRef;
  valid: ArtifactRef;
}

export interface TrainStudentResult {
  checkpoint: ArtifactRef;
  /** JSON loss curve and run statistics. */
  trainLog: ArtifactRef;
  backend: string;
  steps: number;
  finalLoss: number;
  validLoss?: number;
  params: number;
  wallMs: number;
  /** The student's full T5 config (absent in results recorded before it was). */
  model?: T5Config;
  /** The registered version training started from, when `student.init` named one. */
  initFrom?: ResolvedInit;
}

/**
 * Where this attempt starts: the stored checkpoints earlier attempts left, newest first (the newest intact one is
 * used), and which attempt this is (for the log).
 */
export interface TrainAttempt {
  resumeFrom?: readonly StoredCheckpoint[];
  attempt: number;
}

/** A training record from a stage's output row. */
export function toTrainRecord(row: RationaleRecord | Example): TrainRecord {
  if ('goldLabel' in row) {
    return { input: row.input, goldLabel: row.goldLabel, teacherLabel: row.teacherLabel, rationale: row.rationale };
  }
  return { input: row.input, goldLabel: row.label };
}

/** The training log stored beside the checkpoint: the run's figures, its options and where this attempt began. */
function trainLogOf(run: StoredTrainingResult, options: TrainStudentInput['student'], attempt: number) {
  const result = run.training;
  return {
    backend: result.backend,
    // Absent from results of children built before it was recorded.
    backendDetail: result.backendDetail ?? null,
    optimizer: result.optimizer,
    steps: result.steps,
    stopReason: result.stopReason,
    finalLoss: result.finalLoss,
    validLoss: result.validLoss ?? null,
    bestStep: result.bestStep ?? null,
    params: result.params,
    wallMs: result.wallMs,
    // Where this attempt picked up (null: it trained from scratch), and how many checkpoints it stored.
    resumedFrom: result.resumedFrom ?? null,
    attempt,
    checkpointsStored: run.checkpointsStored,
    // Stored checkpoints this attempt found corrupt or missing and passed over, newest first.
    checkpointsRejected: run.rejected,
    lossHistory: result.lossHistory,
    // Absent from results of children built before validation parts were recorded.
    validHistory: result.validHistory ?? [],
    throughput: result.throughput ?? [],
    options,
    init: run.init ?? null,
  };
}

/**
 * Train the student on a stage's stored records and store the result. Resume checkpoints reach the store while it
 * trains (`hooks.onStored` names each), so a later attempt can pass the newest as `attempt.resumeFrom`.
 */
export async function trainStudentFromStore(
  store: ArtifactStore,
  input: TrainStudentInput,
  attempt: TrainAttempt,
  hooks: StoredTrainingHooks
): Promise<TrainStudentResult> {
  const [train, valid] = await Promise.all([
    store.getJsonl<RationaleRecord | Example>(input.train),
    store.getJsonl<RationaleRecord | Example>(input.valid),
  ]);
  const s = input.student;
  const run = await trainFromStore(
    store,
    {
      options: studentOptionsOf(s),
      records: train.map(toTrainRecord),
      valid: valid.map(toTrainRecord),
      ...(input.initFrom ? { initStored: input.initFrom.checkpoint } : { init: s.init }),
      resumeFrom: attempt.resumeFrom,
    },
    hooks
  );
  const result = run.training;
  const trainLog = await store.putJson(trainLogOf(run, s, attempt.attempt));
  return {
    checkpoint: run.checkpoint,
    trainLog,
    backend: result.backend,
    steps: result.steps,
    finalLoss: result.finalLoss,
    validLoss: result.validLoss,
    params: result.params,
    wallMs: result.wallMs,
    model: result.config,
    ...(input.initFrom ? { initFrom: input.initFrom } : {}),
  };
}
