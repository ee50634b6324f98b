/**
 * Durable in the default mode: `stepwise run --demo` (what `npm start` runs, embedded services in one process) is
 * SIGKILLed mid-training. Nothing it started may outlive it, and the same command run again on the same state folder
 * resumes that run (no second one) from its last checkpoint, registering exactly one version. A second server on the
 * same state is refused while one runs. Full mode (STEPWISE_FAULTS=full) adds a rerun of the completed spec (its
 * result again, nothing registered twice) and a kill mid-teacher-stage continued by `stepwise resume`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { progressQuery } from '../../contract';
import type { TrainHeartbeat } from '../../activities/train-student';
import { acquireDbLock, StateInUseError } from '../../infra/db-lock';
import { startTemporalDevServer } from '../../infra/temporal';
import { listVersions } from '../../lib/registry/registry';
import { openStore } from '../../lib/store';
import { faultMode, recordFigures } from '../helpers/figures';
import { isAlive } from '../helpers/processes';
import { describeRunState } from '../helpers/run-state';
import { waitFor, within } from '../helpers/wait';

const ROOT = join(__dirname, '..', '..');
// Few steps keep the test short; the interval leaves several checkpoints before the end to kill between.
const STEPS = 160;
const CHECKPOINT_EVERY = 16;
const ARGS = ['run', '--demo', '--steps', String(STEPS), '--checkpoint-every', String(CHECKPOINT_EVERY), '--json'];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A `stepwise` command as a user runs it, in its own state folder; its output kept for assertions and failures. */
class Cli {
  readonly proc: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(home: string, args: string[]) {
    const env: NodeJS.ProcessEnv = { ...process.env, STEPWISE_HOME: home };
    // The default mode: no cluster, the store under the state folder.
    delete env.TEMPORAL_ADDRESS;
    delete env.STEPWISE_STORE;
    this.proc = spawn(process.execPath, [join(ROOT, 'bin', 'stepwise.js'), ...args], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc.stdout!.on('data', (chunk: Buffer) => (this.stdout += chunk.toString()));
    this.proc.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (process.env.DEBUG_DM) process.stderr.write(`${new Date().toISOString()} ${chunk.toString()}`);
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** The first match of `pattern` in stderr (the CLI's diagnostics), once it appears. */
  match(pattern: RegExp, timeoutMs = 120_000): Promise<RegExpExecArray> {
    return waitFor(
      `${pattern} in the output of stepwise:\n${this.stderr.slice(-3000)}`,
      () => {
        const m = pattern.exec(this.stderr);
        if (!m && this.proc.exitCode !== null) throw new Error('exited');
        return m ?? undefined;
      },
      timeoutMs
    );
  }
}

/** Every process descending from `pid`, from `ps` (a process keeps its parent link until that parent dies). */
function descendants(pid: number): { pid: number; args: string }[] {
  const rows = execFileSync('ps', ['-eo', 'pid=,ppid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), args: m[3] }));
  const found: { pid: number; args: string }[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const parent = queue.shift()!;
    for (const row of rows.filter((r) => r.ppid === parent)) {
      found.push({ pid: row.pid, args: row.args });
      queue.push(row.pid);
    }
  }
  return found;
}

/**
 * Processes whose command line names the state folder (the Temporal server's `--db-filename`, say), and those `also`
 * picks; each as `pid state elapsed args`.
 */
function processesUsing(home: string, also: (line: string) => boolean = () => false): string[] {
  return execFileSync('ps', ['-eo', 'pid=,stat=,etime=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => (l.includes(home) || also(l)) && !l.includes(' ps -eo'));
}

/**
 * What a command that did not finish its run leaves to look at: its output, the run as its server has it (the
 * address is the last one the command printed), the processes on its state folder and the ends of the embedded
 * services' logs. Which of the server, the workflow worker or training stopped is then in the failure itself.
 */
async function stuckReport(cli: Cli, home: string, workflowId: string): Promise<string> {
  const parts = [`its output:\n${cli.stderr.slice(-4000)}`];
  const address = [...cli.stderr.matchAll(/Temporal dev server at (127\.0\.0\.1:\d+)/g)].at(-1)?.[1];
  if (address) {
    const connection = await Connection.connect({ address, connectTimeout: 5_000 }).catch((err: Error) => err);
    if (connection instanceof Error) parts.push(`its server at ${address} refused a connection: ${connection.message}`);
    else {
      parts.push(
        `the run on its server at ${address}:\n${await describeRunState(new Client({ connection }), workflowId)}`
      );
      await connection.close();
    }
  }
  // The training children too: their command line does not name the state folder.
  const processes = processesUsing(home, (l) => l.includes('child-main') || l.trim().startsWith(`${cli.proc.pid} `));
  parts.push(`processes on the state folder:\n${processes.join('\n')}`);
  for (const name of ['temporal.log', 'workers.log']) {
    const text = await readFile(join(home, 'logs', name), 'utf8').catch((err: Error) => `(unread: ${err.message})`);
    parts.push(`the end of logs/${name}:\n${text.split('\n').slice(-40).join('\n')}`);
  }
  return parts.join('\n\n');
}

/** The trainStudent activity's latest heartbeat, as the server has it. */
async function heartbeat(handle: WorkflowHandle): Promise<TrainHeartbeat | undefined> {
  const { raw } = await handle.describe();
  const pending = raw.pendingActivities?.find((a) => a.activityType?.name === 'trainStudent');
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  return payload ? defaultPayloadConverter.fromPayload<TrainHeartbeat>(payload) : undefined;
}

/** The same command once more, and `stepwise resume`, after the run completed: its result again, nothing retrained. */
async function rerunCompleted(t: ExecutionContext, home: string, workflowId: string): Promise<void> {
  for (const args of [ARGS, ['resume', workflowId, '--json']]) {
    const again = new Cli(home, args);
    started.add(again.proc.pid!);
    const { code } = await within(
      again.exited,
      120_000,
      () => `${args.join(' ')} on a completed run:\n${again.stderr}`
    );
    t.is(code, 0, again.stderr.slice(-3000));
    t.regex(again.stderr, /already completed/);
    t.like(JSON.parse(again.stdout.trim().split('\n').at(-1)!), { workflowId, version: 1 });
  }
  const store = openStore(pathToFileURL(join(home, 'artifacts')).href);
  t.deepEqual(await listVersions(store, 'demo-reviews'), [1], 'nothing registered twice');
  await store.close();
}

/**
 * The heartbeat once training is frozen and everything it did has reached the server: unchanged for 3 s (heartbeats
 * are throttled to one per 2 s, and a checkpoint upload under way when training stopped may still land).
 */
async function settledHeartbeat(handle: WorkflowHandle, timeoutMs = 60_000): Promise<TrainHeartbeat> {
  const deadline = Date.now() + timeoutMs;
  let last = JSON.stringify(await heartbeat(handle));
  let since = Date.now();
  for (;;) {
    await sleep(500);
    const now = JSON.stringify(await heartbeat(handle));
    if (now !== last) [last, since] = [now, Date.now()];
    else if (Date.now() - since >= 3000) return JSON.parse(last) as TrainHeartbeat;
    if (Date.now() > deadline) throw new Error(`the heartbeat still changed after ${timeoutMs / 1000} s: ${now}`);
  }
}

const started = new Set<number>();
test.after.always(() => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone, as it should be
    }
  }
});

test.serial(
  'npm start killed mid-training leaves nothing running, and run again resumes the same run to one version',
  async (t) => {
    // Two CLI runs of the demo, each with its own server start: minutes on a loaded 2-core machine. Each step below
    // has its own bound, so a hang fails as that step with the command's output; this is the backstop.
    t.timeout(12 * 60_000);
    const home = await mkdtemp(join(tmpdir(), 'stepwise-default-mode-'));
    t.teardown(() => rm(home, { recursive: true, force: true }));

    // 1. The first command, until training has stored a checkpoint and is well before its end.
    const t0 = Date.now();
    const secondsSince = (from: number) => `${((Date.now() - from) / 1000).toFixed(1)} s`;
    const first = new Cli(home, ARGS);
    started.add(first.proc.pid!);
    const address = (await first.match(/Temporal dev server at (127\.0\.0\.1:\d+)/))[1];
    const workflowId = (await first.match(/run (\S+) started/))[1];
    t.regex(workflowId, /^stepwise-demo-reviews-[0-9a-f]{12}$/);
    const connection = await Connection.connect({ address });
    const handle = new Client({ connection }).workflow.getHandle(workflowId);
    const beat = await waitFor(
      'a stored checkpoint',
      async () => {
        const b = await heartbeat(handle);
        return (b?.checkpointStep ?? 0) >= CHECKPOINT_EVERY ? b : undefined;
      },
      180_000
    );
    t.true(beat.step < STEPS, `training still running at step ${beat.step}`);
    t.log(`first command: a checkpoint after ${secondsSince(t0)}`);
    // The teacher line says what the stage did with its calls.
    t.regex(first.stderr, /prompt teacher\s+1200 sent \(0 cached, 0 failed\)/);
    // Freeze training so the steps it executed are known exactly: its progress reaches the server with the next
    // heartbeats (throttled to one per 2 s). Then SIGKILL the command alone: not its group, no chance to clean up.
    const tree = descendants(first.proc.pid!);
    const child = tree.find((p) => p.args.includes('child-main'));
    t.truthy(child, `a training child among ${JSON.stringify(tree)}`);
    for (const p of tree) started.add(p.pid);
    process.kill(child!.pid, 'SIGSTOP');
    const last = await settledHeartbeat(handle);
    await connection.close();
    process.kill(first.proc.pid!, 'SIGKILL');
    await within(first.exited, 30_000, () => 'the SIGKILLed first command to exit');
    t.log(`first command: killed after ${secondsSince(t0)}, at step ${last.step}`);
    // Resumed only so that it can notice its parent is gone (the stop was this test's doing, not a fault).
    process.kill(child!.pid, 'SIGCONT');

    // 2. Nothing it started outlives it: server, watchdogs, training child.
    const leftovers = await waitFor(
      "the killed command's processes to exit",
      () => {
        const alive = tree.filter((p) => isAlive(p.pid));
        return alive.length === 0 && processesUsing(home).length === 0 ? [] : undefined;
      },
      30_000
    ).catch(() => tree.filter((p) => isAlive(p.pid)).map((p) => `${p.pid} ${p.args}`));
    t.deepEqual(leftovers, [], 'processes left behind by the killed command');

    // 3. The same command again resumes the run; meanwhile a third one on the same state is refused.
    const t1 = Date.now();
    const second = new Cli(home, ARGS);
    started.add(second.proc.pid!);
    await second.match(/Temporal dev server at/);
    t.log(`second command: its server up after ${secondsSince(t1)}`);
    const third = new Cli(home, ['resume', '--json']);
    started.add(third.proc.pid!);
    const refused = await within(third.exited, 60_000, () => `the third command to be refused:\n${third.stderr}`);
    t.not(refused.code, 0);
    t.regex(third.stderr, new RegExp(`the state folder ${home} is in use by another Stepwise process`));
    t.notRegex(third.stderr, /Temporal Server:/, 'the refused command started no server');

    const done = await within(
      second.exited,
      5 * 60_000,
      async () =>
        `the second command to finish the run (${secondsSince(t1)} so far); ` +
        (await stuckReport(second, home, workflowId))
    );
    t.log(`second command: done in ${secondsSince(t1)}`);
    t.log(
      second.stderr
        .split('\n')
        .filter((l) => /resum|retrying|stale/.test(l))
        .join('\n')
    );
    t.is(done.code, 0, second.stderr.slice(-4000));
    t.regex(second.stderr, new RegExp(`run ${workflowId} \\(started [^)]+\\) is in flight: resuming it`));
    const result = JSON.parse(second.stdout.trim().split('\n').at(-1)!);
    t.is(result.workflowId, workflowId);
    t.deepEqual(
      await waitFor(
        "the second command's server to exit",
        () => (processesUsing(home).length ? undefined : []),
        30_000
      ),
      []
    );

    // 4. The state: one pipeline run, completed; training retried once, from the checkpoint heartbeated last.
    const server = await startTemporalDevServer({ stateDir: home });
    const runs: { workflowId: string; status: { name: string } }[] = [];
    try {
      const client = new Client({ connection: await Connection.connect({ address: server.address }) });
      for await (const info of client.workflow.list({ query: 'WorkflowType="distillationPipeline"' })) runs.push(info);
      t.deepEqual(
        runs.map((r) => [r.workflowId, r.status.name]),
        [[workflowId, 'COMPLETED']]
      );
      await client.connection.close();
    } finally {
      await server.stop();
    }
    const store = openStore(pathToFileURL(join(home, 'artifacts')).href);
    const manifest = JSON.parse((await store.getKey(`runs/${workflowId}/manifest.json`))!.toString());
    const logRef = manifest.artifacts.find((a: { role: string }) => a.role === 'student/train-log');
    const trainLog = JSON.parse((await store.get(logRef)).toString());
    t.is(trainLog.steps, STEPS);
    t.is(trainLog.attempt, 2, 'the attempt the killed command held was released and retried once');
    t.is(trainLog.resumedFrom, last.checkpointStep);
    const recomputed = last.step - trainLog.resumedFrom;
    t.log(`killed after step ${last.step}, resumed after ${trainLog.resumedFrom}: ${recomputed} step(s) recomputed`);
    t.true(
      recomputed >= 0 && recomputed <= CHECKPOINT_EVERY,
      `recomputed ${recomputed} (interval ${CHECKPOINT_EVERY})`
    );
    const versions = await listVersions(store, 'demo-reviews');
    await store.close();
    t.deepEqual(versions, [1]);
    if (faultMode() === 'full') await rerunCompleted(t, home, workflowId);
    recordFigures('default-mode-kill', {
      faultsTried: 1,
      faultsSurvived: runs.length === 1 && versions.length === 1 && recomputed <= CHECKPOINT_EVERY ? 1 : 0,
      registryDuplicates: Math.max(0, versions.length - 1),
    });
  }
);

// Full mode: the teacher stage is killed instead, and `stepwise resume` (no id) continues it from the shard journals.
(faultMode() === 'full' ? test.serial : test.serial.skip)(
  'stepwise resume continues a run killed mid-teacher-stage, reusing the calls its shard journals hold',
  async (t) => {
    t.timeout(8 * 60_000);
    const home = await mkdtemp(join(tmpdir(), 'stepwise-default-mode-'));
    t.teardown(() => rm(home, { recursive: true, force: true }));
    // A client-side rate limit stretches the demo's 1200 teacher calls over about 20 s: time to kill in between.
    const args = [...ARGS, '--requests-per-minute', '3600'];
    const first = new Cli(home, args);
    started.add(first.proc.pid!);
    const address = (await first.match(/Temporal dev server at (127\.0\.0\.1:\d+)/))[1];
    const workflowId = (await first.match(/run (\S+) started/))[1];
    const connection = await Connection.connect({ address });
    const handle = new Client({ connection }).workflow.getHandle(workflowId);
    await waitFor(
      'teacher calls under way',
      async () => {
        const p = await handle.query(progressQuery);
        return p.stage === 'promptTeacher' && p.step >= 100 ? p : undefined;
      },
      180_000
    );
    await connection.close();
    for (const p of descendants(first.proc.pid!)) started.add(p.pid);
    process.kill(first.proc.pid!, 'SIGKILL');
    await within(first.exited, 30_000, () => 'the SIGKILLed first command to exit');
    t.notRegex(first.stderr, /✔ prompt teacher/, 'killed before the teacher stage finished');
    await waitFor(
      "the killed command's server to exit",
      () => (processesUsing(home).length ? undefined : true),
      30_000
    );

    const resumed = new Cli(home, ['resume', '--json']);
    started.add(resumed.proc.pid!);
    const done = await within(
      resumed.exited,
      6 * 60_000,
      async () => `stepwise resume to finish the run; ${await stuckReport(resumed, home, workflowId)}`
    );
    t.is(done.code, 0, resumed.stderr.slice(-4000));
    t.regex(resumed.stderr, new RegExp(`resuming run ${workflowId}`));
    t.like(JSON.parse(resumed.stdout.trim().split('\n').at(-1)!), { workflowId, version: 1 });
    const [, reused, sent] = /prompt teacher\s+(\d+) reused, (\d+) sent/.exec(resumed.stderr) ?? [];
    t.log(`teacher stage after the kill: ${reused} reused, ${sent} sent`);
    t.true(Number(reused) > 0, resumed.stderr.slice(-3000));
    t.is(Number(reused) + Number(sent), 1200);
  }
);

test('the state lock: a live holder is refused naming the folder, a dead one is taken over, release frees it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-lock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const db = join(dir, 'temporal.db');

  // A holder whose server is a live process (this one stands in for it): refused, naming the folder and the pids.
  const held = await acquireDbLock(db);
  await held.setServer(process.pid);
  const refused = await t.throwsAsync(acquireDbLock(db), { instanceOf: StateInUseError });
  t.regex(refused!.message, new RegExp(`the state folder ${dir} is in use .*pid ${process.pid}`));
  await held.release();

  // A holder whose server has exited (killed, say) while its owner lives on: stale, taken over.
  const exited = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => exited.once('exit', r));
  const first = await acquireDbLock(db);
  await first.setServer(exited.pid!);
  const second = await acquireDbLock(db);
  await second.setServer(process.pid);
  // The first holder's release must not remove the lock the second one now holds.
  await first.release();
  await t.throwsAsync(acquireDbLock(db), { instanceOf: StateInUseError });
  await second.release();
  t.false(existsSync(`${db}.lock`));

  // A damaged lock file is no holder at all.
  await writeFile(`${db}.lock`, '{"pid": 1');
  const third = await acquireDbLock(db);
  await third.release();
  t.false(existsSync(`${db}.lock`));
});
