/**
 * The teacher stage's throughput and memory, through Temporal: the `teacherStage` workflow and its shard activities
 * on a real CPU worker process, against our local OpenAI-compatible server with a fixed latency, every call cached
 * and journalled in the artifact store as in production.
 *
 * - efficiency: completed calls per second ÷ (C ÷ L), at concurrency C (default 64) and server latency L (default
 *   1 s, about what a short chain-of-thought completion takes a real LLM), over the stage's whole wall time (plan,
 *   shards, assembly). 1.0 would be a client that never waits on anything but the server. Also reported at 250 ms
 *   (`efficiencyAt250ms`), where the same per-call overhead weighs four times as much.
 * - rssGrowth: the worker process's peak RSS with 100k examples ÷ with 10k, minus 1 (short prompts, fast server;
 *   each size in a fresh worker process).
 *
 * Settings (env): BENCH_CONCURRENCY, BENCH_LATENCY_MS, BENCH_EFFICIENCY_EXAMPLES (4000),
 * BENCH_FAST_EFFICIENCY_LATENCY_MS (250), BENCH_SMALL (10000),
 * BENCH_LARGE (100000), BENCH_FAST_LATENCY_MS (2), BENCH_STORE (`fs`, default, or `s3` for a local versitygw).
 * Last line: one JSON object.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { temporal } from '@temporalio/proto';

import type { TeacherStageInput } from '../contract';
import type { PromptTeacherResult } from '../contract';
import { ensureBucket, startS3Server, type S3Server } from '../infra/s3-server';
import { startTemporalDevServer } from '../infra/temporal';
import { generateDemoTask } from '../lib/data/demo-task';
import { parseSpec } from '../lib/pipeline/spec';
import { openStore } from '../lib/store';
import { startLocalTeacherServer } from '../lib/teacher';
import { connectTemporal, quietTemporalLogs } from '../workers/pipeline-worker';
import { CPU_TASK_QUEUE } from '../contract';
import { teacherStage } from '../workflows';

const ROOT = join(__dirname, '..');
const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const CONCURRENCY = env('BENCH_CONCURRENCY', 64);
const LATENCY_MS = env('BENCH_LATENCY_MS', 1000);
const EFFICIENCY_EXAMPLES = env('BENCH_EFFICIENCY_EXAMPLES', 4000);
/** A second, harsher efficiency run: four times the call rate, so per-call overhead weighs four times as much. */
const FAST_EFFICIENCY_LATENCY_MS = env('BENCH_FAST_EFFICIENCY_LATENCY_MS', 250);
const SMALL = env('BENCH_SMALL', 10_000);
const LARGE = env('BENCH_LARGE', 100_000);
const FAST_LATENCY_MS = env('BENCH_FAST_LATENCY_MS', 2);
const MODEL = 'bench-teacher';
type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

interface Phase {
  examples: number;
  seconds: number;
  callsPerSecond: number;
  peakRssMiB: number;
  /** From the workflow's history: workflow start to plan done, first shard scheduled to last done, assembly. */
  planMs: number;
  shardsMs: number;
  finishMs: number;
}

/** Where the stage's wall time went, from its history (event times are the server's). */
async function breakdown(handle: { fetchHistory(): Promise<{ events?: HistoryEvent[] | null }> }) {
  const events = (await handle.fetchHistory()).events ?? [];
  const t = (e: HistoryEvent) => Number(e.eventTime!.seconds) * 1000 + (e.eventTime!.nanos ?? 0) / 1e6;
  const type = new Map<number, string>();
  let planDone = 0;
  let firstShard = Infinity;
  let lastShard = 0;
  let finishStart = 0;
  let finishDone = 0;
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes?.activityType?.name;
    if (scheduled) {
      type.set(Number(e.eventId), scheduled);
      if (scheduled === 'teacherShard') firstShard = Math.min(firstShard, t(e));
      if (scheduled === 'finishTeacher') finishStart = t(e);
    }
    const done = e.activityTaskCompletedEventAttributes;
    if (done) {
      const name = type.get(Number(done.scheduledEventId));
      if (name === 'planTeacher') planDone = t(e);
      if (name === 'teacherShard') lastShard = t(e);
      if (name === 'finishTeacher') finishDone = t(e);
    }
  }
  return { planMs: planDone - t(events[0]), shardsMs: lastShard - firstShard, finishMs: finishDone - finishStart };
}

async function main() {
  quietTemporalLogs();
  const tmp = await mkdtemp(join(tmpdir(), 'stepwise-bench-teacher-'));
  const temporal = await startTemporalDevServer({ stateDir: join(tmp, 'temporal') });
  let s3: S3Server | undefined;
  if (process.env.BENCH_STORE === 's3') {
    s3 = await startS3Server({ dataDir: join(tmp, 's3') });
    await ensureBucket(s3, 'bench');
    Object.assign(process.env, {
      AWS_ACCESS_KEY_ID: s3.accessKey,
      AWS_SECRET_ACCESS_KEY: s3.secretKey,
      AWS_ENDPOINT_URL_S3: s3.endpoint,
      AWS_REGION: s3.region,
    });
  }
  const conn = await connectTemporal({
    connectionOptions: { address: temporal.address },
    namespace: temporal.namespace,
  });
  let phaseNo = 0;

  /** One stage run over `n` fresh examples, in a fresh store and a fresh worker process. */
  async function phase(n: number, latencyMs: number): Promise<Phase> {
    const id = phaseNo++;
    const location = s3 ? `s3://bench/phase-${id}` : `file://${join(tmp, `store-${id}`)}`;
    const server = await startLocalTeacherServer({ model: MODEL, latencyMs });
    const store = openStore(location);
    const worker = await startWorker(location, temporal.address, temporal.namespace);
    try {
      const examples = generateDemoTask({ n, seed: 1000 + id });
      const cut = Math.ceil(n * 0.9);
      const [train, valid] = await Promise.all([
        store.putJsonl(examples.slice(0, cut)),
        store.putJsonl(examples.slice(cut)),
      ]);
      const teacher = parseSpec({
        name: 'bench',
        data: { kind: 'demo' },
        teacher: { kind: 'openai', url: server.url, model: MODEL, concurrency: CONCURRENCY, timeoutSeconds: 60 },
      }).teacher;
      const input: TeacherStageInput = { task: 'demo', teacher, train, valid };
      const started = performance.now();
      // BENCH_TRACE=1 prints the worker's resident set every 2 s: a leak climbs, a heap settling does not.
      const trace = process.env.BENCH_TRACE
        ? setInterval(() => {
            void readFile(`/proc/${worker.pid}/status`, 'utf8').then(
              (st) =>
                console.log(
                  `  rss ${/VmRSS:\s+(\d+)/.exec(st)?.[1]} kB at ${((performance.now() - started) / 1000).toFixed(0)} s`
                ),
              () => undefined
            );
          }, 2000)
        : undefined;
      const handle = await conn.client.workflow.start(teacherStage, {
        taskQueue: CPU_TASK_QUEUE,
        workflowId: `bench-teacher-${id}-${Date.now()}`,
        args: [input],
      });
      const result = (await handle.result()) as PromptTeacherResult;
      const seconds = (performance.now() - started) / 1000;
      clearInterval(trace);
      if (result.total !== n || result.failed !== 0 || result.calls.sent !== n) {
        throw new Error(`phase ${id}: expected ${n} calls sent, got ${JSON.stringify(result.calls)}`);
      }
      const peakRssMiB = await peakRss(worker.pid!);
      const p = { examples: n, seconds, callsPerSecond: n / seconds, peakRssMiB, ...(await breakdown(handle)) };
      console.log(
        `${n} examples, latency ${latencyMs} ms, C=${CONCURRENCY}: ${seconds.toFixed(1)} s, ` +
          `${p.callsPerSecond.toFixed(1)} calls/s, worker peak RSS ${peakRssMiB.toFixed(0)} MiB; ` +
          `plan ${p.planMs.toFixed(0)} ms, shards ${p.shardsMs.toFixed(0)} ms, finish ${p.finishMs.toFixed(0)} ms`
      );
      return p;
    } finally {
      await stop(worker);
      await store.close();
      await server.close();
    }
  }

  try {
    const eff = await phase(EFFICIENCY_EXAMPLES, LATENCY_MS);
    const ideal = CONCURRENCY / (LATENCY_MS / 1000);
    const fastIdeal = CONCURRENCY / (FAST_EFFICIENCY_LATENCY_MS / 1000);
    const fastEff = await phase(
      Math.round((EFFICIENCY_EXAMPLES * (LATENCY_MS / FAST_EFFICIENCY_LATENCY_MS)) / 2),
      FAST_EFFICIENCY_LATENCY_MS
    );
    const small = await phase(SMALL, FAST_LATENCY_MS);
    const large = await phase(LARGE, FAST_LATENCY_MS);
    const figures = {
      efficiency: Number((eff.callsPerSecond / ideal).toFixed(4)),
      rssGrowth: Number((large.peakRssMiB / small.peakRssMiB - 1).toFixed(4)),
      concurrency: CONCURRENCY,
      latencyMs: LATENCY_MS,
      callsPerSecond: Number(eff.callsPerSecond.toFixed(1)),
      idealCallsPerSecond: ideal,
      [`efficiencyAt${FAST_EFFICIENCY_LATENCY_MS}ms`]: Number((fastEff.callsPerSecond / fastIdeal).toFixed(4)),
      efficiencyExamples: eff.examples,
      peakRssMiB: { [SMALL]: Math.round(small.peakRssMiB), [LARGE]: Math.round(large.peakRssMiB) },
      fastCallsPerSecond: Number(large.callsPerSecond.toFixed(1)),
      largeSeconds: Number(large.seconds.toFixed(1)),
      store: s3 ? 's3 (versitygw)' : 'fs',
    };
    console.log(JSON.stringify(figures));
  } finally {
    await conn.close();
    await temporal.stop();
    await s3?.stop();
    await rm(tmp, { recursive: true, force: true });
  }
}

async function startWorker(store: string, address: string, namespace: string): Promise<ChildProcess> {
  const worker = spawn(process.execPath, [join(ROOT, 'bin', 'stepwise.js'), 'worker', '--queue', 'cpu'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, TEMPORAL_ADDRESS: address, TEMPORAL_NAMESPACE: namespace, STEPWISE_STORE: store },
  });
  await new Promise<void>((resolve, reject) => {
    worker.stdout!.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('stepwise worker:')) resolve();
    });
    worker.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
  });
  return worker;
}

async function stop(worker: ChildProcess): Promise<void> {
  if (worker.exitCode !== null) return;
  const gone = new Promise((r) => worker.once('exit', r));
  worker.kill('SIGTERM');
  await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
  if (worker.exitCode === null) worker.kill('SIGKILL');
}

/** The process's peak resident set (VmHWM), in MiB. */
async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]);
  return kb / 1024;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
