/**
 * New code under running pipelines, on the real dev server with real `stepwise worker` processes: a run started on
 * build A keeps running on A (its workflow tasks, its training and its evaluation on A's GPU worker) after
 * `stepwise deploy set-current B`, a new run goes to B, and A's workers then drain and stop without touching B's run;
 * the teacher stage continues as new onto the build made current while it runs; `stepwise replay` passes on the
 * cluster's histories and fails against a reordered pipeline; `stepwise deploy` refuses bad input with exit 2.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import type { WorkflowHandle } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import { CPU_TASK_QUEUE, type PromptTeacherResult, type TeacherStageInput } from '../contract';
import { distillationPipeline, teacherStage } from '../workflows';
import { generateDemoTask } from '../lib/data/demo-task';
import { parseSpec, type PipelineSpecInput } from '../lib/pipeline/spec';
import { startLocalTeacherServer } from '../lib/teacher';
import {
  buildIdFromCodeVersion,
  buildIdProblem,
  checkDeploymentName,
  describeDeployment,
  describeRoutingWork,
  STALL_AFTER_SECONDS,
} from '../workers/versioning';
import { InputError } from '../lib/errors';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { killGroup, trainingChildren } from './helpers/processes';
import { waitFor } from './helpers/wait';

const BIN = join(__dirname, '..', 'bin', 'stepwise.js');
const DEPLOYMENT = 'stepwise';

const workers = new Set<ChildProcess>();
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => {
  for (const w of workers) killGroup(w, 'SIGKILL');
});
const services = servicesForFile({ workers: [] });

/** Both queues' workers of one build, as separate `stepwise worker` processes with versioning on. */
async function startBuild(buildId: string, log: string[]): Promise<{ cpu: ChildProcess; gpu: ChildProcess }> {
  const env = { STEPWISE_WORKER_VERSIONING: 'on', STEPWISE_BUILD_ID: buildId };
  const [cpu, gpu] = await Promise.all(
    (['cpu', 'gpu'] as const).map((queue) => startWorkerProcess(services(), queue, log, { detached: true, env }))
  );
  for (const w of [cpu, gpu]) {
    workers.add(w);
    w.on('exit', () => workers.delete(w));
  }
  return { cpu, gpu };
}

/** The `stepwise` CLI against the test's dev server; never throws, so exit codes can be asserted. */
function stepwise(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = {
    ...process.env,
    TEMPORAL_ADDRESS: services().temporal.address,
    TEMPORAL_NAMESPACE: services().temporal.namespace,
    STEPWISE_DEPLOYMENT_NAME: DEPLOYMENT,
  };
  return new Promise((resolve) =>
    execFile(process.execPath, [BIN, ...args], { env, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr })
    )
  );
}

const jsonLines = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** The build of every worker that completed a workflow task of this run, in order, deduplicated. */
async function workflowTaskBuilds(handle: WorkflowHandle, runId?: string): Promise<string[]> {
  const history = await services().client.workflow.getHandle(handle.workflowId, runId).fetchHistory();
  const builds = (history.events ?? []).flatMap((e: HistoryEvent) => {
    const version = e.workflowTaskCompletedEventAttributes?.deploymentVersion;
    return version ? [version.buildId ?? ''] : [];
  });
  return [...new Set(builds)];
}

/** The identity of the worker that ran each activity of the run, by activity type (the last attempt's). */
async function activityWorkers(handle: WorkflowHandle): Promise<Map<string, string>> {
  const events = (await handle.fetchHistory()).events ?? [];
  const typeOf = new Map<number, string>();
  const ran = new Map<string, string>();
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) typeOf.set(Number(e.eventId), scheduled.activityType?.name ?? '');
    const started = e.activityTaskStartedEventAttributes;
    if (started) ran.set(typeOf.get(Number(started.scheduledEventId)) ?? '', started.identity ?? '');
  }
  return ran;
}

/** The pinned build and behaviour Temporal reports for a run. */
async function versioningOf(handle: WorkflowHandle) {
  const info = (await handle.describe()).raw.workflowExecutionInfo?.versioningInfo;
  return { buildId: info?.deploymentVersion?.buildId, behavior: info?.behavior };
}

const PINNED = 1; // temporal.api.enums.v1.VersioningBehavior.VERSIONING_BEHAVIOR_PINNED

// A run whose training the test holds (its child process stopped) while build B's workers start and the CLI switches,
// however busy the machine: the worker keeps heartbeating for a stopped child, and the timeout leaves room.
const slowSpec: PipelineSpecInput = {
  name: 'versioning-slow',
  data: { kind: 'demo', size: 120, seed: 11 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 120, batchSize: 16, checkpointEvery: 50, heartbeatTimeoutSeconds: 300 },
};
const quickSpec: PipelineSpecInput = {
  name: 'versioning-quick',
  data: { kind: 'demo', size: 120, seed: 12 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 20, batchSize: 16 },
};

test.serial(
  "a run in flight finishes on build A after B is made current, a new run goes to B, and A's workers drain and stop",
  async (t) => {
    t.timeout(900_000);
    const { client } = services();
    const log: string[] = [];
    const a = await startBuild('A', log);
    // The first versioned worker of a deployment without a current version makes its own build current.
    t.is(
      await waitFor('build A to become current', async () => (await describeDeployment(client, DEPLOYMENT))?.current),
      'A'
    );
    await waitFor('the bootstrap line', async () => (/made build A current/.test(log.join('')) ? true : undefined));

    const slow = await client.workflow.start(distillationPipeline, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `versioning-slow-${Date.now()}`,
      args: [slowSpec],
    });
    const started = Date.now();
    // Hold A's training where it is: stop its training child until B is current.
    const [trainer] = await waitFor('a training child on A', async () => {
      const children = trainingChildren(a.gpu.pid!);
      return children.length ? children : undefined;
    });
    process.kill(trainer, 'SIGSTOP');
    t.teardown(() => {
      try {
        process.kill(trainer, 'SIGCONT');
      } catch {
        // already gone
      }
    });
    // B's workers start while A's run is under way, as a rollout does; they join without taking new runs.
    const b = await startBuild('B', log);
    await waitFor('B to join', async () =>
      /build B joined deployment stepwise, whose current version is A/.test(log.join('')) ? true : undefined
    );
    await waitFor('the slow run to train', async () => {
      const { raw } = await slow.describe();
      return raw.pendingActivities?.some((p) => p.activityType?.name === 'trainStudent') ? true : undefined;
    });
    // The server pushes the change to every task queue after answering; on a loaded machine that has taken over 30 s
    // (the default wait), so this waits longer: "a new run goes to B" holds only once the command says propagated.
    const switchedAt = Date.now();
    const switched = await stepwise(['deploy', 'set-current', 'B', '--json', '--wait', '300']);
    t.log(`set-current B returned after ${((Date.now() - switchedAt) / 1000).toFixed(1)} s`);
    t.is(switched.code, 0, switched.stderr);
    t.like(
      jsonLines(switched.stdout).at(-1),
      { deploymentName: DEPLOYMENT, current: 'B', previous: 'A', propagated: true },
      switched.stderr
    );
    const { raw: atSwitch } = await slow.describe();
    t.true(
      atSwitch.pendingActivities?.some((p) => p.activityType?.name === 'trainStudent') ?? false,
      'the slow run was still training when B became current (make its training longer if this fails)'
    );
    t.log(`switched to B ${((Date.now() - started) / 1000).toFixed(1)} s after the slow run started`);
    process.kill(trainer, 'SIGCONT');

    const fresh = await client.workflow.start(distillationPipeline, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `versioning-quick-${Date.now()}`,
      args: [quickSpec],
    });
    const slowResult = await slow.result();
    t.like(slowResult, { name: 'versioning-slow', version: 1 });
    t.log(`the slow run finished ${((Date.now() - started) / 1000).toFixed(1)} s after it started`);

    // A's workers drain: the runs pinned to A are done, so SIGTERM stops them cleanly while B's run goes on.
    const exits = [a.cpu, a.gpu].map((w) => new Promise<number | null>((r) => w.once('exit', (code) => r(code))));
    for (const w of [a.cpu, a.gpu]) w.kill('SIGTERM');
    t.deepEqual(await Promise.all(exits), [0, 0], log.join('').slice(-4000));
    await fresh.result();

    // The slow run: pinned to A, every workflow task on A, and the evaluation scheduled after the switch ran on A's
    // GPU worker (the worker identity is `<pid>@<host>`).
    t.deepEqual(await versioningOf(slow), { buildId: 'A', behavior: PINNED });
    t.deepEqual(await workflowTaskBuilds(slow), ['A']);
    const slowActivities = await activityWorkers(slow);
    t.regex(slowActivities.get('trainStudent') ?? '', new RegExp(`^${a.gpu.pid}@`));
    t.regex(slowActivities.get('evaluate') ?? '', new RegExp(`^${a.gpu.pid}@`));
    // Its teacher stage, a child workflow started before the switch, stayed on A with its parent.
    t.deepEqual(await workflowTaskBuilds(client.workflow.getHandle(`${slow.workflowId}/teacher`)), ['A']);
    // The new run: B from its first workflow task, its training on B's GPU worker.
    t.deepEqual(await versioningOf(fresh), { buildId: 'B', behavior: PINNED });
    t.deepEqual(await workflowTaskBuilds(fresh), ['B']);
    t.regex((await activityWorkers(fresh)).get('trainStudent') ?? '', new RegExp(`^${b.gpu.pid}@`));

    const status = await stepwise(['deploy', 'status', '--json']);
    t.is(status.code, 0, status.stderr);
    const shown = jsonLines(status.stdout).at(-1) as {
      current: string;
      versions: Array<{ buildId: string; status: string }>;
    };
    t.is(shown.current, 'B');
    t.true(['draining', 'drained', 'inactive'].includes(shown.versions.find((v) => v.buildId === 'A')?.status ?? ''));
  }
);

test.serial('the teacher stage continues as new onto the build made current while it runs', async (t) => {
  t.timeout(600_000);
  const { client, store } = services();
  const server = await startLocalTeacherServer({ model: 'versioning-teacher' });
  t.teardown(() => server.close());
  const examples = generateDemoTask({ n: 30, seed: 13 });
  const [train, valid] = await Promise.all([store.putJsonl(examples.slice(0, 20)), store.putJsonl(examples.slice(20))]);
  const spec = parseSpec({
    name: 'versioning-teacher',
    data: { kind: 'demo' },
    // Shards of 5 one at a time, and no continue-as-new for size: only the version change makes the stage hand over.
    teacher: {
      kind: 'openai',
      url: server.url,
      model: 'versioning-teacher',
      shardSize: 5,
      parallelShards: 1,
      concurrency: 1,
      shardsPerRun: 100,
    },
  });
  const input: TeacherStageInput = { task: 'demo', teacher: spec.teacher, train, valid };
  // B is current (the previous test): the stage starts there and its first shard stops at the server's hold.
  server.holdAfter(2);
  const handle = await client.workflow.start(teacherStage, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `versioning-teacher-${Date.now()}`,
    args: [input],
  });
  await waitFor('a held teacher call', async () => (server.stats().held > 0 ? true : undefined));
  const log: string[] = [];
  await startBuild('C', log);
  await waitFor('C to join', async () =>
    (await describeDeployment(client, DEPLOYMENT))?.versions.some((v) => v.buildId === 'C') ? true : undefined
  );
  // Released only once C's routing has reached the queues, so the stage's next workflow task is told of the change.
  const switched = await stepwise(['deploy', 'set-current', 'C', '--json', '--wait', '300']);
  t.is(switched.code, 0, switched.stderr);
  t.like(jsonLines(switched.stdout).at(-1), { current: 'C', propagated: true }, switched.stderr);
  server.release();
  const result = (await handle.result()) as PromptTeacherResult;
  t.is(result.total, 30);
  t.is(result.failed, 0);

  // Every run of the chain, oldest first: the first on B, then, after it handed over, on C.
  const chain: Array<{ runId: string; startTime: Date }> = [];
  for await (const info of client.workflow.list({ query: `WorkflowId = '${handle.workflowId}'` })) chain.push(info);
  const runs = chain.sort((x, y) => x.startTime.getTime() - y.startTime.getTime()).map((r) => r.runId);
  // Two runs: with room for 100 shards a run, only the version change made the first one hand over.
  t.is(runs.length, 2);
  t.deepEqual(await workflowTaskBuilds(handle, runs[0]), ['B']);
  t.deepEqual(await workflowTaskBuilds(handle, runs[1]), ['C']);
  const first = await client.workflow.getHandle(handle.workflowId, runs[0]).fetchHistory();
  t.true(
    first.events?.some((e) => e.workflowTaskStartedEventAttributes?.targetWorkerDeploymentVersionChanged) ?? false,
    'the first run was told that the target version changed'
  );
});

test.serial(
  'stepwise deploy refuses an unknown build id, a percentage outside 0..100 and a bad --wait with exit 2',
  async (t) => {
    const unknown = await stepwise(['deploy', 'set-current', 'no-such-build']);
    t.is(unknown.code, 2, unknown.stderr);
    t.regex(unknown.stderr, /BUILD_ID: deployment stepwise has no build 'no-such-build' \(known: .*B.*\)/);
    const tooMuch = await stepwise(['deploy', 'ramp', 'B', '--percent', '150']);
    t.is(tooMuch.code, 2, tooMuch.stderr);
    t.regex(tooMuch.stderr, /--percent must be a number from 0 to 100, got '150'/);
    const badWait = await stepwise(['deploy', 'set-current', 'B', '--wait', '-1']);
    t.is(badWait.code, 2, badWait.stderr);
    t.regex(badWait.stderr, /--wait must be a whole number of seconds from 0 to 3600, got '-1'/);
    // A good ramp: 10% of new runs to B while C stays current.
    const ramp = await stepwise(['deploy', 'ramp', 'B', '--percent', '10', '--json']);
    t.is(ramp.code, 0, ramp.stderr);
    t.like(jsonLines(ramp.stdout).at(-1), { current: 'C', ramping: { buildId: 'B', percent: 10 } });
    const status = await stepwise(['deploy', 'status']);
    t.regex(status.stdout, /current: C/);
    t.regex(status.stdout, /ramping: B at 10%/);
    // Without waiting: the change is reported as still propagating or done, and what the server is still doing for
    // it (its own workflows' pending activities) is named one per line.
    const unwaited = await stepwise(['deploy', 'ramp', 'B', '--percent', '20', '--json', '--wait', '0']);
    t.is(unwaited.code, 0, unwaited.stderr);
    const { propagated } = jsonLines(unwaited.stdout).at(-1) as { propagated: boolean };
    t.is(/still reaching the task queues/.test(unwaited.stderr), !propagated, unwaited.stderr);
    for (const line of unwaited.stderr.split('\n').filter((l) => l.startsWith('  '))) {
      t.regex(line, /^ {2}temporal-sys-worker-deployment(-version)?:stepwise(:[ABC])?: \w+ \(attempt \d+/);
    }
  }
);

test.serial(
  'stepwise replay passes on the cluster histories and fails (exit 1) against a reordered pipeline',
  async (t) => {
    t.timeout(300_000);
    const passed = await stepwise(['replay', '--json']);
    t.is(passed.code, 0, passed.stderr);
    const lines = jsonLines(passed.stdout);
    // Two pipelines, their two teacher stages, and the teacher stage's chain of at least two runs.
    t.true(lines.length >= 6, passed.stdout);
    t.true(
      lines.every((l) => l.outcome === 'ok'),
      passed.stdout
    );

    const reordered = await stepwise([
      'replay',
      '--query',
      "WorkflowType = 'distillationPipeline'",
      '--workflows',
      join(__dirname, 'fixtures', 'reordered-pipeline.ts'),
      '--json',
    ]);
    t.is(reordered.code, 1, reordered.stderr);
    const failed = jsonLines(reordered.stdout);
    t.is(failed.length, 2);
    t.true(
      failed.every((l) => l.outcome === 'nondeterministic'),
      reordered.stdout
    );

    const one = await stepwise(['replay', '--query', "WorkflowType = 'distillationPipeline'", '--limit', '1']);
    t.is(one.code, 0, one.stderr);
    t.is(one.stdout.trim().split('\n').length, 1);
    t.regex(one.stdout, /^ok {3}versioning-/);

    const badQuery = await stepwise(['replay', '--query', 'NoSuchAttribute = 1']);
    t.is(badQuery.code, 2, badQuery.stderr);
    t.regex(badQuery.stderr, /--query/);
  }
);

test('a routing wait that ran out names the pending work, or says the propagation stopped once nothing is pending', (t) => {
  const running = [
    'temporal-sys-worker-deployment:stepwise (12 events)',
    'temporal-sys-worker-deployment-version:stepwise:B (40 events)',
  ];
  const pending = ['temporal-sys-worker-deployment-version:stepwise:B: SyncDeploymentVersionUserData (attempt 3)'];
  t.deepEqual(describeRoutingWork({ running, pending }, 300), pending);
  t.deepEqual(describeRoutingWork({ running, pending }, 0), pending);
  // Nothing pending right after the change is the gap between two activities, not a stall.
  t.deepEqual(describeRoutingWork({ running, pending: [] }, STALL_AFTER_SECONDS - 1), []);
  const [stalled, ...rest] = describeRoutingWork({ running, pending: [] }, STALL_AFTER_SECONDS);
  t.deepEqual(rest, []);
  t.regex(stalled, /none of the server's 2 running workflows for this deployment has an activity pending/);
  t.true(
    running.every((r) => stalled.includes(r)),
    stalled
  );
  t.regex(stalled, /temporalio\/temporal#11842/);
  // Workflows this client cannot see explain nothing.
  t.deepEqual(describeRoutingWork({ running: [], pending: [] }, 300), []);
});

test('a build id derived from the code version is made valid; an invalid one given by the operator is refused', (t) => {
  t.is(buildIdFromCodeVersion('0.1.0+1a2b3c4d5e6f.dirty'), '0.1.0+1a2b3c4d5e6f.dirty');
  t.is(buildIdFromCodeVersion('__release 7 (hotfix)'), 'release-7--hotfix-');
  const long = buildIdFromCodeVersion('x'.repeat(400));
  t.true(long.length <= 255);
  t.not(long, buildIdFromCodeVersion(`${'x'.repeat(399)}y`), 'two long versions keep distinct build ids');
  t.is(buildIdProblem('2026-11-27.1'), undefined);
  t.regex(buildIdProblem('__internal') ?? '', /not starting with '__'/);
  t.regex(buildIdProblem('a b') ?? '', /no spaces/);
  t.regex(buildIdProblem('y'.repeat(256)) ?? '', /256 characters long, at most 255/);
  const dotted = t.throws(() => checkDeploymentName('step.wise'), { instanceOf: InputError });
  t.is(dotted.field, 'STEPWISE_DEPLOYMENT_NAME');
});

test('a worker given an invalid build id or versioning switch exits at once, naming the variable', async (t) => {
  const root = join(__dirname, '..');
  const run = (env: Record<string, string>) =>
    new Promise<{ code: number; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        [join(root, 'bin', 'stepwise.js'), 'worker', '--queue', 'cpu'],
        { env: { ...process.env, TEMPORAL_ADDRESS: '127.0.0.1:1', ...env } },
        (err, _stdout, stderr) => resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stderr })
      )
    );
  const badId = await run({ STEPWISE_BUILD_ID: '__mine' });
  t.is(badId.code, 1);
  t.regex(badId.stderr, /STEPWISE_BUILD_ID '__mine' is not a valid build id/);
  const badSwitch = await run({ STEPWISE_WORKER_VERSIONING: 'maybe' });
  t.is(badSwitch.code, 1);
  t.regex(badSwitch.stderr, /STEPWISE_WORKER_VERSIONING must be 'on' or 'off', got 'maybe'/);
});
