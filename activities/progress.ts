import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { stageProgressSignal, type StageName } from '../contract';
import { InputError, storeCredentialError } from '../lib/errors';
import { SpecError } from '../lib/pipeline/spec';

/**
 * Report progress from inside an activity: every call heartbeats (the SDK throttles what reaches the server, and
 * the heartbeat is also how cancellation reaches us), and at most every `minIntervalMs` the count is signalled to
 * the workflow so `progressQuery` can show it. Signals are best-effort: a lost one costs a stale progress bar only.
 *
 * The first signal goes out `minIntervalMs` after the reporter was made, and the last count (step = total) is not
 * signalled: the activity's completion says as much. Each signal is a workflow task, and one still running when the
 * activity completes holds back the task that schedules the next stage, so a stage shorter than the interval sends
 * none at all (measured with bench:orchestration: two signals per stage cost ~20 ms of its overhead).
 */
export function progressReporter(
  client: Client | undefined,
  stage: StageName,
  minIntervalMs = 2000,
  /** Least time between heartbeats; the last count always beats. */
  beatMs = 100
) {
  const ctx = Context.current();
  let lastSignal = Date.now();
  let lastBeat = 0;
  return (step: number, total: number, details: Record<string, unknown> = {}): void => {
    const now = Date.now();
    // The SDK throttles what reaches the server, but serializes every call: at a thousand calls a second that is
    // real work, so beats closer than `beatMs` apart are skipped here (the last one always goes).
    if (now - lastBeat >= beatMs || step >= total) {
      lastBeat = now;
      ctx.heartbeat({ step, total, ...details });
    }
    if (!client || now - lastSignal < minIntervalMs || step >= total) return;
    lastSignal = now;
    // Activities started outside a workflow (tests, benches) have no execution to report to.
    const execution = ctx.info.workflowExecution;
    if (!execution) return;
    const { workflowId, runId } = execution;
    client.workflow
      .getHandle(workflowId, runId)
      .signal(stageProgressSignal, {
        stage,
        step,
        total,
        ...(typeof details.shard === 'number' ? { shard: details.shard } : {}),
      })
      .catch(() => undefined);
  };
}

/** How often a stage with no progress of its own heartbeats while it works. */
export const KEEPALIVE_MS = 1000;

/**
 * Run an activity body while heartbeating every second. The cheap stages have no progress to report, but a heartbeat
 * is how Temporal learns that their worker died: within the stage's heartbeat timeout, not its start-to-close timeout
 * of minutes. Its beats carry no details: none of these stages resumes from what a heartbeat holds.
 */
export async function withKeepalive<T>(body: () => Promise<T>): Promise<T> {
  const ctx = Context.current();
  const keepalive = setInterval(() => ctx.heartbeat(), KEEPALIVE_MS);
  try {
    return await body();
  } finally {
    clearInterval(keepalive);
  }
}

/**
 * Bad input never succeeds on retry: surface it as a non-retryable failure carrying the user-facing message, and for
 * a spec every bad field (its issues, as the failure's details).
 */
export function nonRetryableIfInputError(err: unknown): unknown {
  if (err instanceof SpecError) return ApplicationFailure.nonRetryable(err.message, 'InputError', err.issues);
  if (err instanceof InputError || (err instanceof Error && err.name === 'InputError')) {
    return ApplicationFailure.nonRetryable(err.message, 'InputError');
  }
  // A refused S3 key fails every attempt alike: say which variable to fix, once, instead of the SDK's signing dump.
  const credentials = storeCredentialError(err);
  if (credentials) return ApplicationFailure.nonRetryable(credentials.message, 'InputError');
  return err;
}

/**
 * Run an activity body, mapping bad-input errors to non-retryable failures. Once the activity has been cancelled,
 * whatever the body threw on its way out (an aborted child, an aborted HTTP call) is reported as the cancellation
 * itself, so Temporal records a cancelled activity rather than a failed one.
 */
export async function mapErrors<T>(body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    const signal = Context.current().cancellationSignal;
    if (signal.aborted && signal.reason instanceof CancelledFailure) throw signal.reason;
    throw nonRetryableIfInputError(err);
  }
}
