/**
 * The teacher stage at 100k examples (10k in the quick run) (short demo prompts, a fast local server): the whole stage on the real Temporal
 * dev server and the real S3 server, with its worker in a process of its own whose memory is sampled throughout.
 * Memory must be flat: a leak grows with the examples done, a working set does not.
 */
import { readFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import test from 'ava';
import type { TeacherStageInput } from '../contract';
import type { PromptTeacherResult } from '../contract';
import { generateDemoTask } from '../lib/data/demo-task';
import { parseSpec } from '../lib/pipeline/spec';
import { startLocalTeacherServer } from '../lib/teacher';
import type { ShardResponse } from '../lib/teacher/shard';
import { CPU_TASK_QUEUE } from '../contract';
import { teacherStage } from '../workflows';
import { faultMode } from './helpers/figures';
import { servicesForFile, startWorkerProcess } from './helpers/services';

/**
 * 100k examples in full mode (`STEPWISE_FAULTS=full`, as `npm run bench:faults` sets it), where a leak of a few hundred
 * bytes a call shows past the slack below; 10k in `npm test`, which must stay within its time budget (this file was its
 * longest pole at 40k, and still at 20k): enough for a leak of four kilobytes a call to show.
 */
const N = faultMode() === 'full' ? 100_000 : 10_000;
const MODEL = 'teacher-at-scale';
let worker: ChildProcess | undefined;
// Registered first, so it runs first: the worker process goes before the services it is connected to.
test.after.always(() => {
  worker?.kill('SIGKILL');
});
const services = servicesForFile({ workers: [] });

async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]);
}

test(`${N / 1000}k examples go through the whole stage with flat memory, continuing as new along the way`, async (t) => {
  t.timeout(15 * 60_000);
  const server = await startLocalTeacherServer({ model: MODEL, latencyMs: 1 });
  t.teardown(() => server.close());
  const examples = generateDemoTask({ n: N, seed: 31 });
  const cut = Math.ceil(N * 0.9);
  const [train, valid] = await Promise.all([
    services().store.putJsonl(examples.slice(0, cut)),
    services().store.putJsonl(examples.slice(cut)),
  ]);
  const teacher = parseSpec({
    name: 'teacher-scale',
    data: { kind: 'demo' },
    teacher: { kind: 'openai', url: server.url, model: MODEL, concurrency: 64, shardsPerRun: 40 },
  }).teacher;
  const input: TeacherStageInput = { task: 'demo', teacher, train, valid };
  // The worker logs its live heap (after a full collection) every second: the figure a leak shows in.
  const log: string[] = [];
  worker = await startWorkerProcess(services(), 'cpu', log, {
    env: { NODE_OPTIONS: '--expose-gc', STEPWISE_WORKER_MEMORY_LOG_SECONDS: '1' },
  });
  const pid = worker.pid!;
  const live: { done: number; mib: number }[] = [];
  worker.stdout!.on('data', (chunk: Buffer) => {
    for (const m of chunk.toString().matchAll(/heapLive (\d+) MiB/g)) {
      live.push({ done: server.counters().answered, mib: Number(m[1]) });
    }
  });

  const samples: { done: number; rss: number }[] = [];
  const handle = await services().client.workflow.start(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `teacher-scale-${Date.now()}`,
    args: [input],
  });
  const sampler = setInterval(() => {
    void rssKiB(pid).then(
      (rss) => samples.push({ done: server.counters().answered, rss }),
      () => undefined
    );
  }, 1000);
  let result: PromptTeacherResult;
  try {
    result = (await handle.result()) as PromptTeacherResult;
  } finally {
    clearInterval(sampler);
  }

  t.is(result.total, N);
  t.is(result.failed, 0);
  t.is(result.calls.sent, N);
  t.is(server.counters().answered, N);
  t.is(server.counters().repeatedAnswers, 0);
  let lines = 0;
  for await (const r of services().store.iterJsonl<ShardResponse>(result.responses)) {
    if (r.completion.length > 0 && r.error === undefined) lines++;
  }
  t.is(lines, N);

  // Flat memory: what the worker retains (its heap right after a full collection) is the same at the end as early
  // on; a leak of even a few hundred bytes a call would add tens of MB by the end. Medians, because a collection
  // that lands while 64 calls are in flight sees their garbage-to-be as live. RSS is logged for the record: it
  // follows how far V8 lets its heap grow between collections, not what is retained.
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const liveBetween = (from: number, to: number) =>
    median(live.filter((s) => s.done >= from * N && s.done < to * N).map((s) => s.mib));
  const rssBetween = (from: number, to: number) =>
    Math.max(...samples.filter((s) => s.done >= from * N && s.done < to * N).map((s) => s.rss)) / 1024;
  const early = liveBetween(0.1, 0.4);
  const late = liveBetween(0.7, 1.01);
  t.log(
    `worker live heap (median): ${early} MiB at 10-40% of the calls, ${late} MiB at 70-100%; ` +
      `peak RSS ${rssBetween(0.1, 0.4).toFixed(0)} / ${rssBetween(0.7, 1.01).toFixed(0)} MiB`
  );
  t.true(late <= early * 1.25 + 8, `live heap grew from ${early} to ${late} MiB`);
});
