/**
 * Names shared by the workflow, its workers and its clients: task queues, stages, the progress query and signal.
 * Pure declarations, safe to import from the workflow bundle and from Node code alike.
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';

/** Cheap I/O stages and teacher calls. */
export const CPU_TASK_QUEUE = 'stepwise';
/** Student training and evaluation: run workers with a GPU (or the fastest CPUs) on this queue. */
export const GPU_TASK_QUEUE = 'stepwise-gpu';

/** The kinds of worker a deployment runs (`stepwise worker --queue <kind>`), one per task queue. */
export const QUEUE_KINDS = ['cpu', 'gpu'] as const;
export type QueueKind = (typeof QUEUE_KINDS)[number];

/** The task queue a kind of worker polls. */
export const taskQueueOf = (kind: QueueKind): string => (kind === 'cpu' ? CPU_TASK_QUEUE : GPU_TASK_QUEUE);

export const STAGES = [
  'sample',
  'promptTeacher',
  'validateRationales',
  'trainStudent',
  'evaluate',
  'registerModel',
  'gate',
] as const;
export type StageName = (typeof STAGES)[number];

export type StageStatus = 'pending' | 'running' | 'done' | 'skipped' | 'failed';

/** What `progressQuery` returns: where the run is, and how far into the current stage. */
export interface PipelineProgress {
  stage: StageName | 'starting' | 'done' | 'failed' | 'cancelled';
  /** 1-based index of the current stage among the stages this run executes. */
  stageIndex: number;
  stageCount: number;
  /** Work units done in the current stage (examples, training steps), as last reported by its activity. */
  step: number;
  total: number;
  stages: { name: StageName; status: StageStatus; summary?: string }[];
  /** Set while the run waits on a person: the version awaiting approval, and until when before the timeout policy. */
  awaitingApproval?: { name: string; version: number; alias: string; deadline: string };
}

export interface StageProgressUpdate {
  stage: StageName;
  step: number;
  total: number;
  /** Set by a teacher shard reporting to the teacher-stage workflow: its index, with `step` counted within it. */
  shard?: number;
}

export const progressQuery = defineQuery<PipelineProgress>('progress');
/** Sent by long-running activities (throttled) so `progressQuery` can report step-level progress. */
export const stageProgressSignal = defineSignal<[StageProgressUpdate]>('stageProgress');

/** What the teacher stage's `teacherProgressQuery` returns. */
export interface TeacherStageProgress {
  /** Calls finished (examples × samples), running shards included as last reported. */
  done: number;
  calls: number;
  shardsDone: number;
  shards: number;
  costUsd: number;
  /** How many times the stage has continued as new. */
  run: number;
}

/** `temporal workflow query --workflow-id '<run id>/teacher' --type teacherProgress` */
export const teacherProgressQuery = defineQuery<TeacherStageProgress>('teacherProgress');

/**
 * Sent by a teacher shard when its slots start to free up: it has no call left to start, and from now on has at most
 * `slots` calls in flight (its calls still going, plus any slots it was lent and has not got back). The stage may then
 * launch the next shard at once with the rest of this one's share (see `workflows/teacher-stage.ts`).
 */
export interface ShardTail {
  shard: number;
  slots: number;
}
export const teacherShardTailSignal = defineSignal<[ShardTail]>('teacherShardTail');

/**
 * The concurrency each running shard of the teacher stage holds, by shard index: a shard that is not listed has
 * finished, as the workflow knows it. A shard lent another's slots polls it to learn that the other has ended.
 */
export const teacherShardGrantsQuery = defineQuery<Record<string, number>>('teacherShardGrants');

/** A person's decision on a version awaiting approval (`stepwise models approve|reject NAME@VERSION`). */
export interface ApprovalDecision {
  /** The version the decision is about: refused unless it is the one the run awaits approval for. */
  version: number;
  /** Who decides: recorded in the audit log; must be non-empty. */
  identity: string;
  comment?: string;
}

/** What an approval update returns once the decision is recorded: the run's promotion outcome. */
export interface ApprovalOutcome {
  name: string;
  version: number;
  outcome: 'promoted' | 'rejected';
  alias: string;
  /** The version the alias named before a promotion (null: none). */
  previous?: number | null;
}

/**
 * Temporal Updates a run waiting for approval accepts. The validator refuses (writing nothing to the history) a
 * decision about another version, an empty identity, or one arriving when the run is not waiting.
 */
export const approveUpdate = defineUpdate<ApprovalOutcome, [ApprovalDecision]>('approve');
export const rejectUpdate = defineUpdate<ApprovalOutcome, [ApprovalDecision]>('reject');

/** A sweep's state, for `stepwise sweep status` and the CLI's follower: every cell and where it stands. */
export interface SweepProgress {
  phase: 'planning' | 'running' | 'summarizing' | 'done' | 'failed';
  /** Child pipelines run at once, at most. */
  parallel: number;
  cells: SweepCellProgress[];
}

export interface SweepCellProgress {
  method: string;
  fraction: number;
  seed: number;
  name: string;
  workflowId: string;
  status: 'pending' | 'running' | 'done' | 'reused' | 'failed';
  accuracy?: number;
  error?: string;
}

export const sweepProgressQuery = defineQuery<SweepProgress>('sweepProgress');
