/**
 * The teacher stage as a workflow of its own (a child of the pipeline): plan shards, run them as separate activities
 * on whichever workers serve the queue (direct calls, or batch jobs polled on durable timers), then assemble the
 * responses. It continues as new every `shardsPerRun` shards or when Temporal suggests it, so its history stays
 * bounded however many examples there are; everything it carries across is counters and shard indices.
 *
 * Under Worker Versioning a run is pinned to the build it started on, but each continue-as-new starts the next run on
 * the deployment's current version (upgrade on continue-as-new), and a run hands over early once the server says the
 * current version has changed: a long stage moves to new code within one shard's time, while the pipeline that
 * started it stays on its own build. That makes {@link TeacherStageState} and the stage's input a contract between
 * builds: a new build must accept the state an older one carries across (fields may be added, as optional).
 */
import {
  ApplicationFailure,
  type ActivityOptions,
  getExternalWorkflowHandle,
  makeContinueAsNewFunc,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import {
  stageProgressSignal,
  teacherProgressQuery,
  teacherShardGrantsQuery,
  teacherShardTailSignal,
  type Activities,
  type PromptTeacherResult,
  type ShardTail,
  type TeacherPlan,
  type TeacherShardInput,
  type TeacherShardResult,
  type TeacherStageInput,
} from '../contract';

/** Failure types no retry can fix. */
const NON_RETRYABLE = ['InputError'];

/** Continue as new past this many history events even if the server has not suggested it yet. */
const HISTORY_EVENTS_LIMIT = 10_000;

/** Rounds of batch submission per shard: a round resubmits only the calls an expired or failed batch left undone. */
const BATCH_ROUNDS = 3;

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
  accounted: Record<
    string,
    { costUsd: number; promptTokens: number; completionTokens: number; refusals?: number; waitMs?: number }
  >;
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
    /** Absent in the state of a run that continued as new from a version before it was counted. */
    rateLimit?: { refusals: number; waitMs: number };
  };
  exhausted: boolean;
  run: number;
}

type StageActivities = ReturnType<typeof proxyActivities<Activities>>;

/** The stage's activities by cost class, each with the timeouts, retries and dispatch that fit it. */
function stageActivities(spec: TeacherStageInput['teacher']): {
  acts: StageActivities;
  shardActs: StageActivities;
  batchActs: StageActivities;
} {
  const options = {
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
  } satisfies ActivityOptions;
  // Planning and assembly run once per stage: handed straight back to this worker with the workflow task that
  // schedules them (eager dispatch, where the cluster allows it), they skip a trip through the task queue.
  const acts = proxyActivities<Activities>(options);
  // Shards fan out over every worker serving the queue: eager dispatch would hand each one to the worker that
  // runs this workflow, piling the whole stage onto one process, to save a poll on work that takes minutes.
  const shardActs = proxyActivities<Activities>({ ...options, allowEagerDispatch: false });
  // Batch polls and submissions are single quick HTTP calls; collection reads one output file. Each heartbeats every
  // second while it works (withKeepalive), so a lost worker is noticed in 30 s, not after the start-to-close timeout.
  const batchActs = proxyActivities<Activities>({
    startToCloseTimeout: '30 minutes',
    heartbeatTimeout: '30 seconds',
    retry: {
      initialInterval: '5s',
      backoffCoefficient: 2,
      maximumInterval: '5 minutes',
      nonRetryableErrorTypes: NON_RETRYABLE,
    },
  });
  return { acts, shardActs, batchActs };
}

/** The state of a stage that has planned its shards and launched none. */
function initialState(plan: TeacherPlan): TeacherStageState {
  return {
    plan,
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
}

/**
 * One workflow run's shard scheduling: keeps `parallelShards` shards in flight (one in the budget endgame), splits
 * the stage's limits and budget among them, folds their results into the carried state, and stops launching when
 * the run should hand over to the next (continue-as-new).
 */
class ShardScheduler {
  /** Running shard → calls done, as last reported. */
  private readonly running = new Map<number, number>();
  /** Running shard → budget it was launched with. */
  private readonly allotted = new Map<number, number>();
  private readonly inFlight = new Map<number, Promise<void>>();
  /** Running shard → the concurrency it holds: its share, less what it has handed on or not yet been handed. */
  private readonly grants = new Map<number, number>();
  /** Running shards that handed their free slots on to a shard started in their tail: they hold no place in flight. */
  private readonly handedOn = new Map<number, { to: number; slots: number }>();
  private launched = 0;
  /** Handing over to the next run: launch nothing more, park running batches. */
  draining = false;
  private readonly calling;
  private readonly parallel: number;
  private readonly share: Pick<TeacherShardInput, 'concurrency' | 'requestsPerMinute' | 'tokensPerMinute'>;
  readonly maxCost: number | undefined;
  readonly batchMode: boolean;
  /** Shards hand their free slots on to the next shard as they run out of calls to start (see {@link onTail}). */
  private readonly handoff: boolean;

  constructor(
    private readonly input: TeacherStageInput,
    private readonly state: TeacherStageState,
    private readonly shardActs: StageActivities,
    private readonly batchActs: StageActivities
  ) {
    const spec = input.teacher;
    this.calling = spec.kind === 'replay' ? undefined : spec;
    const calling = this.calling;
    // Concurrency and rate limits are the stage's totals; the shards in flight split them, wherever they run, so
    // the shares never add up to more than the total: each shard in flight needs one concurrent call at least, so
    // no more shards run at once than the stage's concurrency, and the split rounds down. Runs started before this
    // rule (no marker in their history) keep the old split, so their replay schedules the same shards.
    const totalConcurrency = calling?.concurrency ?? 64;
    const sharesFit = patched('stage-wide-concurrency');
    const parallel = Math.min(spec.parallelShards, state.plan.shards, sharesFit ? totalConcurrency : Infinity);
    this.parallel = Math.max(1, parallel);
    this.share = {
      concurrency: Math.max(1, (sharesFit ? Math.floor : Math.ceil)(totalConcurrency / this.parallel)),
      ...(calling?.requestsPerMinute ? { requestsPerMinute: calling.requestsPerMinute / this.parallel } : {}),
      ...(calling?.tokensPerMinute ? { tokensPerMinute: calling.tokensPerMinute / this.parallel } : {}),
    };
    this.maxCost = calling?.maxCost;
    this.batchMode = calling?.mode === 'batch';
    // A budget splits dollars among the shards in flight, and rate limits split a rate: neither carries over to a
    // shard that overlaps another's tail, so those stages launch as before. Runs started before the handoff (no
    // marker in their history) launch as before too, so their replay issues the same commands.
    const handsOn =
      calling !== undefined &&
      !this.batchMode &&
      this.maxCost === undefined &&
      !calling.requestsPerMinute &&
      !calling.tokensPerMinute;
    this.handoff = handsOn && patched('shard-slot-handoff');
  }

  /** Serves `teacherProgressQuery`, and takes the shards' step counts from their progress signals. */
  serveProgress(): void {
    const { state, running } = this;
    setHandler(teacherProgressQuery, () => ({
      done: state.totals.callsDone + [...running.values()].reduce((a, b) => a + b, 0),
      calls: state.plan.calls,
      shardsDone: state.totals.shardsDone,
      shards: state.plan.shards,
      costUsd: state.totals.costUsd,
      run: state.run,
    }));
    setHandler(stageProgressSignal, (update) => {
      if (update.shard !== undefined && running.has(update.shard)) running.set(update.shard, update.step);
    });
    setHandler(teacherShardGrantsQuery, () => Object.fromEntries([...this.grants].map(([k, v]) => [String(k), v])));
    setHandler(teacherShardTailSignal, (tail) => this.onTail(tail));
  }

  /**
   * A running shard has no call left to start and keeps only `slots` of its share from now on: the next shard starts
   * at once, with the shard's share, of which `slots` stay with the tailing shard; the new one takes each up as the
   * old one frees it, and all once it has ended (`TeacherShardInput.after`). Calls in flight never add up to more than
   * the stage's concurrency, on whichever workers the two run, while the free slots of a shard's last round, and of
   * its slowest calls, no longer wait for them. One handoff per shard; none when no shard is left to start or the run
   * is handing over to the next.
   */
  private onTail({ shard, slots }: ShardTail): void {
    const { state } = this;
    if (!this.handoff || this.draining || state.exhausted || state.endgame || !this.grants.has(shard)) return;
    if (this.handedOn.has(shard) || state.next >= state.plan.shards) return;
    // What the shard says it keeps, not what this workflow last knew it held: a shard started in another's tail takes
    // up the other's slots as soon as its worker sees them free, before the other's completion reaches this workflow
    // (in the same workflow task as this signal, the signal may even be handled first).
    const kept = Math.min(this.share.concurrency, Math.max(0, Math.floor(slots)));
    const index = state.next++;
    this.handedOn.set(shard, { to: index, slots: kept });
    this.grants.set(shard, kept);
    this.launch(index, undefined, { shard, slots: kept });
    this.draining = this.shouldRoll();
  }

  /** Runs shards until every one is done, the budget is spent, or this run should hand over to the next. */
  async runAll(): Promise<void> {
    const { state } = this;
    // Batches parked by the previous run resume first: they are already paid for and running at the provider.
    for (const key of Object.keys(state.batches)) {
      this.launch(Number(key), this.maxCost === undefined ? undefined : 0);
    }
    for (;;) {
      this.draining = this.draining || this.shouldRoll();
      const slots = state.endgame ? 1 : this.parallel;
      while (!this.draining && !state.exhausted && this.inFlight.size - this.handedOn.size < slots) {
        const fromStopped = state.stopped.length > 0;
        const index = fromStopped ? state.stopped[0] : state.next < state.plan.shards ? state.next : undefined;
        if (index === undefined) break;
        // With a budget, the shards in flight split what is left evenly (all of it, one at a time, in the endgame).
        const budgetUsd =
          this.maxCost === undefined ? undefined : Math.max(0, this.freeBudget()) / (slots - this.inFlight.size);
        if (fromStopped) state.stopped.shift();
        else state.next++;
        this.launch(index, budgetUsd);
        this.draining = this.shouldRoll();
      }
      if (this.inFlight.size === 0) break;
      await Promise.race(this.inFlight.values());
    }
  }

  private freeBudget(): number {
    if (this.maxCost === undefined) return Infinity;
    return this.maxCost - this.state.totals.costUsd - [...this.allotted.values()].reduce((a, b) => a + b, 0);
  }

  private shouldRoll(): boolean {
    const info = workflowInfo();
    return (
      this.launched >= this.input.teacher.shardsPerRun ||
      info.continueAsNewSuggested ||
      info.historyLength > HISTORY_EVENTS_LIMIT ||
      // A new current version (recorded in the workflow task's history event, so replay sees it too): hand over to a
      // run on it. Only after launching a shard, so each run makes progress even on a server that would start the
      // next run on this same version again.
      (info.targetWorkerDeploymentVersionChanged && this.launched > 0)
    );
  }

  private launch(index: number, budgetUsd: number | undefined, after?: TeacherShardInput['after']): void {
    const { state } = this;
    const withEverything = state.endgame;
    this.launched++;
    this.running.set(index, 0);
    this.grants.set(index, this.share.concurrency - (after?.slots ?? 0));
    if (budgetUsd !== undefined) this.allotted.set(index, budgetUsd);
    // Only a shard that may have a successor says when its slots start to free up: one with more shards left to start
    // than places free beside it (those start in the free places, not in a tail).
    const places = (state.endgame ? 1 : this.parallel) - (this.inFlight.size - this.handedOn.size) - 1;
    const handoff = this.handoff && state.plan.shards - state.next > places;
    const task = this.driveShard(index, budgetUsd, { handoff, after }).then((result) => {
      this.running.delete(index);
      this.allotted.delete(index);
      this.inFlight.delete(index);
      this.grants.delete(index);
      const heir = this.handedOn.get(index);
      this.handedOn.delete(index);
      const heirHolds = heir && !this.handedOn.has(heir.to) ? this.grants.get(heir.to) : undefined;
      if (heir && heirHolds !== undefined) this.grants.set(heir.to, heirHolds + heir.slots);
      if (!result) return;
      this.record(result);
      if (result.budgetStopped && !result.complete) {
        // In the endgame a shard has every dollar left: if it could not make one call, the budget is spent.
        if (withEverything && result.sent === 0) state.exhausted = true;
        state.endgame = true;
        state.stopped.push(index);
      }
    });
    this.inFlight.set(index, task);
  }

  /** Folds a shard's figures into the totals; a shard reports its journal's whole spend, so only the growth counts. */
  private record(result: TeacherShardResult): void {
    const { state } = this;
    const index = result.index;
    const before = state.accounted[index] ?? { costUsd: 0, promptTokens: 0, completionTokens: 0 };
    state.totals.costUsd += result.costUsd - before.costUsd;
    state.totals.usage.promptTokens += result.usage.promptTokens - before.promptTokens;
    state.totals.usage.completionTokens += result.usage.completionTokens - before.completionTokens;
    state.totals.sent += result.sent;
    state.totals.cached += result.cached;
    state.totals.resumed += result.resumed;
    if (result.rateLimit) {
      const waits = (state.totals.rateLimit ??= { refusals: 0, waitMs: 0 });
      waits.refusals += result.rateLimit.refusals - (before.refusals ?? 0);
      waits.waitMs += result.rateLimit.waitMs - (before.waitMs ?? 0);
    }
    if (result.complete) {
      delete state.accounted[index];
      state.totals.callsDone += result.calls;
      state.totals.shardsDone += 1;
      this.tellParent();
    } else {
      state.accounted[index] = { costUsd: result.costUsd, ...result.usage, ...result.rateLimit };
    }
  }

  /**
   * One signal per finished shard: coarse, and bounded by the shard count, so the parent's history stays small. Not
   * for the last shard: the stage's result follows at once and says as much, while the signal would cost a workflow
   * task on each side, the child's holding back the one that completes the stage (bench:orchestration). Runs from
   * before this rule (no marker in their history) still send it, so their replay issues the same commands.
   */
  private tellParent(): void {
    const parent = workflowInfo().parent;
    if (!parent) return;
    if (this.state.totals.shardsDone >= this.state.plan.shards && patched('last-shard-unsignalled')) return;
    const { totals, plan } = this.state;
    void getExternalWorkflowHandle(parent.workflowId, parent.runId)
      .signal(stageProgressSignal, { stage: 'promptTeacher', step: totals.callsDone, total: plan.calls })
      .catch(() => undefined);
  }

  /** Runs one shard to a result, or to a parked batch (when this run is handing over to the next). */
  private async driveShard(
    index: number,
    budgetUsd: number | undefined,
    tail: Pick<TeacherShardInput, 'handoff' | 'after'>
  ): Promise<TeacherShardResult | undefined> {
    const { state } = this;
    const shardInput: TeacherShardInput = {
      stage: this.input,
      stageId: workflowInfo().workflowId,
      plan: state.plan.plan,
      index,
      ...this.share,
      ...(budgetUsd === undefined ? {} : { budgetUsd }),
      ...(state.accounted[index] === undefined ? {} : { accountedUsd: state.accounted[index].costUsd }),
      ...(tail.handoff ? { handoff: true } : {}),
      ...(tail.after ? { after: tail.after } : {}),
    };
    if (!this.batchMode) return this.shardActs.teacherShard(shardInput);
    return this.driveBatch(index, shardInput);
  }

  /** Batch mode: submit, poll on durable timers, collect; up to {@link BATCH_ROUNDS} rounds for what is left undone. */
  private async driveBatch(index: number, shardInput: TeacherShardInput): Promise<TeacherShardResult | undefined> {
    const { state, batchActs } = this;
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
        if (this.draining) {
          // Handing over to the next run: the batch keeps running at the provider, and the next run polls it.
          state.batches[index] = { batchId, round };
          return undefined;
        }
        await sleep(this.calling!.batchPollSeconds * 1000);
        const status = await batchActs.pollTeacherBatch({ stage: this.input, batchId });
        if (status.terminal) break;
      }
      const lastRound = round + 1 >= BATCH_ROUNDS;
      const result = await batchActs.collectTeacherBatch({ ...shardInput, round, batchId, lastRound });
      if (result.complete || result.budgetStopped || lastRound) return result;
      round++;
      batchId = undefined;
    }
  }
}

/**
 * Continue as new on the deployment's current version (a pinned run's default would keep the old build). On an
 * unversioned worker (the embedded mode) the option changes nothing.
 */
function continueOnCurrentVersion(input: TeacherStageInput, state: TeacherStageState): Promise<never> {
  return makeContinueAsNewFunc<typeof teacherStage>({ initialVersioningBehavior: 'AUTO_UPGRADE' })(input, state);
}

/**
 * The teacher stage: plan the shards (first run only), run them, then continue as new while shards remain, or
 * assemble the responses once every shard is done (or the budget is spent).
 */
export async function teacherStage(
  input: TeacherStageInput,
  carried?: TeacherStageState
): Promise<PromptTeacherResult> {
  const { acts, shardActs, batchActs } = stageActivities(input.teacher);
  const state = carried ?? initialState(await acts.planTeacher(input));
  const scheduler = new ShardScheduler(input, state, shardActs, batchActs);
  scheduler.serveProgress();
  await scheduler.runAll();

  const unfinished =
    state.next < state.plan.shards || state.stopped.length > 0 || Object.keys(state.batches).length > 0;
  if (scheduler.draining && unfinished && !state.exhausted) {
    state.run += 1;
    return continueOnCurrentVersion(input, state);
  }

  const figures = await acts.finishTeacher({ plan: state.plan.plan });
  const calling = input.teacher.kind === 'replay' ? undefined : input.teacher;
  if (state.exhausted && calling?.onBudgetExhausted === 'fail') {
    throw ApplicationFailure.nonRetryable(
      `the teacher budget of $${scheduler.maxCost} is spent ($${state.totals.costUsd.toFixed(4)}): ` +
        `${figures.total - figures.notSent} of ${figures.total} examples answered, all kept in the store; ` +
        're-run with a larger teacher.maxCost to send only the rest',
      'BudgetExhausted'
    );
  }
  const { plan, totals } = state;
  return {
    responses: figures.responses,
    total: figures.total,
    cached: figures.cached,
    failed: figures.failed,
    notSent: figures.notSent,
    usage: totals.usage,
    ...(calling?.price ? { costUsd: totals.costUsd } : {}),
    ...(scheduler.maxCost !== undefined
      ? { budget: { maxCostUsd: scheduler.maxCost, exhausted: state.exhausted } }
      : {}),
    calls: { planned: plan.calls, sent: totals.sent, resumed: totals.resumed, cached: totals.cached },
    ...(totals.rateLimit ? { rateLimit: totals.rateLimit } : {}),
    shards: plan.shards,
    mode: scheduler.batchMode ? 'batch' : 'direct',
    samples: plan.calls / Math.max(1, plan.examples),
    teacher: plan.teacher,
  };
}
