/**
 * Which worker ran each stage, as Temporal recorded it: every completed activity's started event names the worker
 * identity that ran its last attempt, and every workflow task's the worker that ran the workflow code. Read from the
 * pipeline's history and its teacher stage's (every run of it: the stage continues as new), at registration, so a
 * version's lineage says where each part of it was computed, after kills, drains and retries.
 */
import type { Client } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import type { RunWorkers, StageWorker } from '../lib/registry/registry';

export type Event = temporal.api.history.v1.IHistoryEvent;

/** The pipeline stage an activity belongs to (the teacher stage's activities are `promptTeacher`'s). */
export const STAGE_OF: Record<string, string> = {
  checkRefresh: 'sample',
  planTeacher: 'promptTeacher',
  teacherShard: 'promptTeacher',
  submitTeacherBatch: 'promptTeacher',
  pollTeacherBatch: 'promptTeacher',
  collectTeacherBatch: 'promptTeacher',
  finishTeacher: 'promptTeacher',
  resolveInit: 'trainStudent',
  resolveWarmStart: 'trainStudent',
  planGate: 'gate',
  teacherOnEvalSet: 'gate',
  decideGate: 'gate',
  recordApproval: 'gate',
  promoteVersion: 'gate',
};

/** A run's history can hold many pages; one teacher stage continues as new every few thousand events. */
const MAX_TEACHER_RUNS = 1000;

export async function stageWorkers(client: Client, workflowId: string, runId: string): Promise<RunWorkers> {
  const workflow = new Set<string>();
  const activities: StageWorker[] = [];
  for (const history of await runHistories(client, workflowId, runId)) collect(history, workflow, activities);
  return { workflow: [...workflow].sort(), activities };
}

/** The pipeline's history, then its teacher stage's, every run of it (the stage continues as new), in order. */
export async function runHistories(client: Client, workflowId: string, runId: string): Promise<Event[][]> {
  const pipeline = await events(client, workflowId, runId);
  const out = [pipeline];
  for (const e of pipeline) {
    const child = e.childWorkflowExecutionStartedEventAttributes?.workflowExecution;
    if (!child?.workflowId || !child.runId) continue;
    // Follow the child's continue-as-new chain from its first run.
    let next: string | undefined = child.runId;
    for (let i = 0; next && i < MAX_TEACHER_RUNS; i++) {
      const history = await events(client, child.workflowId, next);
      out.push(history);
      next = history.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
    }
  }
  return out;
}

async function events(client: Client, workflowId: string, runId: string): Promise<Event[]> {
  return (await client.workflow.getHandle(workflowId, runId).fetchHistory()).events ?? [];
}

function collect(history: Event[], workflow: Set<string>, activities: StageWorker[]): void {
  const typeOf = new Map<string, string>();
  const started = new Map<string, { worker: string; attempt: number }>();
  for (const e of history) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) typeOf.set(String(e.eventId), scheduled.activityType?.name ?? '?');
    const start = e.activityTaskStartedEventAttributes;
    if (start)
      started.set(String(start.scheduledEventId), { worker: start.identity ?? '?', attempt: start.attempt ?? 1 });
    const done = e.activityTaskCompletedEventAttributes;
    if (done) {
      const id = String(done.scheduledEventId);
      const activity = typeOf.get(id) ?? '?';
      const by = started.get(id);
      activities.push({
        stage: STAGE_OF[activity] ?? activity,
        activity,
        worker: by?.worker ?? '?',
        attempt: by?.attempt ?? 1,
      });
    }
    const task = e.workflowTaskStartedEventAttributes;
    if (task?.identity) workflow.add(task.identity);
  }
}
