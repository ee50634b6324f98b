/**
 * The teacher stage's throughput and memory, through Temporal: the `teacherStage` workflow and its shard activities
 * on a real CPU worker process, against our local OpenAI-compatible server with a fixed latency, every call cached
 * and journalled in the artifact store as in production.
 *
 * - efficiency: completed calls per second ÷ (C ÷ L), at concurrency C (default 64) and server latency L (default
 *   1 s, about what a short chain-of-thought completion takes a real LLM), over the stage's whole wall time (plan,
 *   shards, assembly). 1.0 would be a client that never waits on anything but the server. Also reported at 250 ms
 *   (`efficiencyAt250ms`), where the same per-call overhead weighs four times as much. Measured on a warm worker and
 *   server, as a long-lived worker runs a stage: each timed stage runs in a worker that has just run a small stage
 *   (C examples) of its own, so the first workflow a fresh dev server and a fresh worker see (a second or two of
 *   one-off start-up: namespace caches, the workflow bundle's context, lazily loaded modules) is not counted
 *   (`BENCH_WARMUP=0` counts it). The 250 ms phase runs twice the examples of the 1 s one (8000 by default), so both
 *   take about as long. At 1 s, 4000 calls on 64 slots take 63 rounds where 62.5 would do: a cap of 0.992 that no
 *   schedule lifts. At 250 ms, two waves of four 1000-call shards on 16 slots each (a shard gets its share of the
 *   stage's concurrency) took 2 x 63 rounds for 125 rounds of calls, the same 0.992, until shards handed their free
 *   slots on: now each shard of the second wave starts in the tail of one of the first and takes up its slots as they
 *   free, so the 8000 calls take the 125 rounds they need.
 * - rssGrowth: the worker process's peak RSS with 100k examples ÷ with 10k, minus 1 (short prompts, fast server;
 *   each size in a fresh worker process), on the filesystem store; `rssGrowthS3` the same on S3 (a local versitygw,
 *   with keep-alive connections as S3 itself keeps them).
 * - goals: whether each figure meets issue 19's goal (efficiency >= 0.98, efficiencyAt250ms >= 0.97, rssGrowth and
 *   rssGrowthS3 <= 0.10); a figure not measured in this run has no entry.
 * - workerCpuMsPerCall: the worker's CPU time (user + system) per call in each efficiency phase: what the wall-time
 *   figures come to on a machine whose cores are busy with other work.
 * - stealShare: per efficiency phase, the share of the machine's CPU time its hypervisor gave other guests meanwhile
 *   (`/proc/stat`). The worker, the server and Temporal share two cores here, so a phase that lost a tenth of them
 *   to a neighbour is slower for it: compare efficiencies measured at similar steal.
 *
 * Where the efficiency is lost, measured on an AVX2 EPYC VM (2 vCPU): the server answers in L + 1-2 ms, and the
 * worker's call takes L + 8-32 ms from its request to its answer back in the shard. The server's latency is constant,
 * so calls started together stay together, and their answers queue on the worker's event loop: a bare client (no
 * Temporal, no store) took 1,024 ms a call at L = 1 s, and 1,004 ms with its 64 starts spread over one latency. The
 * rest is CPU, much of it waking idle threads (about 0.1 ms each on that VM): a call's cache write is five steps
 * through libuv's thread pool. On a Zen 5 EPYC VM (2 vCPU, no steal), at L = 250 ms: the server took L + 0.7 ms on
 * average (from a request's headers to its response handed to the kernel), the worker L + 3.7 ms from writing its
 * request to the response's headers (median L + 1.8, p90 L + 6.3: both event loops and the loopback, on two cores
 * shared with Temporal), L + 4.6 ms through the SDK to the answer back in its slot, and 0.1-0.2 ms from there to the
 * slot's next request. With the 0.992 cap and plan and assembly (0.3%), that made 0.962-0.968 there, where 1 s gives
 * 0.983-0.984; with shards handing their free slots on (no cap at 250 ms), 0.978-0.980 in eight runs of twelve, with
 * the worker at 0.94-1.11 ms of CPU per call, and 0.973 at 1.22 ms. In one ten-minute stretch the worker needed
 * 1.46-1.54 ms a call for the same work, steal 0, and three runs gave 0.965: read workerCpuMsPerCall beside the
 * figure. Cache I/O as synchronous calls on the main thread made it worse on that machine (0.957 and 0.962 against
 * 0.964 and 0.966, alternated): each cache write's fsync then stalls the event loop.
 *
 * Settings (env): BENCH_CONCURRENCY, BENCH_LATENCY_MS, BENCH_EFFICIENCY_EXAMPLES (4000),
 * BENCH_FAST_EFFICIENCY_LATENCY_MS (250), BENCH_SMALL (10000), BENCH_LARGE (100000), BENCH_FAST_LATENCY_MS (2),
 * BENCH_STORE (`fs` or `s3`: every phase on that store only; by default efficiency on fs and memory on both),
 * BENCH_ONLY (`efficiency` or `rss`), BENCH_WARMUP (1), BENCH_TRACE=1 (the worker's RSS every 2 s),
 * BENCH_TIMELINE=1 (each stage's history events with their times), BENCH_WORKER_NODE_ARGS (extra node flags for
 * the worker, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`).
 * Last line: one JSON object.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { temporal } from '@temporalio/proto';

import type { TeacherStageInput } from '../contract';
import type { PromptTeacherResult } from '../contract';
import { ensureBucket, startS3Server, type S3Server } from '../infra/s3-server';
import { startTemporalDevServer } from '../infra/temporal';
import { generateDemoTask } from '../lib/data/demo-task';
import type { Example } from '../lib/data/types';
import { parseSpec } from '../lib/pipeline/spec';
import { openStore } from '../lib/store';
import { startLocalTeacherServer } from '../lib/teacher';
import { connectTemporal, quietTemporalLogs } from '../workers/pipeline-worker';
import { CPU_TASK_QUEUE } from '../contract';
import { teacherStage } from '../workflows';
import { round, stealMeter } from './stats';

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
const WARMUP = env('BENCH_WARMUP', 1) !== 0;
const MODEL = 'bench-teacher';
/** Issue 19's goals for the figures. */
const GOALS = { efficiency: 0.98, efficiencyAt250ms: 0.97, rssGrowth: 0.1 };
type HistoryEvent = temporal.api.history.v1.IHistoryEvent;
type StoreKind = 'fs' | 's3';

/** The stores each part runs on: one named by BENCH_STORE for everything, else efficiency on fs, memory on both. */
function storesOf(named: string | undefined): { efficiency: StoreKind; rss: StoreKind[] } {
  if (named === undefined) return { efficiency: 'fs', rss: ['fs', 's3'] };
  if (named !== 'fs' && named !== 's3') throw new Error(`BENCH_STORE is ${JSON.stringify(named)}; expected fs or s3`);
  return { efficiency: named, rss: [named] };
}

/** The parts BENCH_ONLY asks for (both by default). */
function partsOf(only: string | undefined): { efficiency: boolean; rss: boolean } {
  if (only === undefined) return { efficiency: true, rss: true };
  if (only !== 'efficiency' && only !== 'rss') {
    throw new Error(`BENCH_ONLY is ${JSON.stringify(only)}; expected efficiency or rss`);
  }
  return { efficiency: only === 'efficiency', rss: only === 'rss' };
}

interface Phase {
  examples: number;
  seconds: number;
  callsPerSecond: number;
  peakRssMiB: number;
  /** The worker's CPU time (user + system) while it ran this stage, per call. */
  cpuMsPerCall: number;
  /** The machine's CPU time taken by other guests of its host meanwhile (see {@link stealMeter}). */
  stealShare: number | undefined;
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
  if (process.env.BENCH_TIMELINE) {
    // BENCH_TIMELINE=1 prints the history's events with their times since the stage started: where the gaps are.
    for (const e of events) {
      const scheduled = e.activityTaskScheduledEventAttributes?.activityType?.name;
      const of =
        e.activityTaskStartedEventAttributes?.scheduledEventId ??
        e.activityTaskCompletedEventAttributes?.scheduledEventId;
      const name = scheduled ?? (of ? type.get(Number(of)) : undefined) ?? '';
      const kind = temporal.api.enums.v1.EventType[Number(e.eventType)].replace('EVENT_TYPE_', '').toLowerCase();
      console.log(`  ${(t(e) - t(events[0])).toFixed(0).padStart(7)} ms  ${kind} ${name}`);
    }
  }
  return { planMs: planDone - t(events[0]), shardsMs: lastShard - firstShard, finishMs: finishDone - finishStart };
}

async function main() {
  quietTemporalLogs();
  const stores = storesOf(process.env.BENCH_STORE);
  const parts = partsOf(process.env.BENCH_ONLY);
  const tmp = await mkdtemp(join(tmpdir(), 'stepwise-bench-teacher-'));
  const temporal = await startTemporalDevServer({ stateDir: join(tmp, 'temporal') });
  let s3: S3Server | undefined;
  const usesS3 = (parts.efficiency && stores.efficiency === 's3') || (parts.rss && stores.rss.includes('s3'));
  if (usesS3) {
    // S3 keeps connections alive; versitygw closes each one after its response unless told otherwise, and a new TCP
    // connection per store request is neither what a worker meets in production nor cheap. The gateway reads its
    // settings from the environment it inherits.
    process.env.VGW_KEEP_ALIVE ??= 'true';
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

  /** One stage over `n` fresh examples, in a fresh store and a fresh worker process (after a warm-up stage, if asked). */
  async function phase(n: number, latencyMs: number, kind: StoreKind, warm: boolean): Promise<Phase> {
    const id = phaseNo++;
    const location = kind === 's3' ? `s3://bench/phase-${id}` : `file://${join(tmp, `store-${id}`)}`;
    const server = await startLocalTeacherServer({ model: MODEL, latencyMs });
    const store = openStore(location);
    const worker = await startWorker(location, temporal.address, temporal.namespace);
    try {
      const teacher = parseSpec({
        name: 'bench',
        data: { kind: 'demo' },
        teacher: { kind: 'openai', url: server.url, model: MODEL, concurrency: CONCURRENCY, timeoutSeconds: 60 },
      }).teacher;
      /** Runs the stage over `examples`, every call sent (none in the response cache). */
      const runStage = async (examples: Example[], workflowId: string) => {
        const count = examples.length;
        const cut = Math.ceil(count * 0.9);
        const [train, valid] = await Promise.all([
          store.putJsonl(examples.slice(0, cut)),
          store.putJsonl(examples.slice(cut)),
        ]);
        const input: TeacherStageInput = { task: 'demo', teacher, train, valid };
        const handle = await conn.client.workflow.start(teacherStage, {
          taskQueue: CPU_TASK_QUEUE,
          workflowId,
          args: [input],
        });
        const result = (await handle.result()) as PromptTeacherResult;
        if (result.total !== count || result.failed !== 0 || result.calls.sent !== count) {
          throw new Error(`phase ${id}: expected ${count} calls sent, got ${JSON.stringify(result.calls)}`);
        }
        return handle;
      };
      const examples = generateDemoTask({ n, seed: 1000 + id });
      if (warm) {
        // A small stage first, on this worker and server: what a fresh process pays once is not the stage's cost.
        // Its examples are others than the timed stage's, or the timed stage would find them in the response cache.
        const timed = new Set(examples.map((e) => e.input));
        const others = generateDemoTask({ n: 2 * CONCURRENCY, seed: 5000 + id }).filter((e) => !timed.has(e.input));
        await runStage(others.slice(0, CONCURRENCY), `bench-teacher-warmup-${id}-${Date.now()}`);
      }
      const cpuBefore = await cpuMs(worker.pid!);
      const steal = stealMeter();
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
      const handle = await runStage(examples, `bench-teacher-${id}-${Date.now()}`);
      const seconds = (performance.now() - started) / 1000;
      clearInterval(trace);
      const cpuMsPerCall = ((await cpuMs(worker.pid!)) - cpuBefore) / n;
      const peakRssMiB = await peakRss(worker.pid!);
      const p = {
        examples: n,
        seconds,
        callsPerSecond: n / seconds,
        peakRssMiB,
        cpuMsPerCall,
        stealShare: steal(),
        ...(await breakdown(handle)),
      };
      console.log(
        `${n} examples on ${kind}, latency ${latencyMs} ms, C=${CONCURRENCY}${warm ? ' (warm)' : ''}: ` +
          `${seconds.toFixed(1)} s, ${p.callsPerSecond.toFixed(1)} calls/s, worker ${cpuMsPerCall.toFixed(2)} ms CPU ` +
          `per call, peak RSS ${peakRssMiB.toFixed(0)} MiB; plan ${p.planMs.toFixed(0)} ms, ` +
          `shards ${p.shardsMs.toFixed(0)} ms, finish ${p.finishMs.toFixed(0)} ms; steal ${p.stealShare ?? 'unknown'}`
      );
      return p;
    } finally {
      await stop(worker);
      await store.close();
      await server.close();
    }
  }

  try {
    const figures: Record<string, unknown> = { concurrency: CONCURRENCY };
    const goals: Record<string, boolean> = {};
    if (parts.efficiency) {
      const eff = await phase(EFFICIENCY_EXAMPLES, LATENCY_MS, stores.efficiency, WARMUP);
      const fastEff = await phase(
        Math.round((EFFICIENCY_EXAMPLES * (LATENCY_MS / FAST_EFFICIENCY_LATENCY_MS)) / 2),
        FAST_EFFICIENCY_LATENCY_MS,
        stores.efficiency,
        WARMUP
      );
      const ideal = CONCURRENCY / (LATENCY_MS / 1000);
      const fastIdeal = CONCURRENCY / (FAST_EFFICIENCY_LATENCY_MS / 1000);
      const efficiency = round(eff.callsPerSecond / ideal, 4);
      const fast = round(fastEff.callsPerSecond / fastIdeal, 4);
      Object.assign(figures, {
        efficiency,
        [`efficiencyAt${FAST_EFFICIENCY_LATENCY_MS}ms`]: fast,
        latencyMs: LATENCY_MS,
        callsPerSecond: round(eff.callsPerSecond, 1),
        idealCallsPerSecond: ideal,
        efficiencyExamples: eff.examples,
        efficiencyStore: stores.efficiency,
        warm: WARMUP,
        workerCpuMsPerCall: {
          [`${LATENCY_MS}ms`]: round(eff.cpuMsPerCall, 3),
          [`${FAST_EFFICIENCY_LATENCY_MS}ms`]: round(fastEff.cpuMsPerCall, 3),
        },
        stealShare: { [`${LATENCY_MS}ms`]: eff.stealShare, [`${FAST_EFFICIENCY_LATENCY_MS}ms`]: fastEff.stealShare },
      });
      // The goals name 1 s and 250 ms: other latencies measure something else.
      if (LATENCY_MS === 1000) goals.efficiency = efficiency >= GOALS.efficiency;
      if (FAST_EFFICIENCY_LATENCY_MS === 250) goals.efficiencyAt250ms = fast >= GOALS.efficiencyAt250ms;
    }
    if (parts.rss) {
      const peakRssMiB: Record<string, Record<number, number>> = {};
      for (const kind of stores.rss) {
        const small = await phase(SMALL, FAST_LATENCY_MS, kind, false);
        const large = await phase(LARGE, FAST_LATENCY_MS, kind, false);
        const growth = round(large.peakRssMiB / small.peakRssMiB - 1, 4);
        const name = kind === 'fs' ? 'rssGrowth' : 'rssGrowthS3';
        figures[name] = growth;
        peakRssMiB[kind] = { [SMALL]: Math.round(small.peakRssMiB), [LARGE]: Math.round(large.peakRssMiB) };
        figures[kind === 'fs' ? 'fastCallsPerSecond' : 'fastCallsPerSecondS3'] = round(large.callsPerSecond, 1);
        if (SMALL === 10_000 && LARGE === 100_000) goals[name] = growth <= GOALS.rssGrowth;
      }
      figures.peakRssMiB = peakRssMiB;
    }
    figures.goals = goals;
    console.log(JSON.stringify(figures));
  } finally {
    await conn.close();
    await temporal.stop();
    await s3?.stop();
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Every phase's worker joins one Worker Deployment version. Left to derive its build id from the checkout, a worker
 * started after a commit or an edit made mid-bench is a new version that is not current, and the phase's stage
 * waits for a worker of the first version forever (measured: a 100k phase idle for 15 minutes). Within one bench
 * run each phase runs its own workflows, so sharing a version is safe.
 */
const BUILD_ID = process.env.STEPWISE_BUILD_ID ?? `bench-teacher-${process.pid}`;

async function startWorker(store: string, address: string, namespace: string): Promise<ChildProcess> {
  // BENCH_WORKER_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`) goes to the worker's node: where its time goes.
  const nodeArgs = (process.env.BENCH_WORKER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const worker = spawn(process.execPath, [...nodeArgs, join(ROOT, 'bin', 'stepwise.js'), 'worker', '--queue', 'cpu'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: address,
      TEMPORAL_NAMESPACE: namespace,
      STEPWISE_STORE: store,
      STEPWISE_BUILD_ID: BUILD_ID,
    },
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

/** CPU time (user + system) the process has used so far, in ms. */
async function cpuMs(pid: number): Promise<number> {
  // Fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 a second on Linux); the name before them may hold spaces.
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
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
