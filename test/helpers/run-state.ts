/**
 * Where a run stands, as text for a failure message: when a test waits in vain for a run, the server's view of it
 * (its pending workflow task and activities, its last events with any workflow task failure) says which side stopped,
 * where "timed out" alone says nothing.
 */
import type { Client } from '@temporalio/client';
import { optionalTsToDate } from '@temporalio/common/lib/time';
import { temporal } from '@temporalio/proto';

/** A protobuf timestamp as an ISO time, or '-' when absent. */
const iso = (ts: Parameters<typeof optionalTsToDate>[0]) => optionalTsToDate(ts)?.toISOString() ?? '-';

const { EventType, PendingActivityState, PendingWorkflowTaskState } = temporal.api.enums.v1;

/** The run's state as the server has it, in a few lines; each call is bounded, so a hung server is itself reported. */
export async function describeRunState(client: Client, workflowId: string, lastEvents = 15): Promise<string> {
  const lines: string[] = [];
  const bounded = <T>(what: string, call: () => Promise<T>) =>
    client.connection.withDeadline(Date.now() + 10_000, call).catch((err: unknown) => {
      lines.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
      return undefined;
    });
  const handle = client.workflow.getHandle(workflowId);
  const described = await bounded('describe', () => handle.describe());
  if (described) {
    const { raw } = described;
    lines.push(`run ${workflowId}: ${described.status.name}, ${described.historyLength} events`);
    const task = raw.pendingWorkflowTask;
    if (task) {
      lines.push(
        `pending workflow task: ${PendingWorkflowTaskState[task.state ?? 0]}, attempt ${task.attempt}, ` +
          `scheduled ${iso(task.scheduledTime)}, started ${iso(task.startedTime)}`
      );
    }
    for (const a of raw.pendingActivities ?? []) {
      lines.push(
        `pending ${a.activityType?.name}: ${PendingActivityState[a.state ?? 0]}, attempt ${a.attempt}, ` +
          `started ${iso(a.lastStartedTime)} by ${a.lastWorkerIdentity || '-'}, last heartbeat ` +
          `${iso(a.lastHeartbeatTime)}, next attempt ${iso(a.nextAttemptScheduleTime)}` +
          (a.lastFailure?.message ? `, last failure: ${a.lastFailure.message}` : '')
      );
    }
  }
  const history = await bounded('history', () => handle.fetchHistory());
  for (const e of history?.events?.slice(-lastEvents) ?? []) {
    const failure =
      e.workflowTaskFailedEventAttributes?.failure?.message ??
      e.activityTaskFailedEventAttributes?.failure?.message ??
      e.activityTaskTimedOutEventAttributes?.failure?.message;
    lines.push(
      `  ${e.eventId} ${iso(e.eventTime)} ${EventType[e.eventType ?? 0]}` +
        (failure ? `: ${failure.slice(0, 500)}` : '')
    );
  }
  return lines.join('\n');
}
