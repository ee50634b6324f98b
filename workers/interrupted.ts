/**
 * Runs the embedded services left behind when the process serving them died (SIGKILL, a closed laptop, an OOM kill):
 * their workflows are still open in the state folder's database, waiting for workers. The next embedded start finds
 * them here, and gives back at once the activity attempts the dead process was running, instead of leaving them to
 * their heartbeat timeouts (two minutes for training by default).
 */
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import { distillationPipeline } from '../workflows';

/** A pipeline run that was open when the services started. */
export interface InterruptedRun {
  workflowId: string;
  runId: string;
  startTime: Date;
}

/** `PendingActivityState` of temporal.api.enums.v1: an attempt a worker holds, and one asked to cancel. */
const STARTED = 2;
const CANCEL_REQUESTED = 3;

/** Open pipeline runs, the most recently started first. */
export async function openPipelineRuns(client: Client): Promise<InterruptedRun[]> {
  const runs: InterruptedRun[] = [];
  const query = `ExecutionStatus="Running" AND WorkflowType="${distillationPipeline.name}"`;
  for await (const info of client.workflow.list({ query })) {
    runs.push({ workflowId: info.workflowId, runId: info.runId, startTime: info.startTime });
  }
  return runs.sort((a, b) => b.startTime.getTime() - a.startTime.getTime());
}

/**
 * Fails (or, where cancellation was asked, cancels) every activity attempt in flight in the state's open workflows,
 * child workflows included. Call it only before this process's workers poll and while holding the database's lock
 * (infra/db-lock.ts): then no live worker holds any attempt, so each belongs to a process that is gone. The failure
 * is retryable and the last heartbeat stays with the activity, so training resumes from its newest checkpoint.
 */
export async function releaseOrphanedAttempts(client: Client, log: (line: string) => void): Promise<number> {
  const open: WorkflowExecutionInfo[] = [];
  for await (const info of client.workflow.list({ query: 'ExecutionStatus="Running"' })) open.push(info);
  let released = 0;
  for (const info of open) {
    const { raw } = await client.workflow.getHandle(info.workflowId, info.runId).describe();
    for (const activity of raw.pendingActivities ?? []) {
      if (activity.state !== STARTED && activity.state !== CANCEL_REQUESTED) continue;
      const id = { workflowId: info.workflowId, runId: info.runId, activityId: activity.activityId ?? '' };
      const holder = activity.lastWorkerIdentity || 'a worker';
      const name = activity.activityType?.name ?? 'an activity';
      try {
        if (activity.state === CANCEL_REQUESTED) await client.activity.reportCancellation(id);
        else await client.activity.fail(id, new Error(`${holder} stopped while running ${name}; retrying`));
        released++;
        log(`stepwise: ${info.workflowId}: ${name} (attempt ${activity.attempt}) ran in ${holder}, now gone: retrying`);
      } catch (err) {
        // It completed, timed out or was retried between the listing and now: nothing left to release.
        log(`stepwise: ${info.workflowId}: ${name} not released: ${(err as Error).message}`);
      }
    }
  }
  return released;
}
