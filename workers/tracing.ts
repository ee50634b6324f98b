/**
 * OpenTelemetry traces through the Temporal SDK's interceptors: workflows, activities and the client calls that start
 * runs, exported by OTLP/HTTP when the standard `OTEL_*` variables name an endpoint (infra/config.ts), off otherwise.
 * Process-wide: spans go through OpenTelemetry's global tracer provider, which the SDK's interceptors use.
 *
 * The OpenTelemetry SDK, its exporter and the interceptors are loaded only once tracing is on: a CLI command that
 * starts or lists runs would otherwise load ~450 modules (over a second on a small machine) to learn it is off.
 * Types come from `import type`, which costs nothing at run time.
 */
import type { Resource } from '@opentelemetry/resources';
import type { BasicTracerProvider, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { ClientInterceptors } from '@temporalio/client';
import type { WorkerOptions } from '@temporalio/worker';
import { settings } from '../infra/config';

type Interceptors = typeof import('@temporalio/interceptors-opentelemetry');
const interceptors = () => require('@temporalio/interceptors-opentelemetry') as Interceptors;

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
  const { Resource } = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
  const { BasicTracerProvider, BatchSpanProcessor } =
    require('@opentelemetry/sdk-trace-base') as typeof import('@opentelemetry/sdk-trace-base');
  const { OTLPTraceExporter } =
    require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http');
  const { AsyncLocalStorageContextManager } =
    require('@opentelemetry/context-async-hooks') as typeof import('@opentelemetry/context-async-hooks');
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

/**
 * The worker options that trace activities and export workflow spans, or none when tracing is off. Workflows are
 * traced by interceptors inside the workflow bundle: {@link tracingWorkflowModules}.
 */
export function workerTracingOptions(): Pick<WorkerOptions, 'interceptors' | 'sinks'> {
  const t = startTracing();
  if (!t) return {};
  const { makeWorkflowExporter, OpenTelemetryActivityInboundInterceptor, OpenTelemetryActivityOutboundInterceptor } =
    interceptors();
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
  return startTracing() ? { workflow: [new (interceptors().OpenTelemetryWorkflowClientInterceptor)()] } : undefined;
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
  const { context, propagation, trace } = require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  trace.disable();
  context.disable();
  propagation.disable();
  tracing = null;
}
