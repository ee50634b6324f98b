/**
 * The console a person reads, and the logs a machine reads. Embedded, `stepwise run` shows the stages, their
 * progress and one clear error; the dev server's output and the workers' logs go to files under the state folder
 * (`--verbose` prints them too); inputs on this machine are checked before any service starts. A production worker
 * (`stepwise worker`) writes JSON lines that carry the run, the stage and the attempt.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import test from 'ava';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { CPU_TASK_QUEUE } from '../contract';
import { startTemporalDevServer } from '../infra/temporal';
import { parseSpec } from '../lib/pipeline/spec';
import { devServerSearchAttributes, startPipelineRun } from '../workers/search-attributes';
import { BIN, stepwise } from './helpers/cli';
import { tempDir } from './helpers/temp';

const ROOT = resolve(__dirname, '..');
const DATASETS = resolve(ROOT, '..', 'shared', 'datasets');

/** The embedded mode in a fresh state folder: no cluster, the store under the state folder. */
const embedded = (home: string, more: Record<string, string> = {}) => ({
  STEPWISE_HOME: home,
  TEMPORAL_ADDRESS: '',
  STEPWISE_STORE: '',
  STEPWISE_LOG_FORMAT: '',
  STEPWISE_LOG_LEVEL: '',
  ...more,
});

/** What a stack dump or the SDK's raw activity log looks like: none of it belongs on a person's console. */
function assertNoInternals(t: import('ava').ExecutionContext, stderr: string): void {
  t.notRegex(stderr, /^\s+at /m, 'no stack trace');
  t.notRegex(stderr, /taskToken/, 'no task token');
  t.notRegex(stderr, /\[temporal\]/, 'no dev server output');
  t.notRegex(stderr, /\bWARN\b|\bERROR\b/, 'no SDK or server warnings');
}

test('a missing data folder is refused in one line, exit 2, before any service starts or anything is written', async (t) => {
  const dir = await tempDir(t, 'stepwise-console-');
  const home = join(dir, 'state');
  const started = Date.now();
  const r = await stepwise(
    ['run', '--data-dir', join(dir, 'no-such-data'), '--task', 'svamp', '--teacher', 'replay', '--steps', '5'],
    embedded(home, { STEPWISE_DATA_ROOTS: dir })
  );
  t.log(`refused in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  t.is(r.code, 2, r.stderr);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(
    r.stderr,
    /^stepwise run: data\.dir: .*no-such-data does not exist; expected a folder in the reference layout/
  );
  assertNoInternals(t, r.stderr);
  t.notRegex(r.stderr, /preparing embedded services/);
  t.false(existsSync(join(home, 'temporal.db')), 'no Temporal server started');
  t.false(existsSync(home), 'nothing written to the state folder');
});

test('a reference dataset without a teacher suggests --teacher replay and --teacher-url, from flags or a spec file', async (t) => {
  const dir = await tempDir(t, 'stepwise-console-');
  const home = join(dir, 'state');
  const fromFlags = await stepwise(['run', '--data-dir', DATASETS, '--task', 'svamp'], embedded(home));
  const file = join(dir, 'spec.json');
  await writeFile(file, JSON.stringify({ name: 'ref', data: { kind: 'reference', dir: DATASETS, task: 'svamp' } }));
  const fromFile = await stepwise(['run', file], embedded(home));
  for (const r of [fromFlags, fromFile]) {
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, /no teacher: .*--teacher replay .*--teacher-url/);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assertNoInternals(t, r.stderr);
  }
  t.false(existsSync(home), 'nothing started');
});

test.serial(
  "an embedded run's console shows its stages, the services' output goes to log files, and --verbose shows it",
  async (t) => {
    const home = await mkdtemp(join(tmpdir(), 'stepwise-console-'));
    // The smallest demo run: a tenth of the generated task, ten training steps of the tiny student.
    const args = ['run', '--demo', '--name', 'console-demo', '--steps', '10', '--fraction', '0.1'];
    const quiet = await stepwise(args, embedded(home));
    t.is(quiet.code, 0, quiet.stderr);
    t.regex(quiet.stderr, /✔ train student\s+10 steps/);
    t.regex(quiet.stderr, new RegExp(`logs in ${join(home, 'logs')}`));
    assertNoInternals(t, quiet.stderr);
    t.regex(quiet.stdout, /Registered model console-demo version 1/);

    t.deepEqual((await readdir(join(home, 'logs'))).sort(), ['temporal.log', 'workers.log']);
    const server = await readFile(join(home, 'logs', 'temporal.log'), 'utf8');
    t.regex(server, /\[temporal\] Temporal Server:/, "the dev server's own output");
    const workers = await readFile(join(home, 'logs', 'workers.log'), 'utf8');
    t.regex(workers, /INFO {2}Worker state changed .*taskQueue=stepwise state=RUNNING/);
    t.regex(workers, /WARN {2}No workflows registered/, 'the warnings a user was shown before are kept here');

    // The same spec again attaches to the completed run (no training): verbose, the same lines reach the console.
    const verbose = await stepwise([...args, '--verbose'], embedded(home));
    t.is(verbose.code, 0, verbose.stderr);
    t.regex(verbose.stderr, /already completed/);
    t.regex(verbose.stderr, /\[temporal\] Temporal Server:/);
    t.regex(verbose.stderr, /Worker state changed/);
    t.regex(await readFile(join(home, 'logs', 'temporal.log'), 'utf8'), /--verbose/, 'the files get them too');
    await rm(home, { recursive: true, force: true });
  }
);

test.serial(
  "a worker's JSON log lines carry the run, the activity type and the attempt of what they are about",
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'stepwise-console-'));
    // A reference folder without the task's files: the sample stage fails at once, logging its activity's failure.
    const data = join(dir, 'data');
    await mkdir(data);
    const server = await startTemporalDevServer({
      stateDir: join(dir, 'temporal'),
      searchAttributes: devServerSearchAttributes(),
    });
    const out: string[] = [];
    const worker = spawn(process.execPath, [BIN, 'worker', '--queue', 'cpu'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        TEMPORAL_ADDRESS: server.address,
        TEMPORAL_NAMESPACE: server.namespace,
        STEPWISE_STORE: `file://${join(dir, 'artifacts')}`,
        STEPWISE_DATA_ROOTS: dir,
        STEPWISE_WORKER_VERSIONING: 'off',
        STEPWISE_LOG_FORMAT: '',
        STEPWISE_LOG_LEVEL: '',
      },
    });
    let stderr = '';
    worker.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((done) => worker.once('exit', (code) => done(code)));
    const connection = await Connection.connect({ address: server.address });
    try {
      await new Promise<void>((ready, fail) => {
        worker.stdout!.on('data', (chunk: Buffer) => {
          out.push(chunk.toString());
          if (out.join('').includes('stepwise worker: queue')) ready();
        });
        void exited.then((code) => fail(new Error(`the worker exited (${code}): ${out.join('')}${stderr}`)));
      });
      const client = new Client({ connection, namespace: server.namespace });
      const spec = parseSpec({
        name: 'json-logs',
        data: { kind: 'reference', dir: data, task: 'svamp' },
        teacher: { kind: 'replay' },
      });
      const workflowId = 'stepwise-json-logs';
      const handle = await startPipelineRun(client, spec, { taskQueue: CPU_TASK_QUEUE, workflowId }, () => undefined);
      await t.throwsAsync(handle.result(), { instanceOf: WorkflowFailedError });
      worker.kill('SIGTERM');
      t.is(await exited, 0, stderr);

      const lines = out.join('').split('\n').filter(Boolean);
      const records = lines.map((line) => {
        try {
          return JSON.parse(line) as Record<string, unknown>;
        } catch {
          t.fail(`not a JSON line: ${line}`);
          return {};
        }
      });
      t.true(records.length > 3);
      t.true(
        records.every((r) => typeof r.time === 'string' && typeof r.level === 'string' && 'message' in r),
        'every line has time, level and message'
      );
      t.true(
        records.some((r) => String(r.message).startsWith('stepwise worker: queue stepwise')),
        "the worker's own lines are records too"
      );
      const failed = records.find((r) => r.message === 'Activity failed');
      t.like(failed, {
        level: 'warn',
        workflowId,
        runId: handle.firstExecutionRunId,
        workflowType: 'distillationPipeline',
        activityType: 'sample',
        attempt: 1,
        taskQueue: CPU_TASK_QUEUE,
        error: { name: 'ApplicationFailure', type: 'InputError' },
      });
      t.regex(String((failed?.error as { message?: string } | undefined)?.message), /svamp_train\.json/);
      t.false(
        records.some((r) => 'taskToken' in r),
        'no task token: an opaque copy of the ids already there'
      );
    } finally {
      worker.kill('SIGKILL');
      await connection.close();
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }
);
