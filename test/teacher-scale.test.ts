/**
 * The teacher stage at 100k examples (short demo prompts, a fast local server): the whole stage on the real Temporal
 * dev server and the real S3 server, with its worker in a process of its own whose memory is sampled throughout.
 * Memory must be flat: a leak grows with the examples done, a working set does not.
 */
import { readFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import test from 'ava';
import type { TeacherStageInput } from '../activities/teacher-stage';
import type { PromptTeacherResult } from '../activities/types';
import { generateDemoTask } from '../lib/data/demo-task';
import { parseSpec } from '../lib/pipeline/spec';
import { startLocalTeacherServer } from '../lib/teacher';
import type { ShardResponse } from '../lib/teacher/shard';
import { CPU_TASK_QUEUE } from '../workflows/definitions';
import { startServices, startWorkerProcess, type Services } from './helpers/services';

const N = 100_000;
const MODEL = 'teacher-at-scale';
let services: Services;
let worker: ChildProcess | undefined;

test.before(async () => {
  services = await startServices();
});

test.after.always(async () => {
  worker?.kill('SIGKILL');
  await services?.stop();
});

async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]);
}

test('100k examples go through the whole stage with flat memory, continuing as new along the way', async (t) => {
  t.timeout(15 * 60_000);
  const server = await startLocalTeacherServer({ model: MODEL, latencyMs: 1 });
  t.teardown(() => server.close());
  const examples = generateDemoTask({ n: N, seed: 31 });
  const cut = Math.ceil(N * 0.9);
  const [train, valid] = await Promise.all([
    services.store.putJsonl(examples.slice(0, cut)),
    services.store.putJsonl(examples.slice(cut)),
  ]);
  const teacher = parseSpec({
    name: 'teacher-scale',
    data: { kind: 'demo' },
    teacher: { kind: 'openai', url: server.url, model: MODEL, concurrency: 64, shardsPerRun: 40 },
  }).teacher;
  const input: TeacherStageInput = { task: 'demo', teacher, train, valid };
  worker = await startWorkerProcess(services, 'cpu', []);
  const pid = worker.pid!;

  const samples: { done: number; rss: number }[] = [];
  const handle = await services.client.workflow.start('teacherStage', {
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
  for await (const r of services.store.iterJsonl<ShardResponse>(result.responses)) {
    if (r.completion.length > 0 && r.error === undefined) lines++;
  }
  t.is(lines, N);

  // Peak resident memory over the last half of the calls against the first 10-50% (after start-up): a leak of even
  // a few hundred bytes per call would show as tens of MB here.
  const peak = (from: number, to: number) =>
    Math.max(...samples.filter((s) => s.done >= from * N && s.done < to * N).map((s) => s.rss));
  const early = peak(0.1, 0.5);
  const late = peak(0.5, 1.01);
  t.log(`worker peak RSS: ${(early / 1024).toFixed(0)} MiB at 10-50%, ${(late / 1024).toFixed(0)} MiB at 50-100%`);
  t.true(late <= early * 1.1, `peak RSS grew from ${early} to ${late} KiB`);
});
