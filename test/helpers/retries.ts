/**
 * Which activities of a run, and of its child workflows, ran more than one attempt, and why the attempt before failed,
 * as the server recorded it: a test whose counts are off by a retry names the retry's cause in its log.
 */
import type { Client } from '@temporalio/client';

export interface RetriedAttempt {
  workflowId: string;
  activity: string;
  attempt: number;
  /** The failure of the attempt before, as recorded in this attempt's started event. */
  lastFailure: string;
}

/** The retried activity attempts of `workflowId`'s latest run and of every child workflow it started. */
export async function retriedAttempts(client: Client, workflowId: string): Promise<RetriedAttempt[]> {
  const found: RetriedAttempt[] = [];
  const events = (await client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  const typeOf = new Map<string, string>();
  const children: string[] = [];
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) typeOf.set(String(e.eventId), scheduled.activityType?.name ?? '');
    const started = e.activityTaskStartedEventAttributes;
    if (started && (started.attempt ?? 1) > 1) {
      const failure = started.lastFailure;
      found.push({
        workflowId,
        activity: typeOf.get(String(started.scheduledEventId)) ?? '',
        attempt: started.attempt ?? 0,
        lastFailure: failure
          ? `${failure.timeoutFailureInfo ? `timeout (${String(failure.timeoutFailureInfo.timeoutType)}): ` : ''}` +
            `${failure.message ?? ''}${failure.cause?.message ? ` <- ${failure.cause.message}` : ''}`
          : 'unknown',
      });
    }
    const child = e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId;
    if (child) children.push(child);
  }
  for (const child of children) found.push(...(await retriedAttempts(client, child)));
  return found;
}
