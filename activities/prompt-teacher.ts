/**
 * The `promptTeacher` stage's activities, run by the `teacherStage` workflow: plan the shards, run one shard
 * (direct calls, or a batch job in three steps), and assemble the responses. Each is a thin adapter around one step
 * of `lib/teacher/stage` (where the store layout, shard identity and budget accounting live): error mapping,
 * heartbeats and cancellation.
 */
import { setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

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
import { teacherShardGrantsQuery, teacherShardTailSignal } from '../contract';
import { ShardSlots, shardOf } from '../lib/teacher/stage/handoff';
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
    const stage = ctx.info.workflowExecution;
    // Handoffs are between shards of one run of the stage: a re-run under the same workflow id starts afresh.
    const scope = stage ? `${stage.workflowId}/${stage.runId}` : input.stageId;
    const over = new AbortController();
    try {
      const result = await promptShard(deps, input, {
        signal: ctx.cancellationSignal,
        onCalls: metrics.onCalls,
        onRetry: metrics.onRetry,
        onProgress: (step, total) => {
          beat.progress(step, total);
          report(step, total, { shard: input.index });
        },
        tailScope: scope,
        ...(input.handoff && deps.client && stage ? { onTail: tellTail(deps.client, stage, input.index) } : {}),
        onFreed: (slots) => shardSlots.free(shardOf(scope, input.index), slots),
        ...(input.after ? { lent: lentSlots(deps.client, input, scope, over.signal) } : {}),
      });
      if (result.complete) shardSlots.end(shardOf(scope, input.index));
      return result;
    } finally {
      beat.stop();
      over.abort();
    }
  });
}

/** The slots shards of this worker hand on to shards started in their tails (see `after`). */
const shardSlots = new ShardSlots();

/**
 * How often a shard started in another's tail asks the stage whether that shard has ended, when it did not end in
 * this worker: a query, answered from the workflow's state, with no event in its history.
 */
const LENT_POLL_MS = 1000;

type Execution = { workflowId: string; runId: string };

/** Tells the stage that shard `index` keeps `slots` of its share from now on (it may start the next shard). */
function tellTail(client: Client, stage: Execution, index: number): (slots: number) => void {
  return (slots) => {
    // Unheard, it costs the handoff only: the stage starts the next shard when this one ends, as it always did.
    client.workflow
      .getHandle(stage.workflowId, stage.runId)
      .signal(teacherShardTailSignal, { shard: index, slots })
      .catch(() => undefined);
  };
}

/**
 * The slots a shard started in another's tail was lent: each as the other frees it, when the other runs in this
 * worker; all of them once it has ended, which is known at once in this worker, else when the stage no longer counts
 * it among its running shards (asked every {@link LENT_POLL_MS}). Nothing comes back after `over`.
 */
function lentSlots(client: Client | undefined, input: TeacherShardInput, scope: string, over: AbortSignal) {
  const { shard, slots } = input.after!;
  const holder = shardOf(scope, shard);
  return {
    slots,
    back: lentBack(client, input, holder, over),
    trickle: (take: (slots: number) => void) => shardSlots.trickle(holder, take, over),
  };
}

function lentBack(client: Client | undefined, input: TeacherShardInput, holder: string, over: AbortSignal) {
  // Whichever way the end is learnt first, the other wait stops then: the poll would otherwise ask the stage every
  // second for the rest of this shard's life.
  const learnt = new AbortController();
  const until = AbortSignal.any([over, learnt.signal]);
  const here = shardSlots.whenEnded(holder, until);
  const stage = Context.current().info.workflowExecution;
  if (!client || !stage) return here;
  const there = (async () => {
    const handle = client.workflow.getHandle(stage.workflowId, stage.runId);
    for (;;) {
      try {
        await sleep(LENT_POLL_MS, undefined, { signal: until });
      } catch {
        return new Promise<void>(() => undefined);
      }
      try {
        const grants = await handle.query(teacherShardGrantsQuery);
        if (!(String(input.after!.shard) in grants)) return;
      } catch {
        // The stage did not answer (its worker is restarting, say): the slots stay lent until it does.
      }
    }
  })();
  return Promise.race([here, there]).finally(() => learnt.abort());
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
