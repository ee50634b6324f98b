/**
 * A worker process's telemetry: the Temporal Runtime (the SDK's logger, and its metrics on a Prometheus endpoint
 * that Stepwise's own series share, activities/metrics.ts), a singleton installed before the first worker or
 * connection, and the start of tracing (workers/tracing.ts) with it.
 */
import type { Logger } from '@temporalio/common';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { METRIC_BUCKETS } from '../activities/metrics';
import { InputError } from '../lib/errors';
import { startTracing } from './tracing';

export interface RuntimeTelemetryOptions {
  /** Serve Prometheus metrics (the SDK's and Stepwise's) on this port; none when omitted. */
  metricsPort?: number;
  /** The address the metrics endpoint binds (default `0.0.0.0`). */
  metricsHost?: string;
  /** The OTLP/HTTP traces URL (default: from the `OTEL_*` variables; tracing is off when neither names one). */
  otlpEndpoint?: string;
  /** The SDK's logger (default: warnings and errors only, so a run's own progress is not buried). */
  logger?: Logger;
}

/**
 * Installs the Temporal Runtime with these options, and starts tracing when an endpoint is configured. Must run
 * before the first worker or connection is created. Returns where metrics are served, if they are.
 * @throws InputError when the metrics endpoint cannot be bound (the port is taken); Error when metrics are asked for
 *   once the Runtime is installed (something in this process connected first: a bug, said plainly).
 */
export function installRuntime(opts: RuntimeTelemetryOptions = {}): { metricsAddress?: string } {
  startTracing({ endpoint: opts.otlpEndpoint, serviceName: 'stepwise-worker' });
  const metricsAddress =
    opts.metricsPort === undefined ? undefined : bindAddress(opts.metricsHost ?? '0.0.0.0', opts.metricsPort);
  const logger = opts.logger ?? new DefaultLogger('WARN');
  if (Runtime._instance) {
    if (metricsAddress) {
      throw new Error(
        `cannot serve metrics on ${metricsAddress}: the Temporal Runtime was installed before installRuntime ran`
      );
    }
    // Already installed (an earlier call in this process, or a test's own): keep that one.
    return {};
  }
  try {
    Runtime.install({
      logger,
      ...(metricsAddress
        ? {
            telemetryOptions: {
              metrics: { prometheus: { bindAddress: metricsAddress, histogramBucketOverrides: METRIC_BUCKETS } },
            },
          }
        : {}),
    });
  } catch (err) {
    if (!metricsAddress) return {};
    // Most often the port is taken: the operator's to fix, so one line naming the settings.
    throw new InputError(
      `cannot serve metrics on ${metricsAddress} (--metrics-port / STEPWISE_METRICS_PORT): ${(err as Error).message}`,
      'metricsPort'
    );
  }
  return metricsAddress ? { metricsAddress } : {};
}

/** `host:port`, with an IPv6 host in brackets as the exporter expects. */
function bindAddress(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}
