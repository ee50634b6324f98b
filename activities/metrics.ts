/**
 * Stepwise's own metrics, recorded through the metric meter of the running activity: the SDK's meter, so they leave
 * the worker on the same Prometheus endpoint as the SDK's own series (`stepwise worker --metrics-port`,
 * workers/telemetry.ts). Without an endpoint the meter is a no-op and recording costs next to nothing.
 *
 * The SDK tags every series with the namespace, the task queue and the activity type. The labels added here take a
 * few fixed values each (an outcome, a token kind, a retry reason): never a prompt, a URL, an id or an error's text,
 * which would leak data into a monitoring system and make the series unbounded.
 */
import { Context } from '@temporalio/activity';
import { noopMetricMeter, type MetricMeter } from '@temporalio/common';
import { costOf, type Price, type Usage } from '../lib/teacher/budget';
import type { RetryReason } from '../lib/teacher/retry';
import type { CallOutcome } from '../lib/teacher/shard';
import type { ArtifactRef } from '../lib/store/artifact-store';

/** Every series this module records, by what it measures. Counters end in `_total`, as Prometheus names them. */
export const METRICS = {
  /** Teacher calls that ended, by `outcome`: `sent` (answered by the endpoint), `cached`, `resumed`, `failed`. */
  teacherCalls: 'stepwise_teacher_calls_total',
  /** Tokens those calls spent, by `kind`: `prompt`, `completion` (failed attempts included, as the budget counts). */
  teacherTokens: 'stepwise_teacher_tokens_total',
  /** Dollars per ended call at the spec's price (calls of a teacher without a price are not recorded). */
  teacherCost: 'stepwise_teacher_call_cost_usd',
  /** Retries of a teacher call, by `reason` (lib/teacher/retry.ts's `RetryReason`). */
  teacherRetries: 'stepwise_teacher_retries_total',
  /** Non-pad source and target tokens per second over the latest training step. */
  trainingTokensPerSecond: 'stepwise_training_tokens_per_second',
  /** Training steps taken (a resumed attempt counts only its own). */
  trainingSteps: 'stepwise_training_steps_total',
  /** Bytes of resume checkpoints uploaded to the store while training. */
  checkpointBytes: 'stepwise_checkpoint_uploaded_bytes_total',
  /** Seconds each resume checkpoint's upload took. */
  checkpointUpload: 'stepwise_checkpoint_upload_seconds',
  /**
   * Seconds an activity attempt waited between being scheduled and starting on this worker. The SDK's own
   * `temporal_activity_schedule_to_start_latency` is per task queue only (no activity type) and in coarse millisecond
   * buckets; this one says which stage waited (training for a GPU worker, a shard behind the others), up to 30 min.
   */
  queueWait: 'stepwise_activity_queue_wait_seconds',
} as const;

/**
 * Histogram bucket boundaries, in each series' unit (workers/telemetry.ts hands them to the exporter): the SDK's
 * defaults are for milliseconds, which would put every one of these in the first bucket.
 */
export const METRIC_BUCKETS: Record<string, number[]> = {
  [METRICS.teacherCost]: [0.00001, 0.0001, 0.001, 0.01, 0.1, 1],
  [METRICS.checkpointUpload]: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
  [METRICS.queueWait]: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
};

/** The running activity's meter (tagged by the SDK), or a no-op outside one (a lib call from a test or a bench). */
function activityMeter(): MetricMeter {
  try {
    return Context.current().metricMeter;
  } catch {
    return noopMetricMeter;
  }
}

/**
 * What a teacher shard records as its calls end. Made once per activity: each instrument is a native handle, and
 * calls end by the thousand.
 */
export function teacherMetrics(price: Price | undefined) {
  const meter = activityMeter();
  const calls = meter.createCounter(METRICS.teacherCalls, '{call}', 'Teacher calls that ended, by outcome');
  const tokens = meter.createCounter(METRICS.teacherTokens, '{token}', 'Tokens teacher calls spent, by kind');
  const cost = meter.createHistogram(METRICS.teacherCost, 'float', 'USD', 'Dollars per teacher call at the spec price');
  const retries = meter.createCounter(METRICS.teacherRetries, '{retry}', 'Retries of teacher calls, by reason');
  return {
    onCalls(outcome: CallOutcome, count: number, usage?: Usage): void {
      calls.add(count, { outcome });
      if (!usage) return;
      tokens.add(usage.promptTokens, { kind: 'prompt' });
      tokens.add(usage.completionTokens, { kind: 'completion' });
      if (price) cost.record(costOf(usage, price));
    },
    onRetry(reason: RetryReason): void {
      retries.add(1, { reason });
    },
  };
}

/** What training records: throughput and steps from the child's progress, and each resume checkpoint's upload. */
export function trainingMetrics() {
  const meter = activityMeter();
  const throughput = meter.createGauge(
    METRICS.trainingTokensPerSecond,
    'float',
    '{token}/s',
    'Training tokens per second over the latest step'
  );
  const steps = meter.createCounter(METRICS.trainingSteps, '{step}', 'Training steps taken');
  const bytes = meter.createCounter(METRICS.checkpointBytes, 'By', 'Bytes of resume checkpoints uploaded');
  const upload = meter.createHistogram(METRICS.checkpointUpload, 'float', 's', 'Resume checkpoint upload time');
  let lastStep = 0;
  return {
    /** Training starts after `step` (a resume point): steps before it were counted by the attempt that took them. */
    startsAfter(step: number): void {
      lastStep = step;
    },
    onProgress(p: { step: number; tokensPerSec?: number }): void {
      if (p.tokensPerSec !== undefined && Number.isFinite(p.tokensPerSec)) throughput.set(p.tokensPerSec);
      // Progress is one message per step, and some may be lost (the child does not wait for them): count the gap.
      if (p.step > lastStep) steps.add(p.step - lastStep);
      lastStep = Math.max(lastStep, p.step);
    },
    onStored(ref: ArtifactRef, uploadMs: number): void {
      bytes.add(ref.size);
      upload.record(uploadMs / 1000);
    },
  };
}

/** Records how long the running activity's attempt waited in its task queue (scheduled to started on this worker). */
export function recordQueueWait(): void {
  let info: Context['info'];
  try {
    info = Context.current().info;
  } catch {
    return;
  }
  // The server's clock against ours: a small skew could make it negative, which a histogram refuses.
  const scheduled = info.currentAttemptScheduledTimestampMs;
  // A test's mock context may not say.
  if (!Number.isFinite(scheduled)) return;
  const waitedMs = Math.max(0, Date.now() - scheduled);
  activityMeter()
    .createHistogram(METRICS.queueWait, 'float', 's', 'Seconds an activity attempt waited in its task queue')
    .record(waitedMs / 1000);
}

/** `activities`, each recording its queue wait as it starts (see {@link recordQueueWait}). */
export function withQueueWait<A extends object>(activities: A): A {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(activities)) {
    wrapped[name] =
      typeof fn === 'function'
        ? (...args: unknown[]) => {
            recordQueueWait();
            return (fn as (...a: unknown[]) => unknown)(...args);
          }
        : fn;
  }
  return wrapped as A;
}
