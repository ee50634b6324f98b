/**
 * Metrics and traces of real worker processes (`stepwise worker`, workers/telemetry.ts): a CPU worker and a GPU
 * worker with Prometheus endpoints run a small pipeline against a local teacher that fails twice with a 503, while
 * OTLP/HTTP traces go to a receiver of our own. The scrapes hold the SDK's series and Stepwise's (teacher calls,
 * tokens, cost, retries by reason, training throughput, checkpoint uploads, queue wait) with the run's figures, and
 * the receiver holds one trace from the client's start of the run through its workflows and activities.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { Worker } from '@temporalio/worker';
import { CPU_TASK_QUEUE, type PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import type { PipelineSpecInput } from '../lib/pipeline/spec';
import { getVersion } from '../lib/registry/registry';
import { startLocalTeacherServer } from '../lib/teacher/local-server';
import { freePort } from '../infra/cache';
import { METRICS } from '../activities/metrics';
import { flushTracing, tracingWorkflowModules, workerTracingOptions } from '../workers/tracing';
import { killGroup } from './helpers/processes';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { hasMetric, metricSum, parseMetrics, scrapeMetrics, type MetricSample } from './helpers/metrics';
import { waitFor } from './helpers/wait';

/** A span as an OTLP/HTTP JSON body carries it (the fields this test reads). */
interface ReceivedSpan {
  name: string;
  traceId: string;
}

/** An OTLP/HTTP receiver: records the spans of every `POST /v1/traces` (JSON, as the exporter sends them). */
function startOtlpReceiver(): Promise<{ url: string; spans: ReceivedSpan[]; close(): Promise<void> }> {
  const spans: ReceivedSpan[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans?: { scopeSpans?: { spans?: ReceivedSpan[] }[] }[];
        };
        for (const r of body.resourceSpans ?? []) for (const s of r.scopeSpans ?? []) spans.push(...(s.spans ?? []));
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${port}`,
        spans,
        close: () => new Promise<void>((done) => server.close(() => done())),
      });
    });
  });
}

// Before the services (serial: hooks otherwise start together): this test process's client traces too (its start of
// the run begins the trace), and a process decides whether to trace when it first connects.
let receiver: Awaited<ReturnType<typeof startOtlpReceiver>> | undefined;
test.serial.before(async () => {
  receiver = await startOtlpReceiver();
  process.env.OTEL_EXPORTER_OTLP_ENDPOINT = receiver.url;
  // Batches leave every 200 ms rather than every 5 s, so the test need not wait long for them.
  process.env.OTEL_BSP_SCHEDULE_DELAY = '200';
});
const processes: ChildProcess[] = [];
// Registered before the services' teardown, so the workers go before what they are connected to.
test.after.always(async () => {
  for (const p of processes) killGroup(p, 'SIGKILL');
  await receiver?.close();
});
const services = servicesForFile({ workers: [] });

test('worker processes serve the SDK’s and Stepwise’s metrics on their metrics port and export one trace per run by OTLP', async (t) => {
  t.timeout(4 * 60_000);
  const model = 'observability-teacher';
  // Two 503s: the calls they hit are retried, and counted by reason.
  const teacher = await startLocalTeacherServer({ model, faults: { status: { code: 503, count: 2 } } });
  t.teardown(() => teacher.close());
  const log: string[] = [];
  const [cpuPort, gpuPort] = [await freePort(), await freePort()];
  const workerEnv = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver!.url, OTEL_BSP_SCHEDULE_DELAY: '200' };
  // One by the flag, one by the variable: both ways an operator sets it.
  const [cpu, gpu] = await Promise.all([
    startWorkerProcess(services(), 'cpu', log, {
      detached: true,
      env: workerEnv,
      args: ['--metrics-port', String(cpuPort), '--metrics-host', '127.0.0.1'],
    }),
    startWorkerProcess(services(), 'gpu', log, {
      detached: true,
      env: { ...workerEnv, STEPWISE_METRICS_PORT: String(gpuPort), STEPWISE_METRICS_HOST: '127.0.0.1' },
    }),
  ]);
  processes.push(cpu, gpu);
  t.regex(log.join(''), new RegExp(`metrics on http://127\\.0\\.0\\.1:${cpuPort}/metrics`));

  const steps = 6;
  const spec: PipelineSpecInput = {
    name: 'observability',
    data: { kind: 'demo', size: 40, seed: 5 },
    teacher: {
      kind: 'openai',
      url: teacher.url,
      model,
      price: { inputPerMillionTokens: 2, outputPerMillionTokens: 8 },
    },
    student: { preset: 'tiny', steps, batchSize: 4, checkpointEvery: 2 },
    gate: { enabled: false },
  };
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `observability-${Date.now()}`,
    args: [spec],
  });
  const result = (await handle.result()) as PipelineResult;
  await flushTracing();
  const version = (await getVersion(services().store, 'observability', result.version))!;
  const calls = version.lineage.teacher!.calls!;
  t.log(`teacher calls ${JSON.stringify(calls)}, worker log tail: ${log.join('').slice(-300)}`);

  const cpuMetrics = parseMetrics(await scrapeMetrics(`127.0.0.1:${cpuPort}`));
  const gpuMetrics = parseMetrics(await scrapeMetrics(`127.0.0.1:${gpuPort}`));
  for (const [queue, samples] of [
    ['cpu', cpuMetrics],
    ['gpu', gpuMetrics],
  ] as const) {
    t.true(
      samples.some((s) => s.name.startsWith('temporal_')),
      `the ${queue} worker serves the SDK's temporal_* series`
    );
    t.true(metricSum(samples, `${METRICS.queueWait}_count`) > 0, `the ${queue} worker records queue waits`);
  }
  t.true(hasMetric(cpuMetrics, 'temporal_activity_execution_latency_count'), 'activity latencies from the SDK');

  // The teacher's figures match the run's own accounting.
  const callsBy = (outcome: string) => metricSum(cpuMetrics, METRICS.teacherCalls, { outcome });
  t.is(callsBy('sent'), calls.sent, 'one call counted per call the run sent');
  t.is(callsBy('sent'), calls.planned, 'every planned call was sent (a fresh store caches nothing)');
  t.is(callsBy('cached') + callsBy('resumed') + callsBy('failed'), 0);
  t.is(metricSum(cpuMetrics, METRICS.teacherRetries, { reason: 'server_error' }), 2, 'the two 503s were retried');
  const promptTokens = metricSum(cpuMetrics, METRICS.teacherTokens, { kind: 'prompt' });
  const completionTokens = metricSum(cpuMetrics, METRICS.teacherTokens, { kind: 'completion' });
  t.true(promptTokens > 0 && completionTokens > 0, `tokens: ${promptTokens} prompt, ${completionTokens} completion`);
  t.is(metricSum(cpuMetrics, `${METRICS.teacherCost}_count`), calls.sent, 'a cost for every call');
  const cost = metricSum(cpuMetrics, `${METRICS.teacherCost}_sum`);
  const expected = (promptTokens * 2 + completionTokens * 8) / 1e6;
  t.true(Math.abs(cost - expected) < 1e-9 + expected * 1e-6, `cost ${cost} is the tokens at the spec's price`);
  t.true(
    metricSum(cpuMetrics, `${METRICS.queueWait}_count`, { activityType: 'teacherShard' }) >= 1,
    'queue waits are tagged by activity type'
  );

  // Training's figures, from the GPU worker.
  t.is(metricSum(gpuMetrics, METRICS.trainingSteps), steps, 'every training step counted');
  t.true(metricSum(gpuMetrics, METRICS.trainingTokensPerSecond) > 0, 'a training throughput');
  t.true(metricSum(gpuMetrics, METRICS.checkpointBytes) > 0, 'resume checkpoints uploaded');
  t.true(metricSum(gpuMetrics, `${METRICS.checkpointUpload}_count`) >= 1, 'their upload times');
  noUnboundedLabels(t, [...cpuMetrics, ...gpuMetrics], teacher.url);

  // One trace: the client's start of the run, the workflows and the activities they ran.
  const wanted = [
    'StartWorkflow:distillationPipeline',
    'RunWorkflow:distillationPipeline',
    'RunWorkflow:teacherStage',
    'StartActivity:trainStudent',
    'RunActivity:sample',
    'RunActivity:teacherShard',
    'RunActivity:trainStudent',
    'RunActivity:evaluate',
  ];
  const spans = await waitFor('the run’s spans at the receiver', async () => {
    const got = receiver!.spans;
    return wanted.every((name) => got.some((s) => s.name === name)) ? got : undefined;
  }).catch((err: Error) => {
    throw new Error(`${err.message}; got ${[...new Set(receiver!.spans.map((s) => s.name))].join(', ')}`);
  });
  const start = spans.find((s) => s.name === 'StartWorkflow:distillationPipeline')!;
  for (const name of wanted) {
    t.true(
      spans.some((s) => s.name === name && s.traceId === start.traceId),
      `${name} is in the trace the client started`
    );
  }
});

/** Labels take a few fixed values: no URL, prompt or id reaches a series. */
function noUnboundedLabels(t: ExecutionContext, samples: readonly MetricSample[], teacherUrl: string): void {
  const offending = samples
    .filter((s) => s.name.startsWith('stepwise_'))
    .flatMap((s) => Object.entries(s.labels).map(([key, value]) => ({ series: s.name, key, value })))
    .filter(({ value }) => value.includes(teacherUrl) || /^https?:|\s/.test(value) || value.length > 64);
  t.deepEqual(offending, [], 'every stepwise_* label value is short and names no URL');
}

test('with the tracing interceptors in the bundle, a recorded history of the pipeline still replays', async (t) => {
  const history = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'pipeline-history.json'), 'utf8'));
  const teacherHistory = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'teacher-stage-history.json'), 'utf8'));
  const pipelineId: string =
    teacherHistory.events[0].workflowExecutionStartedEventAttributes.parentWorkflowExecution.workflowId;
  const workflowModules = tracingWorkflowModules();
  t.is(workflowModules.length, 1, 'tracing is on in this process');
  await t.notThrowsAsync(
    Worker.runReplayHistory(
      // The sinks a tracing worker has (replay calls none of them, but a workflow naming an unknown one is logged).
      {
        workflowsPath: require.resolve('../workflows'),
        interceptors: { workflowModules },
        sinks: workerTracingOptions().sinks,
      },
      history,
      pipelineId
    )
  );
});
