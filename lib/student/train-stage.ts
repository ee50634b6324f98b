/**
 * The trainStudent stage's work, without Temporal: read the stage's records from the store and train in a child
 * process (child.ts), so the caller's event loop stays free for heartbeats. Each resume checkpoint the child writes is
 * stored as it comes (checkpoint-uploads.ts), so a later attempt, on any worker, can continue from the newest; the
 * trained checkpoint and the training log are stored at the end.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../errors';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import { CheckpointUploads, type CheckpointUploadHooks } from './checkpoint-uploads';
import { runStudentJob, type TrainJobResult } from './child';
import { studentOptionsOf, type StudentOptions } from './options';
import type { TrainProgress } from './train';
import type { TrainRecord } from './pairs';
import type { Example } from '../data/types';
import type { RationaleRecord } from '../data/rationales';
import type { PipelineSpec } from '../pipeline/spec';

interface StoredTrainingJob {
  /** Validated options (`studentOptionsOf` a spec's student section). */
  options: StudentOptions;
  records: TrainRecord[];
  valid: TrainRecord[];
  /** A Stepwise checkpoint file on this machine to start from (the spec's `student.init`); unused when resuming. */
  init?: string;
  /** A stored resume checkpoint to continue from. */
  resumeFrom?: ArtifactRef;
}

export interface StoredTrainingHooks extends CheckpointUploadHooks {
  /** Aborting kills the training child. */
  signal?: AbortSignal;
  onProgress?(p: TrainProgress): void;
}

interface StoredTrainingResult {
  /** The trained student's checkpoint. */
  checkpoint: ArtifactRef;
  training: Omit<TrainJobResult, 'checkpointPath'>;
  /** The init weights, stored by content so lineage names exactly the weights this student started from. */
  init?: ArtifactRef;
  /** Resume checkpoints stored while training. */
  checkpointsStored: number;
}

/** The init file, stored, and written where the child reads it. */
async function stageInit(store: ArtifactStore, file: string, dir: string): Promise<{ ref: ArtifactRef; path: string }> {
  const bytes = await readFile(file).catch((err: NodeJS.ErrnoException) => {
    throw new InputError(
      `student.init: cannot read '${file}' on this worker (${err.code ?? err.message}); expected a checkpoint file from \`stepwise import-t5\``,
      'student.init'
    );
  });
  const ref = await store.put(bytes, 'application/octet-stream');
  const path = join(dir, 'init.safetensors');
  await writeFile(path, bytes);
  return { ref, path };
}

/**
 * Trains in a child process from `job`, storing resume checkpoints as they come and the trained checkpoint at the end.
 * @throws InputError for bad records, an unreadable init file or a resume checkpoint of another run; an
 *   `AbortError` when `hooks.signal` aborted; `StudentChildCrashError` when the child died.
 */
async function trainFromStore(
  store: ArtifactStore,
  job: StoredTrainingJob,
  hooks: StoredTrainingHooks
): Promise<StoredTrainingResult> {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-train-'));
  const uploads = new CheckpointUploads(store, hooks);
  try {
    let resumeFromPath: string | undefined;
    if (job.resumeFrom) {
      resumeFromPath = join(dir, 'resume-from.safetensors');
      await writeFile(resumeFromPath, await store.get(job.resumeFrom));
    }
    const init = job.init && !job.resumeFrom ? await stageInit(store, job.init, dir) : undefined;
    const checkpointPath = join(dir, 'checkpoint.safetensors');
    const { checkpointPath: _written, ...training } = await runStudentJob(
      {
        kind: 'train',
        records: job.records,
        valid: job.valid,
        options: job.options,
        checkpointPath,
        resumeFromPath,
        initFromPath: init?.path,
        checkpointDir: dir,
      },
      { signal: hooks.signal, onProgress: hooks.onProgress, onCheckpoint: (file) => uploads.add(file) }
    );
    const checkpoint = await store.putFile(checkpointPath, 'application/octet-stream');
    return { checkpoint, training, init: init?.ref, checkpointsStored: uploads.stored };
  } finally {
    await uploads.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export interface TrainStudentInput {
  student: PipelineSpec['student'];
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
}

/** Where this attempt starts: the stored checkpoint an earlier attempt left, and which attempt this is (for the log). */
export interface TrainAttempt {
  resumeFrom?: ArtifactRef;
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
    lossHistory: result.lossHistory,
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
      init: s.init,
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
  };
}
