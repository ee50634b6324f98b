/**
 * Load: many pipelines started at once against one CPU worker process and one GPU worker process. Every run
 * completes with its one registry version; the GPU worker never runs more student processes than its one activity
 * slot allows (the others' training waits in the task queue, not in the worker's memory); and the workers' peak
 * memory stays bounded, reported from the kernel's high-water mark (VmHWM).
 */
import { readFileSync } from 'node:fs';
import test from 'ava';
import type { WorkflowHandle } from '@temporalio/client';
import { CPU_TASK_QUEUE, type PipelineResult } from '../../contract';
import { distillationPipeline } from '../../workflows';
import type { PipelineSpecInput } from '../../lib/pipeline/spec';
import { getVersion, listVersions } from '../../lib/registry/registry';
import { faultMode, recordFigures } from '../helpers/figures';
import { trainingChildren } from '../helpers/processes';
import { servicesForFile } from '../helpers/services';
import { WorkerProcesses } from './harness';

/** Quick mode keeps to three: enough for runs to queue behind the one GPU slot, in about a minute. */
const PIPELINES = faultMode() === 'full' ? 20 : 3;
/** The GPU worker's activity slots (workers/pipeline-worker.ts): one job saturates a GPU. */
const GPU_SLOTS = 1;
/**
 * Peak resident memory allowed of each worker process and of each student process, in MiB. A worker holds the Node
 * runtime, the Temporal core, the SDK's workflow sandboxes (the CPU worker) and one stage's data at a time: measured
 * 450 MiB (CPU worker) and 155 MiB (GPU worker) with three runs, 540 and 155 MiB with twenty. The bound is about twice
 * that, so it fails on memory that grows with the number of runs (every run's data held at once), not on noise.
 */
const WORKER_LIMIT_MIB = 1024;
/** A student process loads TensorFlow and one tiny model: measured 565 MiB; one at a time, whatever the load. */
const STUDENT_LIMIT_MIB = 1536;

const workers = new WorkerProcesses(() => services());
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => workers.killAll());
const services = servicesForFile({ workers: [] });

/** A `/proc/<pid>/status` field in MiB (VmHWM: peak resident set; VmRSS: resident now); undefined once it exited. */
function memoryMib(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) / 1024;
  } catch {
    return undefined;
  }
}

/** PENDING_ACTIVITY_STATE_SCHEDULED: an activity waiting in its task queue for a worker slot. */
const SCHEDULED = 1;

/** How many runs have a GPU stage waiting in the queue right now. */
async function waitingForGpu(handles: WorkflowHandle[]): Promise<number> {
  const described = await Promise.all(handles.map((h) => h.describe().catch(() => undefined)));
  return described.filter((d) =>
    d?.raw.pendingActivities?.some(
      (a) =>
        (a.activityType?.name === 'trainStudent' || a.activityType?.name === 'evaluate') &&
        Number(a.state) === SCHEDULED
    )
  ).length;
}

/** While `until` is pending: the GPU worker's student processes (count and peak RSS), and the runs queued for it. */
function watchGpu(gpuPid: number, handles: WorkflowHandle[]) {
  const seen = { maxStudents: 0, studentPeakMib: 0, maxWaiting: 0, samples: 0 };
  let stopped = false;
  const students = (async () => {
    while (!stopped) {
      const children = trainingChildren(gpuPid);
      seen.maxStudents = Math.max(seen.maxStudents, children.length);
      for (const pid of children) seen.studentPeakMib = Math.max(seen.studentPeakMib, memoryMib(pid, 'VmHWM') ?? 0);
      seen.samples += 1;
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  const queue = (async () => {
    while (!stopped) {
      seen.maxWaiting = Math.max(seen.maxWaiting, await waitingForGpu(handles));
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return {
    seen,
    stop: async () => {
      stopped = true;
      await Promise.all([students, queue]);
    },
  };
}

test(`${PIPELINES} pipelines started at once against one CPU and one GPU worker all complete, in bounded memory, queued`, async (t) => {
  t.timeout(PIPELINES * 60_000);
  const [cpu, gpu] = await Promise.all([workers.start('cpu'), workers.start('gpu')]);
  const name = `load-${PIPELINES}`;
  const spec = (i: number): PipelineSpecInput => ({
    name,
    data: { kind: 'demo', size: 40, seed: 100 + i },
    teacher: { kind: 'scripted' },
    student: { preset: 'tiny', steps: 10, batchSize: 8, seed: i, checkpointEvery: 5 },
  });
  const started = Date.now();
  const handles = await Promise.all(
    Array.from({ length: PIPELINES }, (_, i) =>
      services().client.workflow.start(distillationPipeline, {
        taskQueue: CPU_TASK_QUEUE,
        workflowId: `load-${i}-${started}`,
        args: [spec(i)],
      })
    )
  );
  const watch = watchGpu(gpu.pid!, handles);
  const outcomes = await Promise.allSettled(handles.map((h) => h.result() as Promise<PipelineResult>));
  await watch.stop();
  const elapsed = (Date.now() - started) / 1000;
  const peak = { cpu: memoryMib(cpu.pid!, 'VmHWM') ?? NaN, gpu: memoryMib(gpu.pid!, 'VmHWM') ?? NaN };
  const { seen } = watch;
  t.log(
    `${PIPELINES} runs in ${elapsed.toFixed(0)} s; peak RSS: CPU worker ${peak.cpu.toFixed(0)} MiB, GPU worker ` +
      `${peak.gpu.toFixed(0)} MiB, student process ${seen.studentPeakMib.toFixed(0)} MiB; at most ${seen.maxStudents} ` +
      `student process(es) at once (${seen.samples} samples); up to ${seen.maxWaiting} runs queued for the GPU`
  );

  const completed = outcomes.filter((o) => o.status === 'fulfilled').length;
  const versionsByRun = new Map<string, number>();
  for (const version of await listVersions(services().store, name)) {
    const record = await getVersion(services().store, name, version);
    if (record) versionsByRun.set(record.lineage.workflowId, (versionsByRun.get(record.lineage.workflowId) ?? 0) + 1);
  }
  const duplicates = [...versionsByRun.values()].reduce((sum, n) => sum + n - 1, 0);
  recordFigures(`load ${PIPELINES} pipelines`, {
    faultsTried: 1,
    faultsSurvived: completed === PIPELINES ? 1 : 0,
    registryDuplicates: duplicates,
  });

  for (const o of outcomes) if (o.status === 'rejected') t.log(`a run failed: ${String(o.reason)}\n${workers.tail()}`);
  t.is(completed, PIPELINES, 'every run completed');
  t.deepEqual(
    handles.map((h) => versionsByRun.get(h.workflowId) ?? 0),
    handles.map(() => 1),
    'exactly one registry version per run'
  );
  // The queue did the waiting: runs sat in the GPU queue while the one slot was busy, never a second student.
  t.true(seen.maxStudents >= 1 && seen.maxStudents <= GPU_SLOTS, `${seen.maxStudents} student processes at once`);
  t.true(seen.maxWaiting >= 1, 'some run waited in the queue for the GPU worker');
  t.true(peak.cpu < WORKER_LIMIT_MIB, `CPU worker peak RSS ${peak.cpu} MiB`);
  t.true(peak.gpu < WORKER_LIMIT_MIB, `GPU worker peak RSS ${peak.gpu} MiB`);
  t.true(seen.studentPeakMib < STUDENT_LIMIT_MIB, `student process peak RSS ${seen.studentPeakMib} MiB`);
});
