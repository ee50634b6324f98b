/**
 * A process's telemetry: the Temporal Runtime (the SDK's logger, and its metrics on a Prometheus endpoint that
 * Stepwise's own series share, activities/metrics.ts), and OpenTelemetry traces through the SDK's interceptors:
 * workflows, activities and the client calls that start runs, exported by OTLP/HTTP when the standard `OTEL_*`
 * variables name an endpoint (infra/config.ts), off otherwise.
 *
 * Both are process-wide: the Runtime is a singleton installed before the first worker or connection, and traces go
 * through OpenTelemetry's global tracer provider, which the SDK's interceptors use.
 */
import { context, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { ClientInterceptors } from '@temporalio/client';
import type { Logger } from '@temporalio/common';
import {
  makeWorkflowExporter,
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
  OpenTelemetryWorkflowClientInterceptor,
} from '@temporalio/interceptors-opentelemetry';
import { DefaultLogger, Runtime, type WorkerOptions } from '@temporalio/worker';
import { METRIC_BUCKETS } from '../activities/metrics';
import { settings } from '../infra/config';
import { InputError } from '../lib/errors';

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

/**
 * The metrics port a flag or `STEPWISE_METRICS_PORT` gives, checked.
 * @throws InputError naming `field` when it is not an integer from 1 to 65535.
 */
export function parseMetricsPort(value: string | undefined, field: string): number | undefined {
  if (value === undefined) return undefined;
  const port = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InputError(`${field} is '${value}'; expected a port number from 1 to 65535`, field);
  }
  return port;
}

/** `host:port`, with an IPv6 host in brackets as the exporter expects. */
function bindAddress(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

interface Tracing {
  provider: BasicTracerProvider;
  spanProcessor: SpanProcessor;
  resource: Resource;
}

/** Decided once per process: undefined until the first caller, null when tracing is off. */
let tracing: Tracing | null | undefined;

/**
 * Starts exporting traces when an endpoint is given or configured (once per process: later calls return the first
 * decision). Spans are batched; `OTEL_BSP_*` tune the batches and `OTEL_EXPORTER_OTLP_HEADERS` adds headers (an
 * API key), as in any OpenTelemetry SDK.
 */
export function startTracing(opts: { endpoint?: string; serviceName?: string } = {}): Tracing | undefined {
  if (tracing !== undefined) return tracing ?? undefined;
  const config = settings();
  const url = opts.endpoint ?? config.otlpTracesEndpoint;
  if (!url) {
    tracing = null;
    return undefined;
  }
  const resource = Resource.default().merge(
    new Resource({ 'service.name': config.otelServiceName ?? opts.serviceName ?? 'stepwise' })
  );
  const spanProcessor = new BatchSpanProcessor(new OTLPTraceExporter({ url }));
  const provider = new BasicTracerProvider({ resource, spanProcessors: [spanProcessor] });
  // The client interceptor injects the active span into the headers of the run it starts: that needs a context
  // manager that follows async calls, and W3C trace-context propagation (register's default).
  provider.register({ contextManager: new AsyncLocalStorageContextManager().enable() });
  tracing = { provider, spanProcessor, resource };
  return tracing;
}

/** Whether this process exports traces (deciding it, from the configuration, if nothing has yet). */
export function tracingEnabled(): boolean {
  return startTracing() !== undefined;
}

/**
 * The worker options that trace activities and export workflow spans, or none when tracing is off. Workflows are
 * traced by interceptors inside the workflow bundle: {@link tracingWorkflowModules}.
 */
export function workerTracingOptions(): Pick<WorkerOptions, 'interceptors' | 'sinks'> {
  const t = startTracing();
  if (!t) return {};
  return {
    interceptors: {
      activity: [
        (ctx) => ({
          inbound: new OpenTelemetryActivityInboundInterceptor(ctx),
          outbound: new OpenTelemetryActivityOutboundInterceptor(ctx),
        }),
      ],
    },
    // Workflow spans leave the sandbox through this sink (replay never calls it, so a replayed task exports nothing).
    sinks: { exporter: makeWorkflowExporter(t.spanProcessor, t.resource) },
  };
}

/**
 * The workflow interceptor modules a worker's bundle must include when tracing is on (`interceptors.workflowModules`
 * of a worker that bundles at start, or `workflowInterceptorModules` of a bundle built ahead); none when off. They
 * only add headers and export spans through a sink: the commands a workflow issues, and so its replay, are unchanged.
 */
export function tracingWorkflowModules(): string[] {
  return startTracing() ? [require.resolve('@temporalio/interceptors-opentelemetry/lib/workflow-interceptors')] : [];
}

/** The client interceptors that trace starting, signalling and querying runs, or none when tracing is off. */
export function clientTracingInterceptors(): ClientInterceptors | undefined {
  return startTracing() ? { workflow: [new OpenTelemetryWorkflowClientInterceptor()] } : undefined;
}

/** Sends the spans still batched (a CLI command about to exit, a worker shutting down); a no-op when off. */
export async function flushTracing(): Promise<void> {
  await tracing?.provider.forceFlush();
}

/** Flushes and stops tracing: the end of the process (a worker that has stopped). */
export async function shutdownTracing(): Promise<void> {
  if (!tracing) return;
  const { provider } = tracing;
  await provider.shutdown();
  trace.disable();
  context.disable();
  propagation.disable();
  tracing = null;
}
