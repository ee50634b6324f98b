/**
 * The run report (lib/report/run-report.ts), written when a run ends, and as far as it got when it fails. A thin
 * adapter: it reads the run's history for the stage timeline (the same events `registerModel` reads workers from),
 * lets the report ask the teacher about the scored split where that costs nothing, and heartbeats while the page is
 * built.
 */
import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { writeRunReport as writeReport, type TimelineEntry } from '../lib/report/run-report';
import { teacherAccuracyOn } from '../lib/teacher/eval-set';
import type { ScriptedTeacherProvider } from '../lib/teacher/stage';
import type { RunReportInput, RunReportResult } from '../contract';
import { mapErrors, withKeepalive } from './progress';
import { runHistories, STAGE_OF, type Event } from './stage-workers';

export interface ReportActivityDeps {
  store: ArtifactStore;
  client?: Client;
  scripted: ScriptedTeacherProvider;
  dataRoots?: readonly string[];
}

/** Build and store the run's report; its record is `runs/<workflowId>/report.json`. */
export async function writeRunReport(deps: ReportActivityDeps, input: RunReportInput): Promise<RunReportResult> {
  return mapErrors(() =>
    withKeepalive(async () =>
      writeReport(deps.store, input, {
        timeline: await timelineOf(deps.client, input),
        teacherOn: (evalSet) =>
          teacherAccuracyOn(
            deps.store,
            deps,
            {
              teacher: input.spec.teacher,
              task: input.task,
              dataDir: input.spec.data.kind === 'reference' ? input.spec.data.dir : undefined,
              evalSet,
            },
            { signal: Context.current().cancellationSignal }
          ),
      })
    )
  );
}

/**
 * Every activity of the run with its times, attempt and worker, from its history. A report is better without the
 * timeline than not written: a history that cannot be read (no client wired, a visibility hiccup) is said on the page.
 */
async function timelineOf(client: Client | undefined, input: RunReportInput): Promise<TimelineEntry[] | string> {
  if (!client) return 'no Temporal client on this worker';
  try {
    const histories = await runHistories(client, input.workflowId, input.runId);
    return histories.flatMap(activitiesIn).sort((a, b) => Date.parse(a.scheduledAt) - Date.parse(b.scheduledAt));
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

const iso = (e: Event) => new Date(optionalTsToMs(e.eventTime) ?? 0).toISOString();

/** One history's activities: scheduled, started (the last attempt's), closed, with how they ended. */
function activitiesIn(history: Event[]): TimelineEntry[] {
  const byScheduled = new Map<string, TimelineEntry>();
  for (const e of history) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) {
      const activity = scheduled.activityType?.name ?? '?';
      byScheduled.set(String(e.eventId), {
        stage: STAGE_OF[activity] ?? activity,
        activity,
        scheduledAt: iso(e),
        attempt: 1,
        status: 'running',
      });
      continue;
    }
    const started = e.activityTaskStartedEventAttributes;
    if (started) {
      const entry = byScheduled.get(String(started.scheduledEventId));
      if (entry) {
        entry.startedAt = iso(e);
        entry.attempt = started.attempt ?? 1;
        if (started.identity) entry.worker = started.identity;
      }
      continue;
    }
    const closed =
      (e.activityTaskCompletedEventAttributes && {
        status: 'completed' as const,
        a: e.activityTaskCompletedEventAttributes,
      }) ||
      (e.activityTaskFailedEventAttributes && { status: 'failed' as const, a: e.activityTaskFailedEventAttributes }) ||
      (e.activityTaskTimedOutEventAttributes && {
        status: 'timed-out' as const,
        a: e.activityTaskTimedOutEventAttributes,
      }) ||
      (e.activityTaskCanceledEventAttributes && {
        status: 'cancelled' as const,
        a: e.activityTaskCanceledEventAttributes,
      });
    if (closed) {
      const entry = byScheduled.get(String(closed.a.scheduledEventId));
      if (!entry) continue;
      entry.closedAt = iso(e);
      entry.status = closed.status;
      const failure = 'failure' in closed.a ? closed.a.failure : undefined;
      if (failure) entry.failure = failure.message || failure.cause?.message || undefined;
    }
  }
  return [...byScheduled.values()];
}
