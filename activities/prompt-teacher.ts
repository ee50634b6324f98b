/**
 * The `promptTeacher` stage's activities, run by the `teacherStage` workflow: plan the shards, run one shard
 * (direct calls, or a batch job in three steps), and assemble the responses. Each is a thin adapter around one step
 * of `lib/teacher/stage` (where the store layout, shard identity and budget accounting live): error mapping,
 * heartbeats and cancellation.
 */
import { setMaxListeners } from 'node:events';

import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';

import {
  assembleResponses,
  collectShardBatch,
  planShards,
  pollShardBatch,
  promptShard,
  submitShardBatch,
  type StageDeps,
} from '../lib/teacher/stage';
import type {
  BatchStatus,
  FinishTeacherInput,
  FinishTeacherResult,
  TeacherBatchCollectInput,
  TeacherBatchInput,
  TeacherBatchPollInput,
  TeacherBatchSubmitted,
  TeacherPlan,
  TeacherShardInput,
  TeacherShardResult,
  TeacherStageInput,
} from '../contract';
import { priceOf } from '../lib/teacher/stage/accounting';
import { teacherMetrics } from './metrics';
import { mapErrors, progressReporter, withKeepalive } from './progress';

/**
 * How often a shard signals its count to the stage's workflow. Each signal is a history event and a workflow task,
 * worker CPU taken from the calls, and a shard that finishes while such a task runs waits for it before the next
 * shard is scheduled. Every ten seconds keeps the progress query moving at a fifth of the cost of the default two
 * (the parent hears of each finished shard at once either way).
 */
const SHARD_PROGRESS_SIGNAL_MS = 10_000;

/** Split the train and valid examples into shards; nothing is called yet. */
export async function planTeacher(deps: StageDeps, input: TeacherStageInput): Promise<TeacherPlan> {
  return mapErrors(() => planShards(deps, input));
}

/**
 * Run one shard's direct calls, heartbeating on a timer and reporting progress to the workflow. Every finished call
 * is journalled, so a retry resumes where this attempt stopped; cancellation aborts the calls in flight.
 */
export async function teacherShard(
  deps: StageDeps & { client?: Client },
  input: TeacherShardInput
): Promise<TeacherShardResult> {
  return mapErrors(async () => {
    const ctx = Context.current();
    // Every call in flight links its own signal to this one for the duration of the call: that many listeners are
    // expected, not a leak.
    setMaxListeners(input.concurrency + 16, ctx.cancellationSignal);
    // The timer heartbeats the count; a report heartbeats too (serializing its details), so only as often as it
    // signals, and at the last count.
    const report = progressReporter(deps.client, 'promptTeacher', SHARD_PROGRESS_SIGNAL_MS, SHARD_PROGRESS_SIGNAL_MS);
    const beat = timedHeartbeat(ctx, input.index);
    const metrics = teacherMetrics(priceOf(input.stage.teacher));
    try {
      return await promptShard(deps, input, {
        signal: ctx.cancellationSignal,
        onCalls: metrics.onCalls,
        onRetry: metrics.onRetry,
        onProgress: (step, total) => {
          beat.progress(step, total);
          report(step, total, { shard: input.index });
        },
      });
    } finally {
      beat.stop();
    }
  });
}

/**
 * Heartbeats the latest progress on a timer, from the first progress report on. Calls can all be waiting at once (a
 * long rate-limit pause, hung requests): the heartbeat must not wait on them. At most two seconds apart, the most the
 * worker lets the SDK hold a heartbeat back (workers/pipeline-worker.ts), so a cancellation, which reaches the
 * activity in a heartbeat's answer, arrives within a few seconds.
 */
function timedHeartbeat(ctx: Context, shard: number) {
  const every = Math.max(200, Math.min(2000, (ctx.info.heartbeatTimeoutMs ?? 15_000) / 3));
  let progress = { step: 0, total: 0 };
  let timer: NodeJS.Timeout | undefined;
  return {
    progress(step: number, total: number) {
      progress = { step, total };
      timer ??= setInterval(() => ctx.heartbeat({ ...progress, shard }), every);
    },
    stop() {
      clearInterval(timer);
    },
  };
}

/** Batch mode, step 1: upload one shard's calls as a provider batch (idempotent), after journalling cache hits. */
export async function submitTeacherBatch(deps: StageDeps, input: TeacherBatchInput): Promise<TeacherBatchSubmitted> {
  return mapErrors(() => withKeepalive(() => submitShardBatch(deps, input)));
}

/** Batch mode, step 2 (repeated on durable timers): is the batch done? */
export async function pollTeacherBatch(deps: StageDeps, input: TeacherBatchPollInput): Promise<BatchStatus> {
  return mapErrors(() => withKeepalive(() => pollShardBatch(deps, input)));
}

/** Batch mode, step 3: journal a finished batch's answers exactly as direct calls are journalled. */
export async function collectTeacherBatch(
  deps: StageDeps,
  input: TeacherBatchCollectInput
): Promise<TeacherShardResult> {
  return mapErrors(async () => {
    const ctx = Context.current();
    const metrics = teacherMetrics(priceOf(input.stage.teacher));
    // Answers heartbeat as they are journalled; the keepalive covers reading the provider's output file first.
    return withKeepalive(() =>
      collectShardBatch(deps, input, {
        onCollected: (collected) => ctx.heartbeat({ collected }),
        onCalls: metrics.onCalls,
      })
    );
  });
}

/** Assemble every shard's responses, in plan order, into the one artifact the validate stage reads. */
export async function finishTeacher(deps: StageDeps, input: FinishTeacherInput): Promise<FinishTeacherResult> {
  return mapErrors(async () => {
    const ctx = Context.current();
    return assembleResponses(deps.store, input, { onShard: (shard) => ctx.heartbeat({ shard }) });
  });
}
