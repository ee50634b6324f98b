import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { ArtifactStore, ArtifactRef } from '../lib/store/artifact-store';
import { trainStudentFromStore, type StoredCheckpoint } from '../lib/student/train-stage';
import { resolveInRoots } from '../lib/data/roots';
import type { TrainStudentInput, TrainStudentResult } from '../contract';
import { trainingMetrics } from './metrics';
import { KEEPALIVE_MS, mapErrors, progressReporter } from './progress';

/**
 * What trainStudent heartbeats. Temporal keeps the last heartbeat's details for the next attempt, so the stored resume
 * checkpoints named here are where a retry (on another worker, after a crash) picks up training.
 */
export interface TrainHeartbeat {
  step: number;
  total: number;
  loss?: number;
  /** The newest resume checkpoint in the store, and the step it was taken after (`checkpoints[0]`). */
  checkpoint?: ArtifactRef;
  checkpointStep?: number;
  /**
   * The last {@link CHECKPOINTS_KEPT} stored resume checkpoints, newest first: a retry resumes from the newest that
   * reads back intact, so one corrupted at rest costs an interval of recomputation instead of the run.
   */
  checkpoints?: StoredCheckpoint[];
  /** The step this attempt resumed after, when it did. */
  resumedFrom?: number;
}

/** How many stored checkpoints a heartbeat names: the newest, and one to fall back to should it be damaged. */
const CHECKPOINTS_KEPT = 2;

function isArtifactRef(value: unknown): value is ArtifactRef {
  const ref = value as ArtifactRef | undefined;
  return typeof ref?.sha256 === 'string' && typeof ref.size === 'number';
}

function isStoredCheckpoint(value: unknown): value is StoredCheckpoint {
  const c = value as StoredCheckpoint | undefined;
  return isArtifactRef(c?.ref) && typeof c.step === 'number';
}

/**
 * The stored checkpoints a retry may resume from, newest first: those the previous attempt heartbeated (only the
 * newest, from an attempt of a version that named one).
 */
function resumePoints(details: unknown): StoredCheckpoint[] {
  const prior = details as Partial<TrainHeartbeat> | undefined;
  if (Array.isArray(prior?.checkpoints)) return prior.checkpoints.filter(isStoredCheckpoint);
  return isArtifactRef(prior?.checkpoint) && typeof prior.checkpointStep === 'number'
    ? [{ ref: prior.checkpoint, step: prior.checkpointStep }]
    : [];
}

/** Sets what `beat` says of the stored checkpoints: the list, and its newest in the single fields readers use. */
function nameCheckpoints(beat: TrainHeartbeat, checkpoints: StoredCheckpoint[]): void {
  beat.checkpoints = checkpoints.slice(0, CHECKPOINTS_KEPT);
  const [newest] = beat.checkpoints;
  if (newest) {
    beat.checkpoint = newest.ref;
    beat.checkpointStep = newest.step;
  } else {
    delete beat.checkpoint;
    delete beat.checkpointStep;
  }
}

/**
 * Train the student in a child process: tfjs calls are synchronous native work that would otherwise block this
 * worker's event loop, and with it heartbeats and cancellation. Cancelling the activity kills the child.
 *
 * Resumable: each resume checkpoint the child writes is uploaded to the store and its reference heartbeated, with the
 * one before it; a retry finds them in `heartbeatDetails` and continues from the newest that reads back intact, so a
 * killed worker costs at most one checkpoint interval of recomputation (plus the steps taken while that checkpoint
 * was uploading), and a checkpoint corrupted at rest one interval more.
 */
export async function trainStudent(
  deps: { store: ArtifactStore; client?: Client; dataRoots?: readonly string[] },
  input: TrainStudentInput
): Promise<TrainStudentResult> {
  return mapErrors(async () => {
    // The sample stage checked the spec's paths; a GPU worker may be configured with other roots, so it checks too.
    if (deps.dataRoots && input.student.init) await resolveInRoots(input.student.init, 'student.init', deps.dataRoots);
    const ctx = Context.current();
    const report = progressReporter(deps.client, 'trainStudent');
    const metrics = trainingMetrics();
    const resume = resumePoints(ctx.info.heartbeatDetails);
    // Every heartbeat carries the stored checkpoints: details are replaced, not merged, so one without them would
    // lose them.
    const beat: TrainHeartbeat = { step: resume[0]?.step ?? 0, total: input.student.steps };
    nameCheckpoints(beat, resume);
    if (resume[0]) beat.resumedFrom = resume[0].step;
    const heartbeat = () => {
      const { step, total, ...details } = beat;
      report(step, total, details);
    };
    heartbeat();
    // Whatever a training step costs: a big model's step can outlast a short heartbeat timeout, and the child's
    // progress arrives only between steps.
    const keepalive = setInterval(heartbeat, KEEPALIVE_MS);
    try {
      return await trainStudentFromStore(
        deps.store,
        input,
        { resumeFrom: resume, attempt: ctx.info.attempt },
        {
          signal: ctx.cancellationSignal,
          onProgress: (p) => {
            metrics.onProgress(p);
            beat.step = p.step;
            beat.loss = p.loss;
            heartbeat();
          },
          onStored: (ref, step, uploadMs) => {
            metrics.onStored(ref, uploadMs);
            nameCheckpoints(beat, [{ ref, step }, ...(beat.checkpoints ?? [])]);
            heartbeat();
          },
          onFailed: (step, err) => ctx.log.warn(`trainStudent: checkpoint at step ${step} not stored: ${err.message}`),
          onRejected: (bad, err) => {
            ctx.log.warn(`trainStudent: not resuming from the checkpoint at step ${bad.step}: ${err.message}`);
            // Named no more: a later attempt must not try it again.
            nameCheckpoints(
              beat,
              (beat.checkpoints ?? []).filter((c) => c.ref.sha256 !== bad.ref.sha256)
            );
            heartbeat();
          },
          onResumePoint: (from) => {
            metrics.startsAfter(from?.step ?? 0);
            if (from) {
              ctx.log.info(`trainStudent: resuming after step ${from.step} (attempt ${ctx.info.attempt})`);
              beat.step = from.step;
              beat.resumedFrom = from.step;
            } else if (resume.length > 0) {
              ctx.log.warn(`trainStudent: no stored checkpoint is usable; training again from the start`);
              beat.step = 0;
              delete beat.resumedFrom;
            }
            heartbeat();
          },
        }
      );
    } finally {
      clearInterval(keepalive);
    }
  });
}
