/**
 * `stepwise models` run as users run it (the real CLI, one process per command) against registries written by the
 * register stage's own code: on the filesystem store, and on the versitygw S3 store for the promotion race.
 */
import { execFile } from 'node:child_process';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { ArtifactStore, FsBackend, openStore } from '../lib/store';
import { sha256Hex } from '../lib/store/artifact-store';
import { registerRun } from '../lib/registry/run';
import { modelHistory, recordGate, REGISTRY_IDENTITY, versionStatus, type AuditRecord } from '../lib/registry/audit';
import { startTemporalDevServer } from '../infra/temporal';
import { Client, Connection } from '@temporalio/client';
import { registerInput } from './faults/register-fixture';
import { s3ServerForFile } from './helpers/s3';
import { tempDir } from './helpers/temp';

const run = promisify(execFile);
const BIN = resolve(__dirname, '..', 'bin', 'stepwise.js');
const BUCKET = 'stepwise-models-cli';

const s3Server = s3ServerForFile(BUCKET);
let home: string;

test.before(async () => {
  home = await mkdtemp(join(tmpdir(), 'stepwise-models-home-'));
  process.env.AWS_REGION = 'us-east-1';
});

test.after.always(async () => {
  if (home) await rm(home, { recursive: true, force: true });
});

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** The CLI in a process of its own; `env` on top of this one's (no Temporal cluster: nothing here needs one). */
async function stepwise(args: string[], env: Record<string, string>): Promise<Ran> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, 'models', ...args], {
      env: { ...process.env, STEPWISE_HOME: home, TEMPORAL_ADDRESS: '', ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const json = <T>(r: Ran): T => JSON.parse(r.stdout) as T;

/** A fresh filesystem store holding `n` versions of `name`, registered through the register stage's code. */
async function fsRegistry(
  t: ExecutionContext,
  name: string,
  n: number,
  tweak?: (i: number, input: ReturnType<typeof registerInput>) => void
) {
  const dir = await tempDir(t, 'stepwise-models-cli-');
  const store = new ArtifactStore(new FsBackend(dir));
  await register(store, name, n, tweak);
  return { store, env: { STEPWISE_STORE: dir } };
}

async function register(
  store: ArtifactStore,
  name: string,
  n: number,
  tweak?: (i: number, input: ReturnType<typeof registerInput>) => void
) {
  for (let i = 0; i < n; i++) {
    const input = registerInput(name, `run-${i}`);
    tweak?.(i, input);
    await registerRun(store, input, `code-${i === 0 ? 'a' : 'b'}`);
  }
}

/** Exactly one line on stderr, the CLI's InputError form, and nothing on stdout. */
function refused(
  t: { is: (a: unknown, b: unknown, m?: string) => void; regex: (s: string, r: RegExp) => void },
  r: Ran,
  message: RegExp
) {
  t.is(r.code, 1, r.stderr);
  t.is(r.stdout, '');
  t.regex(r.stderr, new RegExp(`^stepwise: ${message.source}[^\\n]*\\n$`));
}

test('ls lists models with their aliases and a model’s versions; show gives one version; both as text and JSON', async (t) => {
  const { env } = await fsRegistry(t, 'm', 3);
  const promoted = await stepwise(
    ['promote', 'm@2', '--alias', 'champion', '--identity', 'alice', '--why', 'best'],
    env
  );
  t.is(promoted.code, 0, promoted.stderr);
  t.is(promoted.stdout, 'champion: (none) → v2\n');

  const bare = await stepwise([], env);
  t.is(bare.code, 0, bare.stderr);
  t.is(bare.stdout, 'm  3 versions  champion → v2\n', '`stepwise models` with no subcommand lists models as ls does');
  t.deepEqual(json(await stepwise(['ls', '--json'], env)), [{ name: 'm', versions: 3, aliases: { champion: 2 } }]);

  const versions = json<{ version: number; status: string; aliases: string[]; accuracy: number; method: string }[]>(
    await stepwise(['ls', 'm', '--json'], env)
  );
  t.deepEqual(
    versions.map((v) => [v.version, v.status, v.aliases, v.accuracy, v.method]),
    [
      [1, 'candidate', [], 0.75, versions[0].method],
      [2, 'candidate', ['champion'], 0.75, versions[0].method],
      [3, 'candidate', [], 0.75, versions[0].method],
    ]
  );
  t.regex(versions[0].method, /\w/);
  const text = await stepwise(['m'], env);
  t.is(text.stdout.trim().split('\n').length, 3, '`stepwise models NAME` lists its versions');
  t.regex(text.stdout.split('\n')[1], /^m v2 .* candidate +accuracy 75\.0% .* \[champion\] +run wf-run-1$/);

  const shown = json<{
    version: number;
    status: { status: string; record: AuditRecord };
    aliases: string[];
    metrics: { accuracy: number };
  }>(await stepwise(['show', 'm@champion', '--json'], env));
  t.is(shown.version, 2);
  t.deepEqual(shown.aliases, ['champion']);
  t.is(shown.status.status, 'candidate');
  t.like(shown.status.record, { action: 'register', version: 2, who: 'stepwise-pipeline', workflowId: 'wf-run-1' });
  t.is(shown.metrics.accuracy, 0.75);
  const shownText = (await stepwise(['show', 'm@2'], env)).stdout;
  t.regex(shownText, /^m v2 {2}registered /);
  t.regex(shownText, /\nstatus +candidate {2}\(register by stepwise-pipeline at .*workflow wf-run-1\)\)\n/);
  t.regex(shownText, /\naliases +champion\n/);
  t.regex(shownText, /\nmetrics +accuracy 75\.0% \(225\/300\)/);
  t.regex(shownText, /\ncheckpoint +\S+objects\/sha256\//);

  refused(t, await stepwise(['show', 'm@9'], env), /ref: m@9: no version 9 of model m/);
  refused(t, await stepwise(['show', 'm@staging'], env), /ref: m@staging: model m has no alias "staging"/);
  refused(t, await stepwise(['ls', 'nosuch'], env), /name: no model "nosuch"/);
  refused(t, await stepwise(['history', 'nosuch'], env), /name: no model "nosuch"/);
});

test('approve, reject and archive a version no run waits on change its status, with the rules enforced', async (t) => {
  const { env } = await fsRegistry(t, 'm', 3);
  const approved = await stepwise(['approve', 'm@1', '--comment', 'looks good', '--identity', 'alice'], env);
  t.is(approved.code, 0, approved.stderr);
  t.is(approved.stdout, 'm v1: candidate → approved\n');

  const rejected = json<AuditRecord>(await stepwise(['reject', 'm@2', '--json'], env));
  const me = userInfo().username;
  t.like(rejected, {
    action: 'reject',
    version: 2,
    from: 'candidate',
    to: 'rejected',
    who: me,
    why: `rejected by ${me}`,
  });

  refused(
    t,
    await stepwise(['approve', 'm@2'], env),
    /m@2 is rejected: only a version that is candidate can be approved/
  );
  refused(
    t,
    await stepwise(['promote', 'm@2', '--alias', 'champion'], env),
    /m@2 is rejected \(rejected by \S+\): an alias cannot name it/
  );

  t.is((await stepwise(['promote', 'm@1', '--alias', 'champion'], env)).stdout, 'champion: (none) → v1\n');
  refused(
    t,
    await stepwise(['archive', 'm@1'], env),
    /m@1 is named by alias champion: move the alias before archiving it/
  );
  const archived = await stepwise(['archive', 'm@3', '--why', 'superseded', '--identity', 'dave'], env);
  t.is(archived.stdout, 'm v3: candidate → archived\n', archived.stderr);
  refused(t, await stepwise(['promote', 'm@3', '--alias', 'staging'], env), /m@3 is archived \(superseded\)/);
  refused(t, await stepwise(['promote', 'm@1', '--alias', '7'], env), /--alias: "7" would read as a version reference/);
  refused(t, await stepwise(['approve', 'm@0'], env), /ref: "m@0" names version 0; versions count from 1/);

  const history = json<AuditRecord[]>(await stepwise(['history', 'm', '--json'], env));
  t.deepEqual(
    history.filter((r) => r.action !== 'register').map((r) => [r.action, r.version, r.who, r.why]),
    [
      ['approve', 1, 'alice', 'looks good'],
      ['reject', 2, me, `rejected by ${me}`],
      ['alias', 1, me, `promoted by ${me}`],
      ['archive', 3, 'dave', 'superseded'],
    ]
  );
});

test('diff puts two versions side by side and marks the rows that differ', async (t) => {
  const { env } = await fsRegistry(t, 'm', 2, (i, input) => {
    if (i === 1) input.evaluation = { ...input.evaluation, accuracy: 0.8, correct: 240 };
  });
  const rows = json<Record<string, [unknown, unknown]>>(await stepwise(['diff', 'm@1', 'm@2', '--json'], env));
  t.deepEqual(rows['data.datasetHash'], [sha256Hex('dataset'), sha256Hex('dataset')]);
  t.deepEqual(rows['data.sampleHash'], [sha256Hex('sample run-0'), sha256Hex('sample run-1')]);
  t.deepEqual(rows['data.split.train'], [sha256Hex('train run-0'), sha256Hex('train run-1')], 'read from the manifest');
  t.deepEqual(rows['metrics.accuracy'], [0.75, 0.8]);
  t.deepEqual(rows.codeVersion, ['code-a', 'code-b']);
  t.deepEqual(rows.backend, ['cpu', 'cpu']);
  t.deepEqual(rows['config.steps'][0], rows['config.steps'][1]);
  for (const field of ['teacher.model', 'prompt.templateHash', 'validation.report', 'validation.kept']) {
    t.true(field in rows, field);
  }

  const text = await stepwise(['diff', 'm@1', 'm@2'], env);
  t.is(text.code, 0, text.stderr);
  const line = (field: string) => text.stdout.split('\n').find((l) => l.slice(2).startsWith(`${field} `)) ?? '';
  t.regex(text.stdout, /^ {2}field +m@1 +m@2\n/);
  for (const field of ['data.sampleHash', 'data.split.test', 'metrics.accuracy', 'metrics.correct', 'codeVersion']) {
    t.true(line(field).startsWith('* '), `${field} is marked: ${line(field)}`);
  }
  for (const field of ['data.datasetHash', 'backend', 'metrics.total', 'config.steps']) {
    t.true(line(field).startsWith('  '), `${field} is not marked: ${line(field)}`);
  }
  refused(t, await stepwise(['diff', 'm@1', 'm@5'], env), /b: m@5: no version 5 of model m/);
});

test('history lists every change in order; at answers before, between and after three promotions', async (t) => {
  const { store, env } = await fsRegistry(t, 'm', 3);
  const moves: AuditRecord[] = [];
  for (const v of [1, 2, 3]) {
    const r = await stepwise(['promote', `m@${v}`, '--alias', 'champion', '--json', '--identity', `user-${v}`], env);
    t.is(r.code, 0, r.stderr);
    moves.push(json<AuditRecord>(r));
  }
  t.deepEqual(
    moves.map((m) => [m.from, m.to, m.seq]),
    [
      [null, 1, 1],
      [1, 2, 2],
      [2, 3, 3],
    ]
  );

  const history = json<AuditRecord[]>(await stepwise(['history', 'm', '--json'], env));
  t.deepEqual(history, await modelHistory(store, 'm'), 'the log as the library reads it');
  t.deepEqual(
    history.map((r) => [r.action, r.action === 'alias' ? r.to : r.version]),
    [
      ['register', 1],
      ['register', 2],
      ['register', 3],
      ['alias', 1],
      ['alias', 2],
      ['alias', 3],
    ]
  );
  const lines = (await stepwise(['history', 'm'], env)).stdout.trim().split('\n');
  t.is(lines.length, 6, 'one line per record');
  t.regex(
    lines[0],
    /^\S+ {2}register +v1 +\(none\) → candidate +stepwise-pipeline {2}"registered by run wf-run-0.*" {2}workflow wf-run-0$/
  );
  t.regex(lines[4], /^\S+ {2}alias +alias champion +v1 → v2 +user-2 {2}"promoted by user-2"$/);

  const ms = (iso: string, delta = 0) => new Date(Date.parse(iso) + delta).toISOString();
  const atTime = (time: string, json = true) =>
    stepwise(['at', 'm@champion', '--time', time, ...(json ? ['--json'] : [])], env);
  const [first, second, third] = moves.map((m) => m.when);
  const between = ms(first, Math.floor((Date.parse(second) - Date.parse(first)) / 2));
  const cases: [string, string, number | null][] = [
    ['before the first promotion', ms(first, -1), null],
    ['at the instant of the first', first, 1],
    ['between the first and second', between, 1],
    ['just before the third', ms(third, -1), 2],
    ['at the third', third, 3],
    ['a year later', ms(third, 365 * 86_400_000), 3],
  ];
  for (const [what, time, expected] of cases) {
    const answer = json<{ version: number; record: AuditRecord } | null>(await atTime(time));
    t.is(answer?.version ?? null, expected, what);
    if (expected !== null) t.is(answer!.record.id, moves[expected - 1].id, `${what}: the record that set it`);
  }
  const none = await atTime(ms(first, -1), false);
  t.is(none.code, 0);
  t.regex(none.stdout, /^m@champion at \S+: no version \(first set \S+\)\n$/);
  t.regex(
    (await atTime(between, false)).stdout,
    /^m@champion at \S+: v1 {2}\(set by alias by user-1 at .*"promoted by user-1"\)\n$/
  );
  // A time without an offset is UTC, whatever the machine's zone.
  const utc = await stepwise(['at', 'm@champion', '--time', third.replace(/Z$/, ''), '--json'], {
    ...env,
    TZ: 'Asia/Tokyo',
  });
  t.is(json<{ version: number }>(utc).version, 3);

  refused(t, await atTime('yesterday'), /--time: "yesterday" is not an ISO-8601 time/);
  refused(t, await atTime('2026-13-45T00:00:00Z'), /--time: "2026-13-45T00:00:00Z" is not an ISO-8601 time/);
  refused(t, await stepwise(['at', 'm@3', '--time', first], env), /ref: "m@3" names a version, not an alias/);
  refused(
    t,
    await stepwise(['at', 'm@staging', '--time', first], env),
    /ref: m@staging: model m has no alias "staging"/
  );
  refused(t, await stepwise(['at', 'nosuch@champion', '--time', first], env), /ref: no model "nosuch"/);
});

/**
 * An HTTP proxy in front of the S3 server that holds conditional writes of one key until `hold` of them have
 * arrived, then lets them all through: every racer has read the alias before any of them moves it.
 */
async function holdingProxy(target: string, keySuffix: string, hold: number) {
  const held: (() => void)[] = [];
  let arrived = 0;
  const forward = (req: IncomingMessage, body: Buffer, res: import('node:http').ServerResponse) => {
    const upstream = request(new URL(req.url!, target), { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode!, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', (err) => res.destroy(err));
    upstream.end(body);
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = new URL(req.url!, 'http://proxy').pathname;
      if (req.method !== 'PUT' || !path.endsWith(keySuffix)) return forward(req, body, res);
      arrived++;
      held.push(() => forward(req, body, res));
      if (arrived === hold) for (const go of held.splice(0)) go();
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as { port: number };
  // Should a racer never arrive, let the others through rather than hang: the test's assertions then fail.
  const deadline = setTimeout(() => held.splice(0).forEach((go) => go()), 60_000);
  return {
    endpoint: `http://127.0.0.1:${port}`,
    arrived: () => arrived,
    async close() {
      clearTimeout(deadline);
      server.closeAllConnections();
      await new Promise((ok) => server.close(ok));
    },
  };
}

test('s3: two promotions racing in two processes: one moves the alias, the other names what it holds now', async (t) => {
  const location = `s3://${BUCKET}/race-${Date.now()}`;
  process.env.AWS_ENDPOINT_URL_S3 = s3Server().endpoint;
  const store = openStore(location);
  await register(store, 'm', 3);
  const proxy = await holdingProxy(s3Server().endpoint, '/registry/m/aliases/champion.json', 2);
  t.teardown(() => proxy.close());
  const env = { STEPWISE_STORE: location, AWS_ENDPOINT_URL_S3: proxy.endpoint };

  const racers = await Promise.all(
    [2, 3].map((v) => stepwise(['promote', `m@${v}`, '--alias', 'champion', '--identity', `user-${v}`], env))
  );
  t.is(proxy.arrived(), 2, 'both racers tried to move the alias, each against what it read');
  const won = racers.filter((r) => r.code === 0);
  const lost = racers.filter((r) => r.code !== 0);
  t.is(won.length, 1, racers.map((r) => r.stderr).join('\n'));
  const winner = Number(/^champion: \(none\) → v(\d)\n$/.exec(won[0].stdout)?.[1]);
  t.true(winner === 2 || winner === 3, won[0].stdout);
  refused(
    t,
    lost[0],
    new RegExp(
      `--alias: champion of m was moved while promoting: it now names v${winner} \\(alias by user-${winner} at \\S+\\), not \\(none\\) as read; nothing was written`
    )
  );

  const history = await modelHistory(store, 'm');
  t.deepEqual(
    history.filter((r) => r.action === 'alias').map((r) => [r.from, r.to, r.who]),
    [[null, winner, `user-${winner}`]],
    'one move, by the winner'
  );
  const listed = json<{ version: number; aliases: string[] }[]>(await stepwise(['ls', 'm', '--json'], env));
  t.deepEqual(
    listed.map((v) => v.aliases),
    [1, 2, 3].map((v) => (v === winner ? ['champion'] : []))
  );
  await store.close();
});

test('approve or reject of a version whose run awaits approval asks that run; a closed run leaves it to the registry', async (t) => {
  const { store, env } = await fsRegistry(t, 'm', 2);
  // The gate's records for two versions that passed and wait for a person (lib/registry/gate-stage.ts writes these).
  for (const [version, workflowId] of [
    [1, 'stepwise-m-gone'],
    [2, 'stepwise-m-closed'],
  ] as const) {
    await recordGate(store, 'm', version, 'candidate', {
      who: REGISTRY_IDENTITY,
      why: 'passed; awaiting approval',
      workflowId,
      details: { awaitingApproval: true },
    });
  }
  const state = await mkdtemp(join(tmpdir(), 'stepwise-models-temporal-'));
  const server = await startTemporalDevServer({ stateDir: state });
  const connection = await Connection.connect({ address: server.address });
  t.teardown(async () => {
    await connection.close();
    await server.stop();
    await rm(state, { recursive: true, force: true });
  });
  const temporal = { ...env, TEMPORAL_ADDRESS: server.address, TEMPORAL_NAMESPACE: server.namespace };

  refused(
    t,
    await stepwise(['approve', 'm@1', '--identity', 'alice'], temporal),
    /ref: v1 awaits approval in run stepwise-m-gone, which namespace default does not have: set TEMPORAL_ADDRESS/
  );
  t.like((await versionStatus(store, 'm', 1))?.record, { action: 'gate' }, 'nothing recorded');

  // A run that no longer runs (terminated while it waited) waits for nobody: the decision goes to the registry.
  const client = new Client({ connection, namespace: server.namespace });
  const closed = await client.workflow.start('distillationPipeline', {
    taskQueue: 'no-worker-polls-this',
    workflowId: 'stepwise-m-closed',
    args: [],
  });
  await closed.terminate('the test closes it');
  const rejected = await stepwise(['reject', 'm@2', '--comment', 'not now', '--identity', 'bob'], temporal);
  t.is(rejected.code, 0, rejected.stderr);
  t.is(rejected.stdout, 'm v2: candidate → rejected\n');
  t.regex(rejected.stderr, /run stepwise-m-closed is no longer running; recording the decision in the registry/);
  t.like((await versionStatus(store, 'm', 2))?.record, { action: 'reject', who: 'bob', why: 'not now' });
});
