/**
 * The sweep, end to end on real services: a 2 methods × 1 fraction × 2 seeds sweep of tiny students on the demo task
 * runs as one parent workflow of child pipelines; both worker processes are SIGKILLed while a cell trains and new
 * ones continue the sweep without redoing a finished cell; the table and the plot are in the store; and a second
 * sweep of the same grid reuses every finished cell instead of training it again.
 */
import type { ChildProcess } from 'node:child_process';
import test from 'ava';
import { CPU_TASK_QUEUE, sweepProgressQuery, type SweepProgress } from '../contract';
import { distillationSweep, type SweepInput } from '../workflows';
import { getVersion, listVersions } from '../lib/registry/registry';
import { readSweepResult } from '../lib/sweep/finish';
import type { SweepSummary } from '../lib/sweep/summary';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { killGroup } from './helpers/processes';
import { waitFor } from './helpers/wait';

const workers = new Set<ChildProcess>();
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => {
  for (const w of workers) killGroup(w, 'SIGKILL');
});
const services = servicesForFile({ workers: [] });

async function startWorkerSet(log: string[]): Promise<ChildProcess[]> {
  const set = await Promise.all(
    (['cpu', 'gpu'] as const).map((queue) => startWorkerProcess(services(), queue, log, { detached: true }))
  );
  for (const w of set) {
    workers.add(w);
    w.on('exit', () => workers.delete(w));
  }
  return set;
}

const sweep: SweepInput = {
  spec: {
    name: 'sweep-test',
    data: { kind: 'demo', size: 120, seed: 5 },
    teacher: { kind: 'scripted' },
    student: {
      preset: 'tiny',
      // A shape of one's own: it must reach the model and its lineage.
      config: { d_ff: 96, num_decoder_layers: 1 },
      vocabSize: 300,
      steps: 60,
      batchSize: 16,
      checkpointEvery: 10,
      // A killed worker is noticed 5 s after its last heartbeat (the default 2 minutes would outlast the test).
      heartbeatTimeoutSeconds: 5,
    },
  },
  methods: ['standard-finetune', 'distill-step-by-step'],
  fractions: [1],
  seeds: [0, 1],
  parallel: 1,
};

test.serial(
  'a sweep survives its killed workers, stores its table and plot, and a re-run reuses its cells',
  async (t) => {
    t.timeout(600_000);
    const { client, store } = services();
    const log: string[] = [];
    let set = await startWorkerSet(log);
    const handle = await client.workflow.start(distillationSweep, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `sweep-test-${Date.now()}`,
      args: [sweep],
    });

    // Kill both workers once a cell has finished and the next one is training.
    const before = await waitFor(
      'a finished cell and a training one',
      async () => {
        const p: SweepProgress = await handle.query(sweepProgressQuery);
        const running = p.cells.find((c) => c.status === 'running');
        if (!running || !p.cells.some((c) => c.status === 'done')) return undefined;
        const { raw } = await client.workflow.getHandle(running.workflowId).describe();
        return raw.pendingActivities?.some((a) => a.activityType?.name === 'trainStudent') ? p : undefined;
      },
      300_000
    );
    for (const w of set) killGroup(w, 'SIGKILL');
    const finishedBefore = before.cells.filter((c) => c.status === 'done').map((c) => c.workflowId);
    t.log(`killed the worker set with ${finishedBefore.length} cell(s) done`);

    set = await startWorkerSet(log);
    const result = await handle.result();
    t.is(result.cells.length, 4);
    t.deepEqual(
      result.cells.map((c) => c.status),
      ['done', 'done', 'done', 'done'],
      JSON.stringify(result.cells.map((c) => c.error))
    );
    for (const cell of result.cells) {
      t.true(cell.accuracy! >= 0 && cell.accuracy! <= 1);
      // One registered version per cell: a cell redone after the restart would have registered a second.
      t.deepEqual(await listVersions(store, cell.name), [1], cell.name);
      const version = (await getVersion(store, cell.name, 1))!;
      t.like(version.lineage.training.model, { d_ff: 96, num_decoder_layers: 1, d_model: 64, num_layers: 2 });
      t.true((version.lineage.training.model!.vocab_size as number) <= 300);
    }

    // The table and the plot, found through the sweep's record in the store.
    const record = (await readSweepResult(store, handle.workflowId))!;
    t.truthy(record, 'the sweep result record is in the store');
    const summary = JSON.parse((await store.get(record.summary)).toString('utf8')) as SweepSummary;
    const markdown = (await store.get(record.markdown)).toString('utf8');
    const svg = (await store.get(record.plot)).toString('utf8');
    for (const method of sweep.methods) {
      const accs = result.cells.filter((c) => c.method === method).map((c) => c.accuracy!);
      const mean = (accs[0] + accs[1]) / 2;
      const row = summary.rows.find((r) => r.method === method && r.fraction === 1)!;
      t.is(row.n, 2);
      t.true(Math.abs(row.mean - mean) < 1e-12, `${method}: mean ${row.mean} vs ${mean}`);
      t.true(markdown.includes(method), `the table names ${method}`);
    }
    t.regex(svg, /^<svg[\s>]/);

    // The same grid again, as a new sweep: every cell is found in the registry and reused, nothing trains.
    const again = await client.workflow.execute(distillationSweep, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `sweep-test-again-${Date.now()}`,
      args: [sweep],
    });
    t.deepEqual(
      again.cells.map((c) => c.status),
      ['reused', 'reused', 'reused', 'reused']
    );
    t.deepEqual(
      again.cells.map((c) => [c.workflowId, c.accuracy]),
      result.cells.map((c) => [c.workflowId, c.accuracy])
    );
    for (const cell of again.cells) t.deepEqual(await listVersions(store, cell.name), [1], cell.name);
    for (const w of set) killGroup(w, 'SIGKILL');
  }
);
