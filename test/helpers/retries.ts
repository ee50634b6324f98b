/**
 * Activities in a workflow history, named by their type: one walk that the tests reading a run's attempts and results
 * share. `retriedAttempts` lists which activities of a run, and of its child workflows, ran more than one attempt, and
 * why the attempt before failed, as the server recorded it: a test whose counts are off by a retry names the retry's
 * cause in its log.
 */
import type { Client } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;
type Attributes<K extends keyof HistoryEvent> = NonNullable<HistoryEvent[K]>;

/** What {@link walkActivities} calls for each activity event, with the activity type the event belongs to. */
export interface ActivityVisitor {
  scheduled?(activity: string, attrs: Attributes<'activityTaskScheduledEventAttributes'>): void;
  started?(activity: string, attrs: Attributes<'activityTaskStartedEventAttributes'>): void;
  completed?(activity: string, attrs: Attributes<'activityTaskCompletedEventAttributes'>): void;
}

/**
 * Visits the activity events of a history in order. Started and completed events name only the scheduled event they
 * belong to; the walk carries the type over from it.
 */
export function walkActivities(events: readonly HistoryEvent[], visit: ActivityVisitor): void {
  const typeOf = new Map<string, string>();
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) {
      const activity = scheduled.activityType?.name ?? '';
      typeOf.set(String(e.eventId), activity);
      visit.scheduled?.(activity, scheduled);
    }
    const started = e.activityTaskStartedEventAttributes;
    if (started) visit.started?.(typeOf.get(String(started.scheduledEventId)) ?? '', started);
    const completed = e.activityTaskCompletedEventAttributes;
    if (completed) visit.completed?.(typeOf.get(String(completed.scheduledEventId)) ?? '', completed);
  }
}

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
  walkActivities(events, {
    started(activity, started) {
      if ((started.attempt ?? 1) <= 1) return;
      const failure = started.lastFailure;
      found.push({
        workflowId,
        activity,
        attempt: started.attempt ?? 0,
        lastFailure: failure
          ? `${failure.timeoutFailureInfo ? `timeout (${String(failure.timeoutFailureInfo.timeoutType)}): ` : ''}` +
            `${failure.message ?? ''}${failure.cause?.message ? ` <- ${failure.cause.message}` : ''}`
          : 'unknown',
      });
    },
  });
  const children = events.flatMap((e) => e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId ?? []);
  for (const child of children) found.push(...(await retriedAttempts(client, child)));
  return found;
}
