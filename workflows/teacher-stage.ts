/**
 * The teacher stage as a workflow of its own (a child of the pipeline): plan shards, run them as separate activities
 * on whichever workers serve the queue (direct calls, or batch jobs polled on durable timers), then assemble the
 * responses. It continues as new every `shardsPerRun` shards or when Temporal suggests it, so its history stays
 * bounded however many examples there are; everything it carries across is counters and shard indices.
 */
import {
  ApplicationFailure,
  continueAsNew,
  defineQuery,
  getExternalWorkflowHandle,
  proxyActivities,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type {
  TeacherPlan,
  TeacherShardInput,
  TeacherShardResult,
  TeacherStageInput,
} from '../activities/teacher-stage';
import type { PromptTeacherResult } from '../activities/types';
import { stageProgressSignal } from './definitions';

/** Failure types no retry can fix. */
const NON_RETRYABLE = ['InputError'];

/** Continue as new past this many history events even if the server has not suggested it yet. */
const HISTORY_EVENTS_LIMIT = 10_000;

/** Rounds of batch submission per shard: a round resubmits only the calls an expired or failed batch left undone. */
const BATCH_ROUNDS = 3;

export interface TeacherStageProgress {
  /** Calls finished (examples × samples), running shards included as last reported. */
  done: number;
  calls: number;
  shardsDone: number;
  shards: number;
  costUsd: number;
  run: number;
}

export const teacherProgressQuery = defineQuery<TeacherStageProgress>('teacherProgress');

/** What one workflow run hands the next. */
export interface TeacherStageState {
  plan: TeacherPlan;
  /** Next shard never launched. */
  next: number;
  /** Shards the budget stopped part-way, to resume when budget frees up. */
  stopped: number[];
  /** Batch jobs in flight when the last run continued as new: shard index → batch id and round. */
  batches: Record<string, { batchId: string; round: number }>;
  /**
   * Spend already counted for shards that are not finished: a shard reports its journal's whole spend, which keeps
   * growing across launches, so only the difference is added each time.
   */
  accounted: Record<string, { costUsd: number; promptTokens: number; completionTokens: number }>;
  /** A shard has stopped for budget: from then on one shard runs at a time, with every dollar left. */
  endgame: boolean;
  totals: {
    usage: { promptTokens: number; completionTokens: number };
    costUsd: number;
    sent: number;
    resumed: number;
    cached: number;
    callsDone: number;
    shardsDone: number;
  };
  exhausted: boolean;
  run: number;
}

export async function teacherStage(
  input: TeacherStageInput,
  carried?: TeacherStageState
): Promise<PromptTeacherResult> {
  const spec = input.teacher;
  const calling = spec.kind === 'replay' ? undefined : spec;
  const acts = proxyActivities<Activities>({
    // A shard is at most a few thousand calls; a hung worker shows in the heartbeat timeout long before this.
    startToCloseTimeout: '6 hours',
    heartbeatTimeout: spec.heartbeatTimeoutSeconds * 1000,
    retry: {
      initialInterval: '2s',
      backoffCoefficient: 2,
      maximumInterval: '2 minutes',
      maximumAttempts: 20,
      nonRetryableErrorTypes: NON_RETRYABLE,
    },
  });
  // Batch polls and submissions are single quick HTTP calls; collection reads one output file.
  const batchActs = proxyActivities<Activities>({
    startToCloseTimeout: '30 minutes',
    heartbeatTimeout: '5 minutes',
    retry: {
      initialInterval: '5s',
      backoffCoefficient: 2,
      maximumInterval: '5 minutes',
      nonRetryableErrorTypes: NON_RETRYABLE,
    },
  });

  const state: TeacherStageState = carried ?? {
    plan: await acts.planTeacher(input),
    next: 0,
    stopped: [],
    batches: {},
    accounted: {},
    endgame: false,
    totals: {
      usage: { promptTokens: 0, completionTokens: 0 },
      costUsd: 0,
      sent: 0,
      resumed: 0,
      cached: 0,
      callsDone: 0,
      shardsDone: 0,
    },
    exhausted: false,
    run: 0,
  };
  const { plan } = state;
  const running = new Map<number, number>(); // shard → calls done, as last reported
  setHandler(teacherProgressQuery, () => ({
    done: state.totals.callsDone + [...running.values()].reduce((a, b) => a + b, 0),
    calls: plan.calls,
    shardsDone: state.totals.shardsDone,
    shards: plan.shards,
    costUsd: state.totals.costUsd,
    run: state.run,
  }));
  setHandler(stageProgressSignal, (update) => {
    if (update.shard !== undefined && running.has(update.shard)) running.set(update.shard, update.step);
  });
  const parent = workflowInfo().parent;
  const tellParent = () => {
    if (!parent) return;
    // One signal per finished shard: coarse, and bounded by the shard count, so the parent's history stays small.
    void getExternalWorkflowHandle(parent.workflowId, parent.runId)
      .signal(stageProgressSignal, { stage: 'promptTeacher', step: state.totals.callsDone, total: plan.calls })
      .catch(() => undefined);
  };

  // Concurrency and rate limits are the stage's; the shards in flight split them evenly, wherever they run.
  const parallel = Math.max(1, Math.min(spec.parallelShards, plan.shards));
  const share = {
    concurrency: Math.max(1, Math.ceil((calling?.concurrency ?? 64) / parallel)),
    ...(calling?.requestsPerMinute ? { requestsPerMinute: calling.requestsPerMinute / parallel } : {}),
    ...(calling?.tokensPerMinute ? { tokensPerMinute: calling.tokensPerMinute / parallel } : {}),
  };
  const maxCost = calling?.maxCost;
  const allotted = new Map<number, number>(); // running shard → budget it was launched with
  const freeBudget = () =>
    maxCost === undefined
      ? Infinity
      : maxCost - state.totals.costUsd - [...allotted.values()].reduce((a, b) => a + b, 0);

  const batchMode = calling?.mode === 'batch';
  let launched = 0;
  let draining = false;
  const shouldRoll = () => {
    const info = workflowInfo();
    return launched >= spec.shardsPerRun || info.continueAsNewSuggested || info.historyLength > HISTORY_EVENTS_LIMIT;
  };

  function record(result: TeacherShardResult): void {
    const index = result.index;
    const before = state.accounted[index] ?? { costUsd: 0, promptTokens: 0, completionTokens: 0 };
    state.totals.costUsd += result.costUsd - before.costUsd;
    state.totals.usage.promptTokens += result.usage.promptTokens - before.promptTokens;
    state.totals.usage.completionTokens += result.usage.completionTokens - before.completionTokens;
    state.totals.sent += result.sent;
    state.totals.cached += result.cached;
    state.totals.resumed += result.resumed;
    if (result.complete) {
      delete state.accounted[index];
      state.totals.callsDone += result.calls;
      state.totals.shardsDone += 1;
      tellParent();
    } else {
      state.accounted[index] = { costUsd: result.costUsd, ...result.usage };
    }
  }

  /** Runs one shard to a result, or to a parked batch (when this run is handing over to the next). */
  async function runShard(index: number, budgetUsd: number | undefined): Promise<TeacherShardResult | undefined> {
    const shardInput: TeacherShardInput = {
      stage: input,
      stageId: workflowInfo().workflowId,
      plan: plan.plan,
      index,
      ...share,
      ...(budgetUsd === undefined ? {} : { budgetUsd }),
      ...(state.accounted[index] === undefined ? {} : { accountedUsd: state.accounted[index].costUsd }),
    };
    if (!batchMode) return acts.teacherShard(shardInput);
    const parked = state.batches[index];
    delete state.batches[index];
    let round = parked?.round ?? 0;
    let batchId: string | undefined = parked?.batchId;
    for (;;) {
      if (batchId === undefined) {
        const submitted = await batchActs.submitTeacherBatch({ ...shardInput, round });
        if (submitted.result) return submitted.result;
        batchId = submitted.batchId!;
      }
      for (;;) {
        if (draining) {
          // Handing over to the next run: the batch keeps running at the provider, and the next run polls it.
          state.batches[index] = { batchId, round };
          return undefined;
        }
        await sleep(calling!.batchPollSeconds * 1000);
        const status = await batchActs.pollTeacherBatch({ stage: input, batchId });
        if (status.terminal) break;
      }
      const lastRound = round + 1 >= BATCH_ROUNDS;
      const result = await batchActs.collectTeacherBatch({ ...shardInput, round, batchId, lastRound });
      if (result.complete || result.budgetStopped || lastRound) return result;
      round++;
      batchId = undefined;
    }
  }

  const inFlight = new Map<number, Promise<void>>();
  const launch = (index: number, budgetUsd: number | undefined) => {
    const withEverything = state.endgame;
    launched++;
    running.set(index, 0);
    if (budgetUsd !== undefined) allotted.set(index, budgetUsd);
    const task = runShard(index, budgetUsd).then((result) => {
      running.delete(index);
      allotted.delete(index);
      inFlight.delete(index);
      if (!result) return;
      record(result);
      if (result.budgetStopped && !result.complete) {
        // In the endgame a shard has every dollar left: if it could not make one call, the budget is spent.
        if (withEverything && result.sent === 0) state.exhausted = true;
        state.endgame = true;
        state.stopped.push(index);
      }
    });
    inFlight.set(index, task);
  };

  // Batches parked by the previous run resume first: they are already paid for and running at the provider.
  for (const key of Object.keys(state.batches)) {
    const index = Number(key);
    launch(index, maxCost === undefined ? undefined : 0);
  }
  for (;;) {
    draining = draining || shouldRoll();
    const slots = state.endgame ? 1 : parallel;
    while (!draining && !state.exhausted && inFlight.size < slots) {
      const fromStopped = state.stopped.length > 0;
      const index = fromStopped ? state.stopped[0] : state.next < plan.shards ? state.next : undefined;
      if (index === undefined) break;
      // With a budget, the shards in flight split what is left evenly (all of it, one at a time, in the endgame).
      const budgetUsd = maxCost === undefined ? undefined : Math.max(0, freeBudget()) / (slots - inFlight.size);
      if (fromStopped) state.stopped.shift();
      else state.next++;
      launch(index, budgetUsd);
      draining = shouldRoll();
    }
    if (inFlight.size === 0) break;
    await Promise.race(inFlight.values());
  }

  const unfinished = state.next < plan.shards || state.stopped.length > 0 || Object.keys(state.batches).length > 0;
  if (draining && unfinished && !state.exhausted) {
    state.run += 1;
    return continueAsNew<typeof teacherStage>(input, state);
  }

  const figures = await acts.finishTeacher({ plan: plan.plan });
  if (state.exhausted && calling?.onBudgetExhausted === 'fail') {
    throw ApplicationFailure.nonRetryable(
      `the teacher budget of $${maxCost} is spent ($${state.totals.costUsd.toFixed(4)}): ` +
        `${figures.total - figures.notSent} of ${figures.total} examples answered, all kept in the store; ` +
        're-run with a larger teacher.maxCost to send only the rest',
      'BudgetExhausted'
    );
  }
  return {
    responses: figures.responses,
    total: figures.total,
    cached: figures.cached,
    failed: figures.failed,
    notSent: figures.notSent,
    usage: state.totals.usage,
    ...(calling?.price ? { costUsd: state.totals.costUsd } : {}),
    ...(maxCost !== undefined ? { budget: { maxCostUsd: maxCost, exhausted: state.exhausted } } : {}),
    calls: {
      planned: plan.calls,
      sent: state.totals.sent,
      resumed: state.totals.resumed,
      cached: state.totals.cached,
    },
    shards: plan.shards,
    mode: batchMode ? 'batch' : 'direct',
    samples: plan.calls / Math.max(1, plan.examples),
    teacher: plan.teacher,
  };
}
