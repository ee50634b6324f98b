/**
 * The teacher stage survives its workers: a CPU worker process SIGKILLed mid-shard is replaced and the shard resumes
 * from its journal with zero repeated calls, counted by the server; and a batch job keeps running at the provider
 * across a worker restart, polled on durable timers until it is collected. Real processes, the real Temporal dev
 * server, the real S3 server.
 */
import type { ChildProcess } from 'node:child_process';
import test from 'ava';
import type { TeacherStageInput } from '../contract';
import type { PromptTeacherResult } from '../contract';
import { parseCompletion } from '../lib/data/parse';
import { startLocalTeacherServer } from '../lib/teacher';
import type { ShardResponse } from '../lib/teacher/shard';
import { CPU_TASK_QUEUE } from '../contract';
import { teacherStage } from '../workflows';
import { recordFigures } from './helpers/figures';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { demoTeacherStage } from './helpers/teacher-stage';
import { journalledCalls } from './faults/harness';
import { waitFor } from './helpers/wait';

const MODEL = 'teacher-under-test';
const workers = new Set<ChildProcess>();
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => {
  for (const w of workers) w.kill('SIGKILL');
});
// No worker in this process: the workflow and its activities run only in the worker processes below.
const services = servicesForFile({ workers: [] });

/** The real CPU worker entrypoint as its own process. */
async function startCpuWorker(log: string[]): Promise<ChildProcess> {
  const worker = await startWorkerProcess(services(), 'cpu', log);
  workers.add(worker);
  worker.on('exit', () => workers.delete(worker));
  return worker;
}

async function killed(worker: ChildProcess): Promise<void> {
  const gone = new Promise((r) => worker.once('exit', r));
  worker.kill('SIGKILL');
  await gone;
}

/** Teacher calls journalled so far, over every shard. */
const journalled = () => journalledCalls(services().store);

function stageInput(n: number, seed: number, teacher: Record<string, unknown>): Promise<TeacherStageInput> {
  return demoTeacherStage(services().store, { n, seed, teacher, name: 'teacher-kill' });
}

test.serial(
  'a worker SIGKILLed mid-shard is replaced and the shard resumes from its journal: zero repeated calls',
  async (t) => {
    const server = await startLocalTeacherServer({ model: MODEL, latencyMs: 20 });
    t.teardown(() => server.close());
    const input = await stageInput(300, 21, {
      kind: 'openai',
      url: server.url,
      model: MODEL,
      concurrency: 8,
      shardSize: 300,
      heartbeatTimeoutSeconds: 5,
    });
    // After 100 answers the server holds every request: the worker dies with 8 calls in flight and 100 finished.
    server.setFaults({ holdAfter: 100 });
    const log: string[] = [];
    const first = await startCpuWorker(log);
    const handle = await services().client.workflow.start(teacherStage, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `teacher-kill-${Date.now()}`,
      args: [input],
    });
    await waitFor('the server to hold requests', () => (server.stats().held > 0 ? true : undefined));
    await waitFor('100 journalled calls', async () => ((await journalled()) >= 100 ? true : undefined));
    const heldAtKill = server.stats().held;
    await killed(first);
    server.release();

    await startCpuWorker(log);
    const result = (await handle.result()) as PromptTeacherResult;
    const stats = server.stats();
    t.is(result.total, 300);
    t.is(result.failed, 0);
    t.is(result.calls.resumed, 100);
    t.is(stats.answered, 300, 'each prompt answered once in all');
    t.true(
      Object.values(stats.answeredByPromptHash).every((n) => n === 1),
      'no prompt was answered twice'
    );
    t.is(stats.repeatedAnswers, 0);
    // The requests in flight at the kill (at most the concurrency) were sent again, as no client can avoid, but
    // none of them had been answered: the server did the work, and billed, once per prompt.
    const received = Object.values(stats.byPromptHash);
    t.true(heldAtKill > 0);
    t.true(received.filter((n) => n > 1).length <= 8);
    t.is(received.filter((n) => n > 2).length, 0);
    const responses = await services().store.getJsonl<ShardResponse>(result.responses);
    t.is(responses.length, 300);
    t.true(responses.every((r) => parseCompletion('demo', r.completion).ok));
    // By example id: each example's prompt (one sample each) answered by the server exactly once, none lost.
    const ids = new Set(responses.map((r) => r.id));
    const answeredTimes = responses.map((r) => stats.answeredByPromptHash[r.promptHash] ?? 0);
    const teacherCallsRepeated = answeredTimes.reduce((sum, n) => sum + Math.max(0, n - 1), 0);
    const examplesLost = 300 - ids.size + responses.filter((r) => r.error !== undefined || r.completion === '').length;
    t.is(teacherCallsRepeated, 0, 'teacher calls answered twice');
    t.is(examplesLost, 0);
    const survived = result.total === 300 && teacherCallsRepeated === 0 && examplesLost === 0;
    recordFigures('kill-teacher-shard', {
      faultsTried: 1,
      faultsSurvived: survived ? 1 : 0,
      teacherCallsRepeated,
      examplesLost,
    });
    for (const w of workers) await killed(w);
  }
);

test.serial('batch mode survives a worker restart: the batch runs on, is polled on timers and collected', async (t) => {
  // The provider takes 6 s over the batch; the worker is gone for part of it.
  const server = await startLocalTeacherServer({ model: MODEL, batchDelayMs: 6000 });
  t.teardown(() => server.close());
  const input = await stageInput(40, 22, {
    kind: 'openai',
    url: server.url,
    model: MODEL,
    mode: 'batch',
    batchPollSeconds: 1,
    shardSize: 20,
  });
  const log: string[] = [];
  const first = await startCpuWorker(log);
  const handle = await services().client.workflow.start(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `teacher-batch-${Date.now()}`,
    args: [input],
  });
  await waitFor('both batches submitted', async () => {
    const keys = await services().store.listKeys('teacher/batches/');
    return keys.length >= 2 ? true : undefined;
  });
  await killed(first);
  await new Promise((r) => setTimeout(r, 2000));
  await startCpuWorker(log);
  const result = (await handle.result()) as PromptTeacherResult;
  t.is(result.mode, 'batch');
  t.is(result.total, 40);
  t.is(result.failed, 0);
  t.is(server.stats().answered, 40, 'every call answered once, by the batches');
  t.true(Object.values(server.stats().answeredByPromptHash).every((n) => n === 1));
  const responses = await services().store.getJsonl<ShardResponse>(result.responses);
  t.true(responses.every((r) => parseCompletion('demo', r.completion).ok));
  // Timers, not a sleeping activity: the history shows the polls' timers.
  const history = await handle.fetchHistory();
  t.true((history.events ?? []).some((e) => e.timerFiredEventAttributes));

  // Both modes give the same artifacts: a direct run over the same examples (cache cold for a new model name
  // would differ, so reuse this one: every call is now cached) yields the same responses file.
  // The typed start checks the teacher override: only a calling teacher has a mode, and stageInput made an openai one.
  if (input.teacher.kind !== 'openai') throw new Error(`expected an openai teacher, got ${input.teacher.kind}`);
  const direct = await services().client.workflow.execute(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `teacher-direct-${Date.now()}`,
    args: [{ ...input, teacher: { ...input.teacher, mode: 'direct', shardSize: 40 } }],
  });
  const directResponses = await services().store.getJsonl<ShardResponse>((direct as PromptTeacherResult).responses);
  t.deepEqual(
    directResponses.map((r) => [r.id, r.completion, r.promptHash]),
    responses.map((r) => [r.id, r.completion, r.promptHash])
  );
  for (const w of workers) await killed(w);
});
