import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { ArtifactStore, ArtifactRef } from '../lib/store/artifact-store';
import { trainStudentFromStore } from '../lib/student/train-stage';
import type { TrainStudentInput, TrainStudentResult } from '../contract';
import { mapErrors, progressReporter } from './progress';

/**
 * What trainStudent heartbeats. Temporal keeps the last heartbeat's details for the next attempt, so the newest
 * resume checkpoint in the store is where a retry (on another worker, after a crash) picks up training.
 */
export interface TrainHeartbeat {
  step: number;
  total: number;
  loss?: number;
  /** The newest resume checkpoint in the store, and the step it was taken after. */
  checkpoint?: ArtifactRef;
  checkpointStep?: number;
  /** The step this attempt resumed after, when it did. */
  resumedFrom?: number;
}

/** The worker heartbeats this often whatever a training step costs: a step of a big model can take longer than a
 * short heartbeat timeout, and the child's progress arrives only between steps. */
const KEEPALIVE_MS = 1000;

function isArtifactRef(value: unknown): value is ArtifactRef {
  const ref = value as ArtifactRef | undefined;
  return typeof ref?.sha256 === 'string' && typeof ref.size === 'number';
}

/** The stored checkpoint a retry resumes from: the newest one the previous attempt heartbeated, if any. */
function resumePoint(details: unknown): { checkpoint: ArtifactRef; checkpointStep: number } | undefined {
  const prior = details as Partial<TrainHeartbeat> | undefined;
  return isArtifactRef(prior?.checkpoint) && typeof prior.checkpointStep === 'number'
    ? { checkpoint: prior.checkpoint, checkpointStep: prior.checkpointStep }
    : undefined;
}

/**
 * Train the student in a child process: tfjs calls are synchronous native work that would otherwise block this
 * worker's event loop, and with it heartbeats and cancellation. Cancelling the activity kills the child.
 *
 * Resumable: each resume checkpoint the child writes is uploaded to the store and its reference heartbeated; a retry
 * finds the newest in `heartbeatDetails`, downloads it and continues from its step, so a killed worker costs at most
 * one checkpoint interval of recomputation (plus the steps taken while that checkpoint was uploading).
 */
export async function trainStudent(
  deps: { store: ArtifactStore; client?: Client },
  input: TrainStudentInput
): Promise<TrainStudentResult> {
  return mapErrors(async () => {
    const ctx = Context.current();
    const report = progressReporter(deps.client, 'trainStudent');
    const resume = resumePoint(ctx.info.heartbeatDetails);
    // Every heartbeat carries the newest checkpoint: details are replaced, not merged, so one without it would lose it.
    const beat: TrainHeartbeat = {
      step: resume?.checkpointStep ?? 0,
      total: input.student.steps,
      ...resume,
      ...(resume ? { resumedFrom: resume.checkpointStep } : {}),
    };
    const heartbeat = () => {
      const { step, total, ...details } = beat;
      report(step, total, details);
    };
    heartbeat();
    const keepalive = setInterval(heartbeat, KEEPALIVE_MS);
    if (resume)
      ctx.log.info(`trainStudent: resuming after step ${resume.checkpointStep} (attempt ${ctx.info.attempt})`);
    try {
      return await trainStudentFromStore(
        deps.store,
        input,
        { resumeFrom: resume?.checkpoint, attempt: ctx.info.attempt },
        {
          signal: ctx.cancellationSignal,
          onProgress: (p) => {
            beat.step = p.step;
            beat.loss = p.loss;
            heartbeat();
          },
          onStored: (ref, step) => {
            beat.checkpoint = ref;
            beat.checkpointStep = step;
            heartbeat();
          },
          onFailed: (step, err) => ctx.log.warn(`trainStudent: checkpoint at step ${step} not stored: ${err.message}`),
        }
      );
    } finally {
      clearInterval(keepalive);
    }
  });
}
