/**
 * The embedded services (what `npm start` runs in one process) keep their Temporal server running: no process
 * supervisor watches the CLI's own server, so without this a run would wait forever for a server that is gone. One
 * killed under a run is started again on the same state and port, and the run completes.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import { CPU_TASK_QUEUE, progressQuery, type PipelineResult } from '../contract';
import { startEmbedded } from '../workers/embedded';
import { distillationPipeline } from '../workflows';
import { isAlive } from './helpers/processes';
import { sleep, waitFor, within } from './helpers/wait';

test('an embedded server killed under a run is started again on its port, and the run completes', async (t) => {
  t.timeout(5 * 60_000);
  const home = await mkdtemp(join(tmpdir(), 'stepwise-supervise-'));
  const lines: string[] = [];
  const embedded = await startEmbedded({
    stateDir: join(home, 'state'),
    store: pathToFileURL(join(home, 'artifacts')).href,
    log: (line) => lines.push(line),
    serverLog: () => undefined,
  });
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await embedded.stop();
    await rm(home, { recursive: true, force: true });
  });
  const handle = await embedded.client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `supervise-${Date.now()}`,
    args: [
      {
        name: 'supervised',
        data: { kind: 'demo', size: 120, seed: 3 },
        teacher: { kind: 'scripted' },
        student: { preset: 'tiny', steps: 60, batchSize: 8, checkpointEvery: 20 },
      },
    ],
  });
  await waitFor(
    'training to run',
    async () => ((await handle.query(progressQuery)).stage === 'trainStudent' ? true : undefined),
    120_000
  );
  const killed = embedded.server.current();
  // The whole process group, no chance to shut down: as the OOM killer or a stray kill would.
  process.kill(-killed.pid, 'SIGKILL');
  await waitFor('the server to be gone', () => (isAlive(killed.pid) ? undefined : true), 10_000);

  // The client rides out the outage as the workers do: a lost connection is asked again, a failed run is an answer.
  const result = await within(
    (async () => {
      for (;;) {
        try {
          return (await handle.result()) as PipelineResult;
        } catch (err) {
          if ((err as Error).name === 'WorkflowFailedError') throw err;
          await sleep(500);
        }
      }
    })(),
    240_000,
    () => `the run to complete across the restart:\n${lines.join('\n')}`
  );
  t.is(result.version, 1);
  t.is(embedded.server.restarts(), 1, lines.join('\n'));
  const now = embedded.server.current();
  t.not(now.pid, killed.pid);
  t.true(isAlive(now.pid));
  t.is(now.address, killed.address, 'the same port, where the workers and clients look for it');
  const said = lines.join('\n');
  t.regex(
    said,
    /stepwise: the embedded Temporal server stopped \(signal SIGKILL\); starting it again on the same state/
  );
  t.regex(said, new RegExp(`stepwise: the embedded Temporal server is back at ${now.address}`));

  // Stopped on purpose, it stays stopped.
  stopped = true;
  await embedded.stop();
  await sleep(1_500);
  t.false(isAlive(now.pid), 'the server is stopped');
  t.is(embedded.server.restarts(), 1, 'and not started again');
  t.is(lines.filter((l) => /server stopped/.test(l)).length, 1, lines.join('\n'));
});
