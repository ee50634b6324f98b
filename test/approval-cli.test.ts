/**
 * Human approval as a user does it: `stepwise run` (embedded mode) trains a candidate whose gate asks for approval
 * and says so, naming the command; `stepwise models approve … --comment` in a second process, pointed at the
 * running dev server, sends the Update; the run then finishes promoted and the audit log holds the comment.
 */
import { execFile, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { openStore } from '../lib/store';
import { getAlias, modelHistory } from '../lib/registry/audit';
import { tempDir } from './helpers/temp';

const BIN = resolve(__dirname, '..', 'bin', 'stepwise.js');

const spec = (approval: boolean) => ({
  name: 'approval-cli',
  data: { kind: 'demo', size: 120, seed: approval ? 4 : 3 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 20, batchSize: 16 },
  gate: approval ? { minImprovement: -1, approval: { timeoutSeconds: 600 } } : { firstVersion: 'always' },
});

test('a run awaiting approval names the command; `models approve` from another process promotes it', async (t) => {
  const dir = await tempDir(t, 'stepwise-approval-cli-');
  const env = {
    ...process.env,
    STEPWISE_HOME: join(dir, 'state'),
    STEPWISE_STORE: `file://${join(dir, 'store')}`,
    TEMPORAL_ADDRESS: '',
  };
  const files = await Promise.all(
    [false, true].map(async (approval) => {
      const file = join(dir, `spec-${approval}.json`);
      await writeFile(file, JSON.stringify(spec(approval)));
      return file;
    })
  );
  await promisify(execFile)(process.execPath, [BIN, 'run', files[0]], { env });

  const waiting = spawn(process.execPath, [BIN, 'run', files[1], '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  waiting.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  const exited = new Promise<number | null>((r) => waiting.once('exit', r));
  const hint = await new Promise<RegExpExecArray>((resolveHint, reject) => {
    waiting.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      const m =
        /awaiting approval: approval-cli v2 for champion, until \S+ \(TEMPORAL_ADDRESS=(\S+) stepwise models approve\|reject approval-cli@2\)/.exec(
          stderr
        );
      if (m) resolveHint(m);
    });
    void exited.then(() => reject(new Error(`the run ended without awaiting approval:\n${stderr}`)));
  });

  const approve = await promisify(execFile)(
    process.execPath,
    [BIN, 'models', 'approve', 'approval-cli@2', '--comment', 'reviewed the errors', '--identity', 'carol', '--json'],
    { env: { ...env, TEMPORAL_ADDRESS: hint[1] } }
  );
  t.like(JSON.parse(approve.stdout.trim().split('\n').at(-1)!), { outcome: 'promoted', version: 2, previous: 1 });
  t.is(await exited, 0, stderr);
  t.like(JSON.parse(stdout.trim().split('\n').at(-1)!).promotion, { outcome: 'promoted', decidedBy: 'carol' });

  const store = openStore(env.STEPWISE_STORE);
  t.is((await getAlias(store, 'approval-cli', 'champion'))?.version, 2);
  const approval = (await modelHistory(store, 'approval-cli')).find((r) => r.action === 'approve')!;
  t.like(approval, { version: 2, who: 'carol', why: 'reviewed the errors' });
  await store.close();
});
