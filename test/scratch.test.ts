/**
 * Scratch folders (lib/scratch.ts): a killed worker's are removed by the next sweep, a live process's never, and a
 * folder whose maker cannot be judged from here (another pid namespace, no owner record) is left alone.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import test from 'ava';
import { currentOwner, OWNER_FILE, ownerGone, sweepScratch, type ScratchOwner } from '../lib/scratch';
import { clearScratchLeftovers } from '../workers/pipeline-worker';
import { tempDir } from './helpers/temp';

const ROOT = resolve(__dirname, '..');

/**
 * A separate process that makes a scratch folder under `tmp`, writes a partial checkpoint in it, prints the folder and
 * then waits to be killed, as a worker mid-training does.
 */
async function maker(tmp: string) {
  const code =
    "const { scratchDir } = require('./lib/scratch'); const { writeFileSync } = require('node:fs');" +
    "scratchDir('train').then((d) => { writeFileSync(d + '/resume-60.safetensors.partial-1', 'x'.repeat(1000));" +
    'console.log(d); setInterval(() => {}, 1000); });';
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', code], {
    cwd: ROOT,
    env: { ...process.env, TMPDIR: tmp },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const lines = createInterface({ input: child.stdout! });
  const first = await lines[Symbol.asyncIterator]().next();
  lines.close();
  if (first.done) throw new Error('the scratch maker printed nothing');
  return {
    dir: first.value as string,
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

test('a killed process leaves its scratch folder; the next sweep removes it, and never a live one', async (t) => {
  const tmp = await tempDir(t, 'stepwise-scratch-test-');
  const live = await maker(tmp);
  t.teardown(() => live.kill());
  const killed = await maker(tmp);
  await killed.kill();

  t.true(existsSync(join(killed.dir, 'resume-60.safetensors.partial-1')), 'the kill left the partial checkpoint');
  const removed = await sweepScratch({ root: tmp });
  t.deepEqual(removed, [killed.dir]);
  t.false(existsSync(killed.dir));
  t.true(existsSync(join(live.dir, 'resume-60.safetensors.partial-1')), "a live process's folder stays");

  await live.kill();
  t.deepEqual(await sweepScratch({ root: tmp }), [live.dir]);
  t.deepEqual(
    (await readdir(tmp)).filter((name) => name.startsWith('stepwise-')),
    []
  );
});

test('folders without a readable owner record, or not named as scratch, are never touched', async (t) => {
  const tmp = await tempDir(t, 'stepwise-scratch-test-');
  await mkdir(join(tmp, 'stepwise-train-noowner'));
  await mkdir(join(tmp, 'other-dir'));
  await writeFile(join(tmp, 'other-dir', OWNER_FILE), JSON.stringify({ ...currentOwner(), pid: 2 ** 22 + 1 }));
  const garbled = ['{not json', 'null', '[]', '7', '{"pid":"1","host":"x"}'];
  for (const [i, text] of garbled.entries()) {
    await mkdir(join(tmp, `stepwise-train-garbled${i}`));
    await writeFile(join(tmp, `stepwise-train-garbled${i}`, OWNER_FILE), text);
  }
  t.deepEqual(await sweepScratch({ root: tmp }), []);
  t.deepEqual(await sweepScratch({ root: tmp, exclusive: true }), [], 'not even a worker that owns its temp dir');
  t.deepEqual(
    (await readdir(tmp)).sort(),
    ['other-dir', ...garbled.map((_, i) => `stepwise-train-garbled${i}`), 'stepwise-train-noowner'].sort()
  );
});

test('an owner is gone only when provably so: its pid free or reused, in this pid namespace and host', (t) => {
  const me = currentOwner();
  // Beyond Linux's pid_max (2^22), so never a live pid.
  const free = 2 ** 22 + 7;
  t.true(ownerGone({ ...me, pid: free }, me), 'a free pid');
  t.false(ownerGone(me, me), 'this very process');
  if (me.start !== undefined) {
    t.true(ownerGone({ ...me, start: `${me.start}0` }, me), 'this pid, but a process that started at another time');
    const parent: ScratchOwner = { ...me, pid: process.ppid, start: undefined };
    t.false(ownerGone(parent, me), 'a live pid with no start time to tell reuse: kept');
  }
  t.false(ownerGone({ ...me, pid: free, pidNamespace: 'pid:[1]' }, me), 'another pid namespace: not ours to judge');
  t.false(ownerGone({ ...me, pid: free, host: `${me.host}-other` }, me), 'another host: not ours to judge');
  t.false(ownerGone({ ...me, pid: -1 }, me), 'a nonsense pid');
  // A worker whose temp dir is its own judges every other maker gone, a container's earlier incarnation included.
  t.true(ownerGone({ ...me, pid: free, pidNamespace: 'pid:[1]' }, me, true));
  t.true(ownerGone({ ...me, pid: process.ppid }, me, true));
  t.false(ownerGone(me, me, true));
});

test('a starting worker clears what killed workers left in its temp dir, and says so', async (t) => {
  const tmp = await tempDir(t, 'stepwise-scratch-test-');
  const killed = await maker(tmp);
  await killed.kill();
  const before = process.env.TMPDIR;
  process.env.TMPDIR = tmp;
  t.teardown(() => {
    if (before === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = before;
  });
  const lines: string[] = [];
  await clearScratchLeftovers((line) => lines.push(line));
  t.false(existsSync(killed.dir));
  t.is(lines.length, 1);
  t.regex(lines[0], /removed 1 scratch folder\(s\) of processes that are gone: .*stepwise-train-/);
});
