/**
 * Scheduled refreshes over Temporal Schedules (`client.schedule`): the options a platform team would choose, checked
 * before anything is created, and a schedule's state as `stepwise schedule describe|ls` print it. Each action starts
 * a `distillationPipeline` run of the stored spec; the run reads the schedule's attributes and refreshes (ends
 * `unchanged` when its champion already has this spec and data, otherwise sends only new examples to the teacher).
 */
import {
  ScheduleOverlapPolicy,
  type Client,
  type ScheduleDescription,
  type ScheduleOptions,
  type ScheduleSpec,
  type ScheduleSummary,
} from '@temporalio/client';
import { msToNumber } from '@temporalio/common/lib/time';
import type { SearchAttributePair } from '@temporalio/common';
import { CPU_TASK_QUEUE, startSearchAttributes } from '../../contract';
import { InputError } from '../../lib/errors';
import { specHash } from '../../lib/pipeline/run-identity';
import type { PipelineSpec } from '../../lib/pipeline/spec';
import { distillationPipeline } from '../../workflows';

/** `--overlap` choices and the policy each names. `skip` is the default: one refresh at a time, none queued. */
export const OVERLAP_POLICIES = {
  skip: ScheduleOverlapPolicy.SKIP,
  'buffer-one': ScheduleOverlapPolicy.BUFFER_ONE,
  'cancel-other': ScheduleOverlapPolicy.CANCEL_OTHER,
  'allow-all': ScheduleOverlapPolicy.ALLOW_ALL,
} as const;
export type OverlapChoice = keyof typeof OVERLAP_POLICIES;

/**
 * One hour, not the server's one year: after an outage, a nightly refresh should run once on return, not once per
 * missed night (each would retrain on the same data).
 */
export const DEFAULT_CATCHUP_WINDOW = '1 hour';

/** A schedule id: also the prefix of its runs' workflow ids, so kept to the characters a model name may use. */
const SCHEDULE_ID_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function checkScheduleId(id: string): string {
  if (!SCHEDULE_ID_PATTERN.test(id)) {
    throw new InputError(
      `schedule name ${JSON.stringify(id)}: expected 1-63 characters of a-z, 0-9, ".", "_" or "-", starting alphanumeric`,
      'name'
    );
  }
  return id;
}

/** When a schedule fires: exactly one of `cron` and `every`, with optional jitter and time zone. */
export interface TimingFlags {
  cron?: string;
  every?: string;
  jitter?: string;
  timezone?: string;
}

export interface PolicyFlags {
  overlap?: string;
  catchupWindow?: string;
  pauseOnFailure?: boolean;
}

/** A duration flag in milliseconds. @throws InputError naming the flag. */
export function duration(value: string, flag: string, min = 1): number {
  let ms: number;
  try {
    ms = msToNumber(value as Parameters<typeof msToNumber>[0]);
  } catch {
    ms = NaN;
  }
  if (!Number.isFinite(ms) || ms < min) {
    throw new InputError(
      `${flag}: ${JSON.stringify(value)} is not a duration of at least ${min} ms; expected e.g. "90s", "15m", "1h", "1d"`,
      flag
    );
  }
  return ms;
}

/**
 * A cron expression's shape, checked here so the common mistakes name the flag before any call; the server checks
 * the rest (ranges, names) and its refusal is reported against the same flag.
 */
function checkCron(expr: string): string {
  const trimmed = expr.trim();
  const fields = trimmed.split(/\s+/);
  const named = /^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$/.test(trimmed);
  if (!named && (fields.length < 5 || fields.length > 7 || !fields.every((f) => /^[0-9A-Za-z*?/,#LW-]+$/.test(f)))) {
    throw new InputError(
      `--cron: ${JSON.stringify(expr)} is not a cron expression; expected 5 fields (minute hour day-of-month month ` +
        `day-of-week), e.g. "0 3 * * *", or one of @daily, @hourly, @weekly, @monthly`,
      '--cron'
    );
  }
  return trimmed;
}

function checkTimezone(tz: string): string {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
  } catch {
    throw new InputError(
      `--timezone: ${JSON.stringify(tz)} is not an IANA time zone (e.g. "Europe/Paris", "UTC")`,
      '--timezone'
    );
  }
  return tz;
}

/** The schedule's calendar from the flags. @throws InputError naming the flag. */
export function scheduleSpecOf(flags: TimingFlags): ScheduleSpec {
  if ((flags.cron === undefined) === (flags.every === undefined)) {
    throw new InputError('expected exactly one of --cron EXPR and --every DURATION', flags.cron ? '--every' : '--cron');
  }
  const spec: ScheduleSpec = flags.cron
    ? { cronExpressions: [checkCron(flags.cron)] }
    : { intervals: [{ every: duration(flags.every!, '--every', 1000) }] };
  if (flags.jitter !== undefined) spec.jitter = duration(flags.jitter, '--jitter', 0);
  if (flags.timezone !== undefined) spec.timezone = checkTimezone(flags.timezone);
  return spec;
}

/** The schedule's policies from the flags, with the defaults above. @throws InputError naming the flag. */
export function policiesOf(flags: PolicyFlags): NonNullable<ScheduleOptions['policies']> {
  const overlap = flags.overlap ?? 'skip';
  if (!(overlap in OVERLAP_POLICIES)) {
    throw new InputError(
      `--overlap: ${JSON.stringify(overlap)}; expected one of ${Object.keys(OVERLAP_POLICIES).join(', ')}`,
      '--overlap'
    );
  }
  return {
    overlap: OVERLAP_POLICIES[overlap as OverlapChoice],
    catchupWindow: duration(flags.catchupWindow ?? DEFAULT_CATCHUP_WINDOW, '--catchup-window', 10_000),
    pauseOnFailure: Boolean(flags.pauseOnFailure),
  };
}

/** What the schedule's memo records: the spec's content hash (the one lineage records) and the model. */
export interface ScheduleMemo {
  specHash: string;
  model: string;
}

/** The action every firing takes: a pipeline run of the spec, with the run's search attributes where they exist. */
export function pipelineAction(scheduleId: string, spec: PipelineSpec, withAttributes: boolean) {
  return {
    type: 'startWorkflow' as const,
    workflowType: distillationPipeline,
    args: [spec] as [PipelineSpec],
    taskQueue: CPU_TASK_QUEUE,
    // The server appends each action's time, so every firing is a run of its own.
    workflowId: `stepwise-schedule-${scheduleId}`,
    memo: { stepwise: memoOf(spec) },
    ...(withAttributes ? { typedSearchAttributes: startSearchAttributes(spec) as SearchAttributePair[] } : {}),
  };
}

export function memoOf(spec: PipelineSpec): ScheduleMemo {
  return { specHash: specHash(spec), model: spec.name };
}

/** A short, stable digest of a schedule's calendar for listings (`every 1h`, `cron 0 3 * * *`). */
export function calendarText(
  spec:
    | {
        cronExpressions?: string[];
        intervals?: { every: unknown }[];
        calendars?: unknown[];
        jitter?: unknown;
        timezone?: string;
      }
    | undefined
): string {
  if (!spec) return '?';
  const parts: string[] = [];
  for (const c of spec.cronExpressions ?? []) parts.push(`cron ${c}`);
  for (const i of spec.intervals ?? []) parts.push(`every ${humanMs(Number(i.every))}`);
  if (!parts.length && spec.calendars?.length) parts.push(`${spec.calendars.length} calendar rule(s)`);
  if (spec.jitter) parts.push(`jitter ${humanMs(Number(spec.jitter))}`);
  if (spec.timezone) parts.push(`tz ${spec.timezone}`);
  return parts.join(', ') || '?';
}

export function humanMs(ms: number): string {
  if (!Number.isFinite(ms)) return '?';
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** `stepwise schedule describe --json`: what a platform team needs to see about a schedule, as plain JSON. */
export interface ScheduleView {
  scheduleId: string;
  model?: string;
  specHash?: string;
  calendar: string;
  overlap: string;
  catchupWindowMs: number;
  pauseOnFailure: boolean;
  paused: boolean;
  note?: string;
  nextActionTimes: string[];
  recentActions: { scheduledAt: string; takenAt: string; workflowId: string; runId: string }[];
  runningActions: { workflowId: string; runId: string }[];
  actionsTaken: number;
  skippedByOverlap: number;
  missedCatchupWindow: number;
  createdAt: string;
  lastUpdatedAt?: string;
}

export function viewOf(d: ScheduleDescription): ScheduleView {
  const memo = (d.memo?.stepwise ?? {}) as Partial<ScheduleMemo>;
  return {
    scheduleId: d.scheduleId,
    ...(memo.model ? { model: memo.model } : {}),
    ...(memo.specHash ? { specHash: memo.specHash } : {}),
    calendar: calendarText(d.spec),
    overlap: overlapChoice(d.policies.overlap ?? 'SKIP'),
    catchupWindowMs: Number(d.policies.catchupWindow),
    pauseOnFailure: d.policies.pauseOnFailure,
    paused: d.state.paused,
    ...(d.state.note ? { note: d.state.note } : {}),
    nextActionTimes: d.info.nextActionTimes.map((t) => t.toISOString()),
    recentActions: d.info.recentActions.map((a) => ({
      scheduledAt: a.scheduledAt.toISOString(),
      takenAt: a.takenAt.toISOString(),
      workflowId: a.action.workflow.workflowId,
      runId: a.action.workflow.firstExecutionRunId,
    })),
    runningActions: d.info.runningActions.map((a) => ({
      workflowId: a.workflow.workflowId,
      runId: a.workflow.firstExecutionRunId,
    })),
    actionsTaken: d.info.numActionsTaken,
    skippedByOverlap: d.info.numActionsSkippedOverlap,
    missedCatchupWindow: d.info.numActionsMissedCatchupWindow,
    createdAt: d.info.createdAt.toISOString(),
    ...(d.info.lastUpdatedAt ? { lastUpdatedAt: d.info.lastUpdatedAt.toISOString() } : {}),
  };
}

function overlapChoice(policy: string): string {
  const found = Object.entries(OVERLAP_POLICIES).find(([, p]) => p === policy);
  return found ? found[0] : policy.toLowerCase().replace(/_/g, '-');
}

/** The spec an existing schedule's action runs (the first argument of its pipeline run). */
export function scheduledSpec(d: ScheduleDescription): PipelineSpec {
  const action = d.action as { args?: unknown[] };
  return action.args?.[0] as PipelineSpec;
}

/** Every schedule whose action runs the pipeline, newest listing state (eventually consistent, as Temporal says). */
export async function listSchedules(client: Client): Promise<ScheduleSummary[]> {
  const out: ScheduleSummary[] = [];
  for await (const s of client.schedule.list()) {
    if (s.action?.workflowType === 'distillationPipeline') out.push(s);
  }
  return out.sort((a, b) => (a.scheduleId < b.scheduleId ? -1 : 1));
}
