/**
 * `stepwise sweep`: the paper's comparison (methods × training fractions × seeds) as one durable sweep workflow
 * (workflows/sweep.ts), followed to its table and plot; `stepwise sweep status|result SWEEP_ID` look at one later.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import { WorkflowExecutionAlreadyStartedError, type WorkflowHandle } from '@temporalio/client';
import { CPU_TASK_QUEUE, sweepProgressQuery, type SweepCellProgress, type SweepProgress } from '../../contract';
import { settings } from '../../infra/config';
import { parseSpec, SpecError, type PipelineSpec } from '../../lib/pipeline/spec';
import { cellSpec, checkSweep, sweepWorkflowId } from '../../lib/sweep/plan';
import { readSweepResult, type SweepArtifacts } from '../../lib/sweep/finish';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import { InputError } from '../../lib/errors';
import { checkSpecPaths } from '../../lib/data/roots';
import type { Method } from '../../lib/student/options';
import { settledWithin } from '../../lib/wait';
import { distillationSweep, type SweepInput } from '../../workflows';
import { log, number } from '../shared/options';
import { queryWithin, UnansweredQueries } from '../shared/progress';
import { specFromFlags, type RunFlags } from '../shared/spec-flags';
import { openServices, type Services } from '../shared/services';

interface SweepFlags extends RunFlags {
  methods: string;
  fractions: string;
  seeds: string;
  parallel?: number;
  newSweep?: boolean;
  out?: string;
  verbose?: boolean;
}

const list = (value: string) => value.split(',').map((v) => v.trim());
const numbers = (field: string, value: string) =>
  list(value).map((v) => {
    const n = Number(v);
    if (v === '' || !Number.isFinite(n)) throw new InputError(`${field} has '${v}'; expected a number`, field);
    return n;
  });

export function addSweepCommand(program: Command): void {
  const sweep = program
    .command('sweep')
    .description('run the paper comparison (methods × training fractions × seeds) as one durable sweep');
  sweep
    .command('start [spec]', { isDefault: true })
    .description('start a sweep of a base spec (or attach to it) and follow it to its table and plot')
    .option('--demo', 'the zero-config demo spec as the base')
    .option('--methods <list>', 'comma-separated methods', 'standard-finetune,standard-distill,distill-step-by-step')
    .option('--fractions <list>', 'comma-separated training fractions in (0, 1]', '1')
    .option('--seeds <list>', 'comma-separated seeds (the student seed of each cell)', '0')
    .option('--parallel <n>', 'child pipelines at once (default 1: cells share this machine)', number('--parallel'))
    .option('--name <name>', 'registry name prefix of the cells (<name>-<ft|sd|dss>-f<fraction>-s<seed>)')
    .option('--steps <n>', 'training steps of every cell', number('--steps'))
    .option('--store <location>', 'artifact store: a folder, file:///path or s3://bucket/prefix (env STEPWISE_STORE)')
    .option('--new-sweep', 'a new sweep even if this one finished (finished cells are still reused)')
    .option('--out <dir>', 'also write the table (JSON, Markdown) and the plot (SVG) into this folder')
    .option('--detach', 'print the sweep id and return (needs TEMPORAL_ADDRESS)')
    .option('--json', 'print the result as one JSON line')
    .option('--verbose', "embedded: also print the dev server's output and the workers' logs (always in <state>/logs)")
    .action((file: string | undefined, flags: SweepFlags) => startSweep(file, flags));
  sweep
    .command('status <sweepId>')
    .description("a sweep's cells and where each stands")
    .option('--json', 'one JSON line')
    .action((id: string, flags: { json?: boolean }) => sweepStatus(id, flags));
  sweep
    .command('result <sweepId>')
    .description("a finished sweep's table, and where its plot is")
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option('--out <dir>', 'also write the table (JSON, Markdown) and the plot (SVG) into this folder')
    .option('--json', 'one JSON line')
    .action((id: string, flags: { store?: string; out?: string; json?: boolean }) => sweepResult(id, flags));
}

/** The sweep's input from the spec and the flags, checked before anything starts (exit 2 when refused). */
async function sweepInput(file: string | undefined, flags: SweepFlags): Promise<SweepInput | undefined> {
  try {
    const spec: PipelineSpec = parseSpec(await specFromFlags(file, flags));
    const grid = checkSweep({
      methods: list(flags.methods) as Method[],
      fractions: numbers('fractions', flags.fractions),
      seeds: numbers('seeds', flags.seeds),
    });
    // Every cell's spec (its name, above all) is checked here too, so a grid that cannot run never starts.
    for (const m of grid.methods) for (const f of grid.fractions) for (const s of grid.seeds) cellSpec(spec, m, f, s);
    // Embedded, this process's workers read the data: a missing folder is refused before the services start.
    if (!settings().clusterConfigured) await checkSpecPaths(spec, settings().dataRoots);
    const command = ['stepwise', 'sweep', ...process.argv.slice(process.argv.indexOf('sweep') + 1)].join(' ');
    return { spec, ...grid, parallel: flags.parallel ?? 1, command };
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    log(`stepwise sweep: ${err instanceof SpecError ? 'invalid spec: ' : ''}${err.message}`);
    process.exitCode = 2;
    return undefined;
  }
}

async function startSweep(file: string | undefined, flags: SweepFlags): Promise<void> {
  const input = await sweepInput(file, flags);
  if (!input) return;
  if (flags.detach && !settings().clusterConfigured) {
    log(
      'stepwise sweep --detach needs a Temporal cluster (set TEMPORAL_ADDRESS): the embedded server stops with this process'
    );
    process.exitCode = 2;
    return;
  }
  const location = flags.store ?? settings().store;
  const sweepId =
    (await sweepWorkflowId(input)) +
    (flags.newSweep ? `-${new Date().toISOString().replace(/[-:.]/g, '').slice(0, 15)}` : '');
  const services = await openServices(location, { verbose: flags.verbose });
  try {
    const handle = await startOrAttach(services, sweepId, input);
    if (flags.detach) {
      console.log(flags.json ? JSON.stringify({ sweepId }) : sweepId);
      return;
    }
    const result = await follow(handle);
    const store = openStore(location);
    try {
      await report(store, result.artifacts, flags);
    } finally {
      await store.close();
    }
  } finally {
    await services.stop();
  }
}

/** Starts the sweep, or attaches to the one in flight; a finished one is reported, not run again. */
async function startOrAttach(services: Services, sweepId: string, input: SweepInput) {
  try {
    const handle = await services.client.workflow.start(distillationSweep, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: sweepId,
      args: [input],
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE_FAILED_ONLY',
    });
    log(`stepwise: sweep ${sweepId} (${input.methods.length * input.fractions.length * input.seeds.length} cells)`);
    return handle;
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    log(`stepwise: sweep ${sweepId} already finished: its result follows (--new-sweep runs it again, reusing cells)`);
    return services.client.workflow.getHandle<typeof distillationSweep>(sweepId);
  }
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

function cellLine(c: SweepCellProgress): string {
  const what = `${c.method} fraction ${c.fraction} seed ${c.seed}`;
  if (c.status === 'failed') return `✖ ${what}: ${c.error ?? 'failed'}`;
  const mark = c.status === 'reused' ? '↺' : c.status === 'running' ? '…' : '✔';
  return `${mark} ${what}${c.accuracy !== undefined ? `: ${pct(c.accuracy)}` : ''} (${c.workflowId})`;
}

/** Prints each cell as it changes, until the sweep ends; returns its result. */
async function follow(handle: WorkflowHandle<typeof distillationSweep>) {
  const seen = new Map<string, string>();
  const show = (p: SweepProgress) => {
    for (const c of p.cells) {
      if (seen.get(c.workflowId) === c.status) continue;
      seen.set(c.workflowId, c.status);
      if (c.status !== 'pending') log(cellLine(c));
    }
  };
  let done = false;
  const result = handle.result().finally(() => (done = true));
  // As the pipeline's follower does (cli/shared/progress.ts): each query bounded, a long silence said once.
  const quiet = new UnansweredQueries(handle.workflowId);
  while (!done) {
    const p = await queryWithin(handle, () => handle.query(sweepProgressQuery)).catch((err: unknown) => {
      quiet.failed(err);
      return undefined;
    });
    if (p) {
      show(p);
      quiet.answered();
    }
    await settledWithin(result, 2000);
  }
  const r = await result;
  show({ phase: 'done', parallel: 0, cells: r.cells.map((c) => ({ ...c, status: c.status })) });
  return r;
}

/** The table on stdout (or one JSON line), the artifacts' locations on stderr, and copies in `--out`. */
async function report(
  store: ArtifactStore,
  artifacts: SweepArtifacts,
  flags: { out?: string; json?: boolean }
): Promise<void> {
  const [markdown, summary, plot] = await Promise.all([
    store.get(artifacts.markdown),
    store.get(artifacts.summary),
    store.get(artifacts.plot),
  ]);
  if (flags.out) {
    await mkdir(flags.out, { recursive: true });
    await Promise.all([
      writeFile(join(flags.out, 'summary.json'), summary),
      writeFile(join(flags.out, 'table.md'), markdown),
      writeFile(join(flags.out, 'plot.svg'), plot),
    ]);
  }
  if (flags.json) {
    console.log(JSON.stringify({ ...artifacts, summary: JSON.parse(summary.toString('utf8')) }));
  } else {
    console.log(markdown.toString('utf8'));
  }
  log(`stepwise: table ${artifacts.uris.markdown}`);
  log(`stepwise: plot ${artifacts.uris.plot}`);
  if (flags.out) log(`stepwise: copies in ${flags.out}/ (summary.json, table.md, plot.svg)`);
}

async function sweepStatus(sweepId: string, flags: { json?: boolean }): Promise<void> {
  const services = await openServices(settings().store);
  try {
    const handle = services.client.workflow.getHandle<typeof distillationSweep>(sweepId);
    const progress = await handle.query(sweepProgressQuery);
    if (flags.json) {
      console.log(JSON.stringify(progress));
      return;
    }
    const count = (s: string) => progress.cells.filter((c) => c.status === s).length;
    console.log(
      `${sweepId}: ${progress.phase}; ${count('done')} done, ${count('reused')} reused, ${count('running')} running, ` +
        `${count('pending')} pending, ${count('failed')} failed of ${progress.cells.length}`
    );
    for (const c of progress.cells)
      console.log(c.status === 'pending' ? `  ${c.method} ${c.fraction} ${c.seed}` : cellLine(c));
  } finally {
    await services.stop();
  }
}

async function sweepResult(sweepId: string, flags: { store?: string; out?: string; json?: boolean }): Promise<void> {
  const store = openStore(flags.store ?? settings().store);
  try {
    const record = await readSweepResult(store, sweepId);
    if (!record) {
      log(
        `stepwise sweep result: no finished sweep ${sweepId} in ${store.uri('sweeps/')} (\`stepwise sweep status\` shows one in flight)`
      );
      process.exitCode = 3;
      return;
    }
    await report(store, record, flags);
  } finally {
    await store.close();
  }
}
