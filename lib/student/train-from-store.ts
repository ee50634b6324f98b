/**
 * A training run whose checkpoints live in the artifact store: the trainStudent activity's work, without Temporal.
 * Training runs in a child process (child.ts) so the caller's event loop stays free for heartbeats; each resume
 * checkpoint the child writes is stored as it comes (checkpoint-uploads.ts), so a later attempt, on any worker, can
 * continue from the newest.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../errors';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import { CheckpointUploads, type CheckpointUploadHooks } from './checkpoint-uploads';
import { runStudentJob, type TrainJobResult } from './child';
import type { StudentOptions } from './options';
import type { TrainProgress, TrainRecord } from './train';

export interface StoredTrainingJob {
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

export interface StoredTrainingResult {
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
export async function trainFromStore(
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
