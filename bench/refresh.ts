/**
 * What an incremental refresh saves: a scheduled pipeline's first run, then a refresh after 10% new examples, through
 * a real Temporal Schedule on the dev server, versitygw and in-process workers. The teacher is our local
 * OpenAI-compatible server with a fixed latency per call (a real teacher's seconds, scaled down); the refresh warm-starts
 * from the champion with `warmStartSteps`. Also a third firing on unchanged data, which should end in seconds.
 * Figures: teacher calls, training steps and wall time of each run. Last line: one JSON object.
 */
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import type { PipelineResult } from '../contract';
import { startTemporalDevServer } from '../infra/temporal';
import { ensureBucket, startS3Server } from '../infra/s3-server';
import { generateDemoTask } from '../lib/data/demo-task';
import { parseSpec, type PipelineSpecInput } from '../lib/pipeline/spec';
import { getVersion } from '../lib/registry/registry';
import { openStore } from '../lib/store';
import { startLocalTeacherServer } from '../lib/teacher/local-server';
import { connectTemporal, createPipelineWorkers, quietTemporalLogs } from '../workers/pipeline-worker';
import { devServerSearchAttributes } from '../workers/search-attributes';
import { memoOf, pipelineAction } from '../cli/shared/schedules';

const TRAIN = Number(process.env.BENCH_TRAIN ?? 400);
const TEST = 100;
const NEW = Math.round(TRAIN / 10);
const STEPS = Number(process.env.BENCH_STEPS ?? 300);
const WARM_STEPS = Number(process.env.BENCH_WARM_STEPS ?? 100);
const TEACHER_LATENCY_MS = Number(process.env.BENCH_TEACHER_LATENCY_MS ?? 250);

const toJsonl = (rows: { input: string; label: string }[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

interface RunFigures {
  workflowId: string;
  teacherCalls: number;
  trainingSteps: number;
  wallMs: number;
  version: number;
  unchanged: boolean;
}

async function main() {
  quietTemporalLogs();
  const tmp = await mkdtemp(join(tmpdir(), 'stepwise-bench-refresh-'));
  process.env.STEPWISE_DATA_ROOTS = [process.cwd(), tmp].join(delimiter);
  const [temporal, s3, teacher] = await Promise.all([
    startTemporalDevServer({ stateDir: join(tmp, 'temporal'), searchAttributes: devServerSearchAttributes() }),
    startS3Server({ dataDir: join(tmp, 's3') }),
    startLocalTeacherServer({ model: 'bench-teacher', latencyMs: TEACHER_LATENCY_MS }),
  ]);
  await ensureBucket(s3, 'bench');
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: s3.accessKey,
    AWS_SECRET_ACCESS_KEY: s3.secretKey,
    AWS_ENDPOINT_URL_S3: s3.endpoint,
    AWS_REGION: s3.region,
  });
  const storeLocation = 's3://bench/refresh';
  const conn = await connectTemporal({
    connectionOptions: { address: temporal.address },
    namespace: temporal.namespace,
  });
  const pipeline = await createPipelineWorkers({
    connection: conn.connection,
    client: conn.client,
    namespace: temporal.namespace,
    queues: ['cpu', 'gpu'],
    store: storeLocation,
  });
  const running = pipeline.run();
  try {
    const all = generateDemoTask({ n: TRAIN + NEW + TEST, seed: 21 }).map((e) => ({ input: e.input, label: e.label }));
    const train = join(tmp, 'train.jsonl');
    const test = join(tmp, 'test.jsonl');
    await writeFile(train, toJsonl(all.slice(0, TRAIN)));
    await writeFile(test, toJsonl(all.slice(TRAIN + NEW)));
    const input: PipelineSpecInput = {
      name: 'bench-refresh',
      data: { kind: 'jsonl', train, test },
      teacher: { kind: 'openai', url: teacher.url, model: 'bench-teacher' },
      student: { preset: 'tiny', steps: STEPS, batchSize: 16, warmStart: 'champion', warmStartSteps: WARM_STEPS },
      gate: { firstVersion: 'always' },
    };
    const spec = parseSpec(input);
    // Fires only when triggered (a year apart otherwise): each run is timed from its trigger to its result.
    const handle = await conn.client.schedule.create({
      scheduleId: 'bench-refresh',
      spec: { intervals: [{ every: '365 days' }] },
      action: pipelineAction('bench-refresh', spec, true),
      memo: { stepwise: memoOf(spec) },
      policies: { catchupWindow: '1 hour' },
    });
    const store = openStore(storeLocation);
    const fire = async (label: string): Promise<RunFigures> => {
      const callsBefore = teacher.counters().requests;
      const seen = new Set((await handle.describe()).info.recentActions.map((a) => a.action.workflow.workflowId));
      // A scheduled run's workflow id ends with its action time in whole seconds: a second trigger within the same
      // second as the last action would name the same workflow and start nothing.
      await new Promise((r) => setTimeout(r, 1100));
      const started = Date.now();
      // The previous run has finished, but the schedule learns that asynchronously: under its `skip` policy a
      // trigger this soon after could be skipped as an overlap, so this one allows it.
      await handle.trigger(ScheduleOverlapPolicy.ALLOW_ALL);
      const workflowId = await newAction(handle, seen);
      const result = (await conn.client.workflow.getHandle(workflowId).result()) as PipelineResult;
      const wallMs = Date.now() - started;
      const version = await getVersion(store, spec.name, result.version);
      const figures: RunFigures = {
        workflowId,
        teacherCalls: teacher.counters().requests - callsBefore,
        trainingSteps: result.unchanged ? 0 : (version?.lineage.training.steps ?? NaN),
        wallMs,
        version: result.version,
        unchanged: Boolean(result.unchanged),
      };
      console.log(
        `${label}: ${figures.teacherCalls} teacher calls, ${figures.trainingSteps} training steps, ` +
          `${(wallMs / 1000).toFixed(1)} s wall${figures.unchanged ? ' (unchanged)' : ''} → v${figures.version}`
      );
      return figures;
    };
    const first = await fire(`first run (${TRAIN} train examples)`);
    const unchanged = await fire('refresh, same data');
    await appendFile(train, toJsonl(all.slice(TRAIN, TRAIN + NEW)));
    const refresh = await fire(`refresh after ${NEW} new examples (10%)`);
    await handle.delete();
    console.log(
      JSON.stringify({
        firstTeacherCalls: first.teacherCalls,
        refreshTeacherCalls: refresh.teacherCalls,
        refreshWallRatio: Number((refresh.wallMs / first.wallMs).toFixed(3)),
        firstTrainingSteps: first.trainingSteps,
        refreshTrainingSteps: refresh.trainingSteps,
        firstWallMs: first.wallMs,
        refreshWallMs: refresh.wallMs,
        unchangedTeacherCalls: unchanged.teacherCalls,
        unchangedWallMs: unchanged.wallMs,
        teacherLatencyMs: TEACHER_LATENCY_MS,
      })
    );
  } finally {
    pipeline.shutdown();
    await running.catch(() => undefined);
    await pipeline.deps.close();
    await conn.close();
    await Promise.all([temporal.stop(), s3.stop(), teacher.close()]);
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The workflow id of the schedule's newest action not in `seen`. */
async function newAction(handle: ReturnType<Client['schedule']['getHandle']>, seen: Set<string>): Promise<string> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const found = (await handle.describe()).info.recentActions
      .map((a) => a.action.workflow.workflowId)
      .find((id) => !seen.has(id));
    if (found) return found;
    if (Date.now() > deadline) throw new Error('the triggered action did not start within a minute');
    await new Promise((r) => setTimeout(r, 200));
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
