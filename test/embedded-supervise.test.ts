/**
 * The embedded services (what `npm start` runs in one process) keep themselves running: no process supervisor
 * watches the CLI's own server and workers, so without this a run would wait forever for the one that is gone. A
 * worker that stops on its own is replaced; a server killed under a run is started again on the same state and port.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { CPU_TASK_QUEUE, progressQuery, type PipelineResult } from '../contract';
import { startEmbedded } from '../workers/embedded';
import { distillationPipeline } from '../workflows';
import { isAlive } from './helpers/processes';
import { sleep, waitFor, within } from './helpers/wait';

/** Embedded services in a fresh state folder, stopped after the test; what they say is kept in `lines`. */
async function embeddedFor(t: ExecutionContext) {
  const home = await mkdtemp(join(tmpdir(), 'stepwise-supervise-'));
  const lines: string[] = [];
  const embedded = await startEmbedded({
    stateDir: join(home, 'state'),
    store: pathToFileURL(join(home, 'artifacts')).href,
    log: (line) => lines.push(line),
    serverLog: () => undefined,
  });
  t.teardown(async () => {
    await embedded.stop();
    await rm(home, { recursive: true, force: true });
  });
  return { embedded, lines };
}

/** A small run on the embedded services: the demo task, the scripted teacher, a tiny student. */
function startRun(embedded: Awaited<ReturnType<typeof startEmbedded>>, steps: number) {
  return embedded.client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `supervise-${Date.now()}`,
    args: [
      {
        name: 'supervised',
        data: { kind: 'demo', size: 120, seed: 3 },
        teacher: { kind: 'scripted' },
        student: { preset: 'tiny', steps, batchSize: 8, checkpointEvery: 20 },
      },
    ],
  });
}

test.serial('an embedded worker that stops on its own is replaced, and the run it served completes', async (t) => {
  t.timeout(4 * 60_000);
  const { embedded, lines } = await embeddedFor(t);
  const handle = await startRun(embedded, 20);
  // Under way: its workflow worker has answered. Then that worker ends, as the SDK ends one it gives up on.
  await waitFor('the run to answer a query', () => handle.query(progressQuery), 60_000);
  const first = embedded.workers.current('cpu');
  t.truthy(first);
  first!.shutdown();

  const result = (await within(
    handle.result(),
    180_000,
    () => `the run to complete:\n${lines.join('\n')}`
  )) as PipelineResult;
  t.is(result.name, 'supervised');
  t.is(result.version, 1);
  t.is(embedded.workers.restarts(), 1, lines.join('\n'));
  t.not(embedded.workers.current('cpu'), first, 'another worker serves the CPU queue');
  t.is(embedded.workers.current('cpu')!.getState(), 'RUNNING');
  t.regex(lines.join('\n'), /stepwise: the embedded cpu worker stopped; starting another in 1 s/);
});

test.serial('an embedded server killed under a run is started again on its port, and the run completes', async (t) => {
  t.timeout(5 * 60_000);
  const { embedded, lines } = await embeddedFor(t);
  const handle = await startRun(embedded, 60);
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
  t.is(now.address, killed.address, 'the same port, where the workers and clients look for it');
  t.is(embedded.workers.restarts(), 0, 'the workers rode out the outage');
  const said = lines.join('\n');
  t.regex(
    said,
    /stepwise: the embedded Temporal server stopped \(signal SIGKILL\); starting it again on the same state/
  );
  t.regex(said, new RegExp(`stepwise: the embedded Temporal server is back at ${now.address}`));
});
