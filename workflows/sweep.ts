/**
 * A sweep: the paper's comparison as one durable parent workflow. Each (method, training fraction, seed) cell is a
 * child `distillationPipeline` run under the id `stepwise run` would give its spec, at most `parallel` at once; a cell
 * a registered run already answered is reused, not trained again. Stopping every process and starting the services
 * and workers again on the same state continues the sweep where it was: finished children stay finished, running
 * ones resume their stage (training from its last checkpoint). Orchestration only: the plan, the teacher's score and
 * the table and plot are activities.
 */
import {
  ApplicationFailure,
  ChildWorkflowFailure,
  isCancellation,
  log,
  ParentClosePolicy,
  proxyActivities,
  setHandler,
  startChild,
  workflowInfo,
  WorkflowIdReusePolicy,
} from '@temporalio/workflow';
import {
  CPU_TASK_QUEUE,
  sweepProgressQuery,
  type Activities,
  type PipelineResult,
  type SweepArtifacts,
  type SweepCell,
  type SweepCellPlan,
  type SweepDefinition,
  type SweepPlan,
  type SweepProgress,
} from '../contract';
import { CHEAP_IO_RETRY, distillationPipeline } from './distillation-pipeline';

// The pipeline's cheap-stage retries; planning hashes the data once per cell, hence the longer timeout.
const io = proxyActivities<Activities>({
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30 seconds',
  retry: CHEAP_IO_RETRY,
});

export interface SweepInput extends SweepDefinition {
  /** Child pipelines at once (default 1: on one machine, cells share its cores). */
  parallel?: number;
  /** The command that started the sweep, recorded in its report. */
  command?: string;
}

export interface SweepResult {
  sweepId: string;
  cells: SweepCell[];
  artifacts: SweepArtifacts;
}

/** Run every cell of the grid (or reuse its registered run), then store the table and the plot. */
export async function distillationSweep(input: SweepInput): Promise<SweepResult> {
  const parallel = input.parallel ?? 1;
  if (!Number.isSafeInteger(parallel) || parallel < 1 || parallel > 64) {
    throw ApplicationFailure.nonRetryable(
      `parallel is ${JSON.stringify(parallel)}; expected an integer from 1 to 64`,
      'InputError'
    );
  }
  const progress: SweepProgress = { phase: 'planning', parallel, cells: [] };
  setHandler(sweepProgressQuery, () => progress);
  const { workflowId: sweepId, startTime } = workflowInfo();
  try {
    const plan = await io.planSweep({
      spec: input.spec,
      methods: input.methods,
      fractions: input.fractions,
      seeds: input.seeds,
    });
    progress.cells = plan.cells.map((c) => ({
      method: c.method,
      fraction: c.fraction,
      seed: c.seed,
      name: c.name,
      workflowId: c.workflowId,
      status: c.reused ? 'reused' : 'pending',
      ...(c.reused?.accuracy !== undefined ? { accuracy: c.reused.accuracy } : {}),
    }));
    progress.phase = 'running';
    const [cells, teacher] = await Promise.all([runCells(plan, parallel, progress), teacherScore(plan)]);
    progress.phase = 'summarizing';
    const finishedAt = new Date();
    const artifacts = await io.finishSweep({
      sweepId,
      cells: cells.map((c) => ({
        ...c,
        split: plan.split,
        ...(teacher === undefined ? {} : { teacherAccuracy: teacher }),
      })),
      meta: {
        sweepId,
        task: plan.task,
        specName: plan.specName,
        ...(input.command ? { command: input.command } : {}),
        startedAt: startTime.toISOString(),
        finishedAt: finishedAt.toISOString(),
        wallSeconds: Math.round((finishedAt.getTime() - startTime.getTime()) / 1000),
      },
    });
    progress.phase = 'done';
    return { sweepId, cells, artifacts };
  } catch (err) {
    progress.phase = 'failed';
    throw err;
  }
}

/** The teacher's accuracy on the scored split, where asking it costs nothing (replay, scripted); else undefined. */
async function teacherScore(plan: SweepPlan): Promise<number | undefined> {
  const { teacher, data } = plan.cells[0].spec;
  try {
    const result = await io.teacherOnEvalSet({
      teacher,
      task: plan.task,
      ...(data.kind === 'reference' ? { dataDir: data.dir } : {}),
      evalSet: plan.evalSet,
    });
    return result.measured ? result.accuracy : undefined;
  } catch (err) {
    // The teacher's score is context for the table, not its subject: hours of cells are not failed for it.
    if (isCancellation(err)) throw err;
    log.warn('the teacher could not be scored on the evaluated split; the table goes without it', {
      error: String(err),
    });
    return undefined;
  }
}

/** Every cell not reused, as child pipelines, `parallel` at a time; a failed cell is recorded, not fatal. */
async function runCells(plan: SweepPlan, parallel: number, progress: SweepProgress): Promise<SweepCell[]> {
  const outcomes = new Map<string, SweepCell>();
  for (const c of plan.cells) if (c.reused) outcomes.set(c.workflowId, c.reused);
  const queue = plan.cells.filter((c) => !c.reused);
  const lane = async () => {
    for (let cell = queue.shift(); cell; cell = queue.shift()) {
      const entry = progress.cells.find((p) => p.workflowId === cell!.workflowId)!;
      entry.status = 'running';
      const outcome = await runCell(cell);
      entry.status = outcome.status;
      if (outcome.accuracy !== undefined) entry.accuracy = outcome.accuracy;
      if (outcome.error) entry.error = outcome.error;
      outcomes.set(cell.workflowId, outcome);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, lane));
  return plan.cells.map((c) => outcomes.get(c.workflowId)!);
}

/** One cell as a child pipeline; its failure becomes the cell's outcome, cancellation goes up. */
async function runCell(cell: SweepCellPlan): Promise<SweepCell> {
  const base = {
    method: cell.method,
    fraction: cell.fraction,
    seed: cell.seed,
    name: cell.name,
    workflowId: cell.workflowId,
  };
  try {
    const child = await startChild(distillationPipeline, {
      workflowId: cell.workflowId,
      args: [cell.spec],
      taskQueue: CPU_TASK_QUEUE,
      // A cancelled sweep asks its cells to stop (each kills its training child); it does not orphan them.
      parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      // A failed run of the same spec is tried again; a completed one was found in the registry already.
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    });
    const r: PipelineResult = await child.result();
    return {
      ...base,
      status: 'done',
      version: r.version,
      accuracy: r.accuracy,
      correct: r.correct,
      total: r.total,
      majorityBaseline: r.majorityBaseline,
      ...(r.baselines?.bestOperation ? { bestOperation: r.baselines.bestOperation } : {}),
      backend: r.backend,
    };
  } catch (err) {
    if (isCancellation(err)) throw err;
    const cause = err instanceof ChildWorkflowFailure && err.cause ? err.cause.message : undefined;
    return { ...base, status: 'failed', error: cause ?? (err instanceof Error ? err.message : String(err)) };
  }
}
