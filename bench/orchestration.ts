/**
 * Orchestration overhead per stage: the same six stages with near-zero work (a 40-example demo task, 2 training
 * steps), once through Temporal (dev server, real workers, the workflow) and once called directly in sequence.
 * Per stage, Temporal's time is the gap between consecutive activity completions in the workflow history;
 * the direct time is the wall time of the same activity function; `overheadMsPerStage` is the difference of their
 * medians. That difference carries the run-to-run spread of the two ~1.6 s GPU stages (a training child's start-up),
 * which is larger than the overhead itself, so `addedMsPerStage` also gives, per run, each stage's time less the time
 * its activities ran by the same history (paired within the run), with its median and min–max over the runs.
 * BENCH_RUNS (5) timed runs after one warm-up; BENCH_TIMELINE=1 prints the last run's history, and its teacher
 * child's, event by event with their times: where a stage's overhead goes. `stealShare`: the share of the machine's CPU
 * time its hypervisor gave other guests over the bench. `devDbSync`: how the dev server's SQLite commits reach the disk
 * (`STEPWISE_DEV_DB_SYNC`, infra/temporal.ts), which weighs on every stage. Last line: one JSON object.
 *
 * Where the rest goes, measured on a 2-vCPU AVX2 EPYC VM (medians 44-55 ms there, 16-26 on a 2-vCPU Zen 5 EPYC VM):
 * each workflow task takes 15-32 ms from its start to its completion, and a stage waits on one or two of them (the
 * teacher stage, a child workflow, on five). About 10 ms a stage of that is the SDK's promise hook in the workflow
 * thread (@temporalio/worker's vm-shared.js), which records a stack trace for every promise of workflow code to answer
 * the `__stack_trace` query: with it removed from the installed SDK by hand, alternated runs gave 44 and 41 ms against
 * 56 and 50. The SDK has no option to leave it out.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { temporal } from '@temporalio/proto';
import type { Client } from '@temporalio/client';
import { startTemporalDevServer } from '../infra/temporal';
import { connectTemporal, createPipelineWorkers, quietTemporalLogs } from '../workers/pipeline-worker';
import { createActivityDeps } from '../workers/deps';
import { createActivities } from '../activities';
import type { TeacherStageInput } from '../contract';
import type { PromptTeacherResult } from '../contract';
import { parseSpec, type PipelineSpecInput } from '../lib/pipeline/spec';
import { CPU_TASK_QUEUE, STAGES, type StageName } from '../contract';
import { distillationPipeline } from '../workflows';
import { median, round, spread, stealMeter } from './stats';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);

const spec: PipelineSpecInput = {
  name: 'bench-orchestration',
  data: { kind: 'demo', size: 40, seed: 1 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 2, batchSize: 4 },
  evaluate: { maxLength: 4, batchSize: 16 },
  // The six stages that do the work are what this bench times; the gate (reads and one small write) is left out.
  gate: { enabled: false },
};

/** The stages a run of `spec` executes. */
const TIMED = STAGES.filter((s) => s !== 'gate');

const ms = (t: temporal.api.history.v1.IHistoryEvent) => {
  const ts = t.eventTime!;
  return Number(ts.seconds) * 1000 + (ts.nanos ?? 0) / 1e6;
};

/** Per-stage wall time through Temporal, from the history: each stage ends at its activity's completion event. */
function stageTimes(history: temporal.api.history.v1.IHistory): Record<StageName, number> {
  const events = history.events ?? [];
  const scheduled = new Map<number, StageName>();
  const out: Partial<Record<StageName, number>> = {};
  let previousEnd = ms(events[0]);
  for (const e of events) {
    const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
    if (name) scheduled.set(Number(e.eventId), name as StageName);
    // The teacher stage is a child workflow (plan, shards, finish): timed from the parent's view, start to result.
    if (e.startChildWorkflowExecutionInitiatedEventAttributes) scheduled.set(Number(e.eventId), 'promptTeacher');
    const done = e.activityTaskCompletedEventAttributes;
    const child = e.childWorkflowExecutionCompletedEventAttributes;
    const from = done ? done.scheduledEventId : child?.initiatedEventId;
    if (from !== undefined && from !== null) {
      const stage = scheduled.get(Number(from))!;
      out[stage] = ms(e) - previousEnd;
      previousEnd = ms(e);
    }
  }
  return out as Record<StageName, number>;
}

/** The length of the union of some intervals: activities that overlap count once. */
function unionMs(intervals: [number, number][]): number {
  let total = 0;
  let end = -Infinity;
  for (const [a, b] of [...intervals].sort((x, y) => x[0] - y[0])) {
    if (b <= end) continue;
    total += b - Math.max(a, end);
    end = b;
  }
  return total;
}

/** Each activity's run in a history, started to completed, by activity type. */
function activityRuns(history: temporal.api.history.v1.IHistory): Map<string, [number, number][]> {
  const type = new Map<number, string>();
  const started = new Map<number, number>();
  const runs = new Map<string, [number, number][]>();
  for (const e of history.events ?? []) {
    const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
    if (name) type.set(Number(e.eventId), name);
    const start = e.activityTaskStartedEventAttributes;
    if (start) started.set(Number(start.scheduledEventId), ms(e));
    const done = e.activityTaskCompletedEventAttributes;
    if (done) {
      const id = Number(done.scheduledEventId);
      const name = type.get(id)!;
      if (!runs.has(name)) runs.set(name, []);
      runs.get(name)!.push([started.get(id)!, ms(e)]);
    }
  }
  return runs;
}

/**
 * Per stage, how long its activities themselves ran, from the history's started and completed events (the teacher
 * stage: its child's plan, shards and finish, overlaps counted once). The stage's time through Temporal less this is
 * what orchestration added around the work in the same run, free of the run-to-run spread of the work itself (a
 * training child's start-up varies by ±100 ms; the overhead being measured is tens). Started and completed are
 * written by the server, so the worker's own handling of the task is counted as work, not overhead.
 */
async function activityTimes(
  client: Client,
  history: temporal.api.history.v1.IHistory
): Promise<Record<StageName, number>> {
  const out: Partial<Record<StageName, number>> = {};
  for (const [name, runs] of activityRuns(history)) {
    if ((STAGES as readonly string[]).includes(name)) out[name as StageName] = unionMs(runs);
  }
  for (const e of history.events ?? []) {
    const child = e.childWorkflowExecutionStartedEventAttributes?.workflowExecution;
    if (!child?.workflowId) continue;
    const childHistory = await client.workflow.getHandle(child.workflowId, child.runId ?? undefined).fetchHistory();
    out.promptTeacher = unionMs([...activityRuns(childHistory).values()].flat());
  }
  return out as Record<StageName, number>;
}

/** Prints a history's events, each with its time since the first (BENCH_TIMELINE=1). */
async function printTimeline(client: Client, label: string, history: temporal.api.history.v1.IHistory) {
  const events = history.events ?? [];
  const names = new Map<number, string>();
  console.log(label);
  for (const e of events) {
    const type = e.activityTaskScheduledEventAttributes?.activityType?.name;
    if (type) names.set(Number(e.eventId), type);
    const of =
      e.activityTaskStartedEventAttributes?.scheduledEventId ??
      e.activityTaskCompletedEventAttributes?.scheduledEventId;
    const kind = temporal.api.enums.v1.EventType[Number(e.eventType)].replace('EVENT_TYPE_', '').toLowerCase();
    const name = type ?? (of ? names.get(Number(of)) : undefined) ?? '';
    console.log(`  ${(ms(e) - ms(events[0])).toFixed(1).padStart(8)} ms  ${kind} ${name}`);
  }
  for (const e of events) {
    const child = e.childWorkflowExecutionStartedEventAttributes?.workflowExecution;
    if (child?.workflowId) {
      const handle = client.workflow.getHandle(child.workflowId, child.runId ?? undefined);
      await printTimeline(client, `child ${child.workflowId}`, await handle.fetchHistory());
    }
  }
}

/**
 * The teacher stage's activities called in a row, as its workflow runs them with one shard in flight: the direct
 * baseline the child workflow is compared with.
 */
async function directTeacherStage(
  acts: ReturnType<typeof createActivities>,
  input: TeacherStageInput
): Promise<PromptTeacherResult> {
  const plan = await acts.planTeacher(input);
  const results: Awaited<ReturnType<typeof acts.teacherShard>>[] = [];
  for (let index = 0; index < plan.shards; index++) {
    results.push(
      await acts.teacherShard({ stage: input, stageId: 'bench-direct', plan: plan.plan, index, concurrency: 8 })
    );
  }
  const figures = await acts.finishTeacher({ plan: plan.plan });
  const sum = (f: (r: (typeof results)[number]) => number) => results.reduce((a, r) => a + f(r), 0);
  return {
    ...figures,
    usage: { promptTokens: sum((r) => r.usage.promptTokens), completionTokens: sum((r) => r.usage.completionTokens) },
    calls: {
      planned: plan.calls,
      sent: sum((r) => r.sent),
      resumed: sum((r) => r.resumed),
      cached: sum((r) => r.cached),
    },
    shards: plan.shards,
    mode: 'direct',
    samples: 1,
    teacher: plan.teacher,
  };
}

async function main() {
  quietTemporalLogs();
  const steal = stealMeter();
  const tmp = await mkdtemp(join(tmpdir(), 'stepwise-bench-'));
  const store = `file://${join(tmp, 'artifacts')}`;
  const server = await startTemporalDevServer({ stateDir: join(tmp, 'temporal') });
  const conn = await connectTemporal({ connectionOptions: { address: server.address }, namespace: server.namespace });
  const pipeline = await createPipelineWorkers({
    connection: conn.connection,
    client: conn.client,
    namespace: server.namespace,
    queues: ['cpu', 'gpu'],
    store,
  });
  const running = pipeline.run();
  const directDeps = createActivityDeps({ store });
  const direct = createActivities(directDeps);
  const parsed = parseSpec(spec);
  const env = new MockActivityEnvironment();

  const temporalRuns: Record<StageName, number>[] = [];
  const directRuns: Record<StageName, number>[] = [];
  const workRuns: Record<StageName, number>[] = [];
  try {
    for (let i = 0; i <= RUNS; i++) {
      // Run 0 warms both paths (teacher cache, tfjs load, workflow bundle) and is not counted.
      const handle = await conn.client.workflow.start(distillationPipeline, {
        taskQueue: CPU_TASK_QUEUE,
        workflowId: `bench-${Date.now()}-${i}`,
        args: [spec],
      });
      await handle.result();
      const history = await handle.fetchHistory();
      const viaTemporal = stageTimes(history);
      const work = await activityTimes(conn.client, history);
      if (i === RUNS && process.env.BENCH_TIMELINE) await printTimeline(conn.client, 'pipeline', history);

      const t: Partial<Record<StageName, number>> = {};
      const timed = async <T>(stage: StageName, fn: () => Promise<T>): Promise<T> => {
        const start = performance.now();
        const r = (await env.run(fn)) as T;
        t[stage] = performance.now() - start;
        return r;
      };
      const sample = await timed('sample', () => direct.sample(parsed));
      const teacher = await timed('promptTeacher', () =>
        directTeacherStage(direct, { task: 'demo', teacher: parsed.teacher, train: sample.train, valid: sample.valid })
      );
      const validation = await timed('validateRationales', () =>
        direct.validateRationales({
          task: 'demo',
          train: sample.train,
          valid: sample.valid,
          responses: teacher.responses,
        })
      );
      const training = await timed('trainStudent', () =>
        direct.trainStudent({ student: parsed.student, train: validation.train, valid: validation.valid })
      );
      const evaluation = await timed('evaluate', () =>
        direct.evaluate({
          task: 'demo',
          checkpoint: training.checkpoint,
          test: sample.test,
          evaluate: parsed.evaluate,
          backend: parsed.student.backend,
        })
      );
      await timed('registerModel', () =>
        direct.registerModel({
          spec: parsed,
          task: 'demo',
          workflowId: `bench-direct-${i}`,
          runId: `bench-direct-${i}`,
          sample,
          teacher,
          validation,
          training,
          evaluation,
        })
      );
      if (i > 0) {
        temporalRuns.push(viaTemporal);
        directRuns.push(t as Record<StageName, number>);
        workRuns.push(work);
      }
    }
  } finally {
    pipeline.shutdown();
    await running.catch(() => undefined);
    await pipeline.deps.close();
    await directDeps.close();
    await conn.close();
    await server.stop();
    await rm(tmp, { recursive: true, force: true });
  }

  const stages: Record<string, { temporalMs: number; directMs: number; overheadMs: number; addedMs: number }> = {};
  for (const stage of TIMED) {
    const temporalMs = median(temporalRuns.map((r) => r[stage]));
    const directMs = median(directRuns.map((r) => r[stage]));
    const addedMs = median(temporalRuns.map((r, i) => r[stage] - workRuns[i][stage]));
    stages[stage] = {
      temporalMs: round(temporalMs),
      directMs: round(directMs),
      overheadMs: round(temporalMs - directMs),
      addedMs: round(addedMs),
    };
    console.log(
      `${stage.padEnd(20)} temporal ${temporalMs.toFixed(1).padStart(8)} ms   direct ${directMs.toFixed(1).padStart(8)} ms` +
        `   added around the work ${addedMs.toFixed(1).padStart(6)} ms`
    );
  }
  const totalTemporal = TIMED.reduce((s, st) => s + stages[st].temporalMs, 0);
  const totalDirect = TIMED.reduce((s, st) => s + stages[st].directMs, 0);
  const overheadMsPerStage = (totalTemporal - totalDirect) / TIMED.length;
  // Per run, what orchestration added around the activities of all six stages, per stage: paired within the run.
  const addedPerRun = temporalRuns.map(
    (r, i) => TIMED.reduce((sum, st) => sum + r[st] - workRuns[i][st], 0) / TIMED.length
  );
  console.log(
    JSON.stringify({
      bench: 'orchestration',
      runs: RUNS,
      overheadMsPerStage: round(overheadMsPerStage),
      addedMsPerStage: spread(addedPerRun),
      ratio: round(totalTemporal / totalDirect, 3),
      totalTemporalMs: round(totalTemporal),
      totalDirectMs: round(totalDirect),
      stages,
      // The share of the machine's CPU time its hypervisor gave other guests over the bench: the worker, the server
      // and the client share two cores, so a neighbour's burst lands on the timings.
      stealShare: steal(),
      devDbSync: server.dbSync,
    })
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
