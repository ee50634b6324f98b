import test from 'ava';
import { Client, Connection } from '@temporalio/client';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { ensureOnce, freePort, sleep, waitFor, withLock } from '../infra/cache';
import { setup } from '../infra/setup';
import { devDbSyncOf, startTemporalDevServer, type TemporalDevServer } from '../infra/temporal';
import { ensureTfjsNative, opLibraryPath } from '../infra/tfjs-native';

const repoRoot = resolve(__dirname, '..');

/** Running, that is: a zombie awaiting its reaper (PID 1 in a container may be slow to reap) counts as gone. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }, name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `stepwise-${name}-`));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('the Temporal dev server starts, accepts a client, keeps its state in stateDir and leaves no process when stopped', async (t) => {
  const stateDir = await tempDir(t, 'temporal');
  const server = await startTemporalDevServer({ stateDir });
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ address: server.address });
    const ns = await connection.workflowService.describeNamespace({ namespace: server.namespace });
    t.is(ns.namespaceInfo?.name, 'default');
    t.true(existsSync(join(stateDir, 'temporal.db')));
    t.is(server.dbFile, join(stateDir, 'temporal.db'));
    // The database is in write-ahead-log mode: bytes 18 and 19 of an SQLite file's header are 2 then, 1 otherwise.
    const header = await readFile(server.dbFile);
    t.deepEqual([header[18], header[19]], [2, 2]);
  } finally {
    await connection?.close();
    await server.stop();
  }
  t.false(alive(server.pid));
});

/** Starts a workflow no worker polls for on `server`: it stays open, which is exactly the state that must persist. */
async function startNeverRunning(server: TemporalDevServer, workflowId: string): Promise<void> {
  const connection = await Connection.connect({ address: server.address });
  try {
    await new Client({ connection, namespace: server.namespace }).workflow.start('neverRuns', {
      taskQueue: 'nobody-polls',
      workflowId,
    });
  } finally {
    await connection.close();
  }
}

/** The type and status of `workflowId` as `server` describes it; the server is stopped afterwards. */
async function describeThenStop(server: TemporalDevServer, workflowId: string): Promise<[string, string]> {
  try {
    const connection = await Connection.connect({ address: server.address });
    try {
      const d = await new Client({ connection, namespace: server.namespace }).workflow.getHandle(workflowId).describe();
      return [d.type, d.status.name];
    } finally {
      await connection.close();
    }
  } finally {
    await server.stop();
  }
}

test('workflow state survives a restart of the dev server on the same stateDir', async (t) => {
  const stateDir = await tempDir(t, 'temporal-restart');
  const first = await startTemporalDevServer({ stateDir, namespace: 'stepwise-test' });
  try {
    await startNeverRunning(first, 'survives-restart');
  } finally {
    await first.stop();
  }
  const second = await startTemporalDevServer({ stateDir, namespace: 'stepwise-test' });
  t.deepEqual(await describeThenStop(second, 'survives-restart'), ['neverRuns', 'RUNNING']);
});

/** The `synchronous=` pragma the dev server process `pid` was started with. */
function syncPragmaOf(pid: number): string | undefined {
  const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  return args.find((a) => a.startsWith('synchronous='));
}

test('a workflow start the dev server acknowledged survives the server being SIGKILLed (commits without a flush each)', async (t) => {
  const stateDir = await tempDir(t, 'temporal-kill');
  const first = await startTemporalDevServer({ stateDir, namespace: 'stepwise-test' });
  // The default: each commit goes to SQLite's log without waiting for its own flush to disk.
  t.is(syncPragmaOf(first.pid), 'synchronous=NORMAL');
  try {
    await startNeverRunning(first, 'survives-kill');
  } finally {
    // No shutdown and no checkpoint: only what SQLite had written when the start was acknowledged.
    process.kill(-first.pid, 'SIGKILL');
    await waitFor(() => !alive(first.pid), { timeoutMs: 10_000, what: 'the killed server to exit' });
    await first.stop();
  }
  const second = await startTemporalDevServer({ stateDir, namespace: 'stepwise-test', dbSync: 'full' });
  t.is(syncPragmaOf(second.pid), 'synchronous=FULL');
  t.deepEqual(await describeThenStop(second, 'survives-kill'), ['neverRuns', 'RUNNING']);
});

test('STEPWISE_DEV_DB_SYNC picks the dev server commit mode; anything but normal or full is refused by name', (t) => {
  t.is(devDbSyncOf(undefined, {}), 'normal');
  t.is(devDbSyncOf(undefined, { STEPWISE_DEV_DB_SYNC: 'FULL' }), 'full');
  t.is(devDbSyncOf('full', { STEPWISE_DEV_DB_SYNC: 'normal' }), 'full');
  const err = t.throws(() => devDbSyncOf(undefined, { STEPWISE_DEV_DB_SYNC: 'off' }));
  t.regex(err.message, /STEPWISE_DEV_DB_SYNC is "off"; expected one of normal, full/);
});

test('a dev server does not outlive a parent process that is killed with SIGKILL', async (t) => {
  const stateDir = await tempDir(t, 'temporal-orphan');
  const script = `
    const { startTemporalDevServer } = require('./infra/temporal');
    startTemporalDevServer({ stateDir: ${JSON.stringify(stateDir)} }).then((s) => console.log('PID ' + s.pid));
  `;
  const parent = spawn(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  parent.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const serverPid = await waitFor(() => Number(/PID (\d+)/.exec(output)?.[1]) || undefined, {
    timeoutMs: 60_000,
    what: 'the child to start a dev server',
  });
  t.true(alive(serverPid));
  parent.kill('SIGKILL');
  await waitFor(() => !alive(serverPid), {
    timeoutMs: 20_000,
    what: `server ${serverPid} to exit after its parent died`,
  });
  t.false(alive(serverPid));
});

test('a dev server start that fails reports the server output', async (t) => {
  const stateDir = await tempDir(t, 'temporal-fail');
  // Hold the port, so the server cannot bind it and exits.
  const sockets = new Set<import('node:net').Socket>();
  const blocker = createServer((socket) => sockets.add(socket.on('error', () => undefined)));
  const port = await freePort();
  await new Promise<void>((ok) => blocker.listen(port, '127.0.0.1', ok));
  try {
    const err = await t.throwsAsync(startTemporalDevServer({ stateDir, port, startTimeoutMs: 30_000 }));
    t.regex(err?.message ?? '', /temporal server start-dev (exit|signal)/);
    t.regex(err?.message ?? '', new RegExp(String(port)));
  } finally {
    // The readiness probe may have connected to the blocker; its sockets would keep the test process alive.
    for (const socket of sockets) socket.destroy();
    blocker.close();
  }
});

test('ensureOnce produces a target once when several callers race for it', async (t) => {
  const dir = await tempDir(t, 'cache');
  const target = join(dir, 'artifact', 'payload.txt');
  await mkdir(join(dir, 'artifact'));
  let produced = 0;
  const results = await Promise.all(
    Array.from({ length: 5 }, () =>
      ensureOnce(target, async (scratch) => {
        produced++;
        await sleep(50);
        await writeFile(scratch, 'payload');
      })
    )
  );
  t.is(produced, 1);
  t.deepEqual(results, Array(5).fill(target));
  t.is(await readFile(target, 'utf8'), 'payload');
});

test('withLock breaks a lock left behind by a process that no longer exists', async (t) => {
  const dir = await tempDir(t, 'lock');
  const deadPid = spawnSync(process.execPath, ['-e', 'console.log(process.pid)']).stdout.toString().trim();
  const lockDir = join(dir, 'thing.lock');
  await mkdir(lockDir);
  await writeFile(join(lockDir, 'owner.json'), JSON.stringify({ pid: Number(deadPid), host: hostname() }));
  const value = await withLock(lockDir, async () => 'ran', { timeoutMs: 5_000 });
  t.is(value, 'ran');
  t.false(existsSync(lockDir));
});

test('freePort returns a loopback port that can be bound, outside the range outgoing connections draw from', async (t) => {
  const ephemeralLow = existsSync('/proc/sys/net/ipv4/ip_local_port_range')
    ? Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    : 32_768;
  const ports: number[] = [];
  for (let i = 0; i < 20; i++) ports.push(await freePort());
  for (const port of ports) {
    t.true(port >= 1024 && port < ephemeralLow, `port ${port} lies below the ephemeral range (${ephemeralLow})`);
  }
  // Drawn at random, so tests starting services at once rarely pick the same one.
  t.true(new Set(ports).size >= 18, ports.join(' '));
  const server = createServer();
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(ports[0], '127.0.0.1', ok));
  server.close();
});

test('setup returns a working Temporal CLI', async (t) => {
  const { temporalCli } = await setup({ temporal: true });
  t.truthy(temporalCli);
  const version = spawnSync(temporalCli!, ['--version']).stdout.toString();
  t.regex(version, /temporal version/);
});

test('ensureTfjsNative builds Stepwise’s kernels from this checkout’s source and checks them', async (t) => {
  const status = await ensureTfjsNative();
  if (!status.ok) {
    t.log(`no native build here: ${status.reason}`);
    t.pass();
    return;
  }
  // Checked in a child process against the fused AdamW's formula (infra/tfjs-native.ts) before it is kept.
  t.deepEqual(status.ops, { ok: true, library: opLibraryPath() });
  t.true(existsSync(opLibraryPath()));
  // Keyed by the source: the cached build is this source's, and an edited kernel would be a new path.
  t.regex(opLibraryPath(), /\/ops\/[0-9a-f]{16}\/stepwise_ops\.node$/);
});

test('ensureTfjsNative reports why it is skipped instead of throwing', async (t) => {
  const saved = process.env.STEPWISE_SKIP_NATIVE;
  process.env.STEPWISE_SKIP_NATIVE = '1';
  try {
    const status = await ensureTfjsNative();
    t.false(status.ok);
    t.regex(status.ok ? '' : status.reason, /STEPWISE_SKIP_NATIVE/);
  } finally {
    if (saved === undefined) delete process.env.STEPWISE_SKIP_NATIVE;
    else process.env.STEPWISE_SKIP_NATIVE = saved;
  }
});
