/**
 * `stepwise runs ls`: pipeline runs as Temporal's visibility store lists them, found by their search attributes
 * (contract/search-attributes.ts), with the stage a running one is in.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import {
  progressQuery,
  StepwiseDatasetHash,
  StepwiseMethod,
  StepwiseModel,
  StepwiseOutcome,
  StepwiseTask,
  RUN_OUTCOMES,
  type PipelineProgress,
  type RunOutcome,
} from '../../contract';
import { settings } from '../../infra/config';
import { setup } from '../../infra/setup';
import { startTemporalDevServer } from '../../infra/temporal';
import { StateInUseError } from '../../infra/db-lock';
import { InputError } from '../../lib/errors';
import { checkModelName, MODEL_NAME_PATTERN } from '../../lib/registry/names';
import { connectClient } from '../../workers/connection';
import { devServerSearchAttributes } from '../../workers/search-attributes';
import { connectCluster } from '../shared/services';
import { log } from '../shared/options';

/** `--status` values and the `ExecutionStatus` each stands for in a visibility query. */
export const STATUSES = {
  running: 'Running',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Canceled',
  terminated: 'Terminated',
  'timed-out': 'TimedOut',
  'continued-as-new': 'ContinuedAsNew',
} as const;
export type StatusFlag = keyof typeof STATUSES;

/** How long a running run has to answer the progress query: one whose workers are down would otherwise hang `ls`. */
const QUERY_DEADLINE_MS = 3_000;

/** One listed run, as `--json` prints it. */
export interface RunListing {
  workflowId: string;
  runId: string;
  /** Temporal's execution status, in the flag's spelling: `running`, `completed`, `failed`, `cancelled`, `timed-out`, … */
  status: string;
  startTime: string;
  closeTime?: string;
  model?: string;
  task?: string;
  method?: string;
  datasetHash?: string;
  /** The `StepwiseOutcome` attribute: `running`, `awaiting-approval`, `promoted`, `rejected`, `registered`, `failed`. */
  outcome?: string;
  /** A running run's stage as its progress query reports it (`trainStudent 40/120`, `awaiting approval`). */
  stage?: string;
}

interface RunsLsFlags {
  model?: string;
  status?: StatusFlag;
  limit: number;
  json?: boolean;
}

export function addRunsCommand(program: Command): void {
  const runs = program.command('runs').description('pipeline runs on the Temporal cluster (or the embedded state)');
  runs
    .command('ls')
    .description('list pipeline runs, newest first, with their model, method, outcome and current stage')
    .option('--model <name>', 'only runs of this registry model name (the StepwiseModel search attribute)', modelFlag)
    .addOption(new Option('--status <status>', 'only runs in this state').choices(Object.keys(STATUSES)))
    .option('--limit <n>', 'at most this many runs', limitFlag, 20)
    .option('--json', 'print the runs as one JSON array')
    .action(async (flags: RunsLsFlags) => listRunsCommand(flags));
}

/** Filters on the search attributes; each value is checked first, so it cannot break out of its quotes. */
export interface RunsFilter {
  model?: string;
  status?: StatusFlag;
  task?: string;
  method?: string;
  outcome?: RunOutcome;
}

/** The visibility query for the filters. */
export function runsQuery(opts: RunsFilter): string {
  const clauses = [`WorkflowType='distillationPipeline'`];
  if (opts.model !== undefined) clauses.push(`${StepwiseModel.name}='${checkModelName(opts.model, 'model')}'`);
  if (opts.status !== undefined) clauses.push(`ExecutionStatus='${STATUSES[opts.status]}'`);
  if (opts.task !== undefined) clauses.push(`${StepwiseTask.name}='${keyword(opts.task, 'task')}'`);
  if (opts.method !== undefined) clauses.push(`${StepwiseMethod.name}='${keyword(opts.method, 'method')}'`);
  if (opts.outcome !== undefined) {
    if (!RUN_OUTCOMES.includes(opts.outcome)) {
      throw new InputError(
        `outcome must be one of ${RUN_OUTCOMES.join(', ')}, got '${String(opts.outcome)}'`,
        'outcome'
      );
    }
    clauses.push(`${StepwiseOutcome.name}='${opts.outcome}'`);
  }
  return clauses.join(' AND ');
}

/** A task or method name as the spec's enums spell them: letters, digits, "_", "-", "." only. */
function keyword(value: string, field: string): string {
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(value)) {
    throw new InputError(`${field} must be a name (letters, digits, ".", "_", "-"), got '${value}'`, field);
  }
  return value;
}

/** Pipeline runs matching the flags, newest first, each running one with the stage its progress query reports. */
export async function listRuns(
  client: Client,
  opts: RunsFilter & { limit: number; queryProgress?: boolean }
): Promise<RunListing[]> {
  const found: WorkflowExecutionInfo[] = [];
  for await (const info of client.workflow.list({ query: runsQuery(opts), pageSize: Math.min(opts.limit, 100) })) {
    found.push(info);
    if (found.length >= opts.limit) break;
  }
  return Promise.all(
    found.map(async (info) => {
      const listing = describe(info);
      if (info.status.name === 'RUNNING' && opts.queryProgress !== false) {
        listing.stage = await stageOf(client, info.workflowId, info.runId, listing.outcome);
      }
      return listing;
    })
  );
}

function describe(info: WorkflowExecutionInfo): RunListing {
  const attrs = info.typedSearchAttributes;
  return {
    workflowId: info.workflowId,
    runId: info.runId,
    status: info.status.name.toLowerCase().replace(/_/g, '-'),
    startTime: info.startTime.toISOString(),
    ...(info.closeTime ? { closeTime: info.closeTime.toISOString() } : {}),
    ...defined({
      model: attrs.get(StepwiseModel),
      task: attrs.get(StepwiseTask),
      method: attrs.get(StepwiseMethod),
      datasetHash: attrs.get(StepwiseDatasetHash),
      outcome: attrs.get(StepwiseOutcome),
    }),
  };
}

/** "trainStudent 40/120", "awaiting approval", or "(no answer)" when no worker answers the query in time. */
async function stageOf(client: Client, workflowId: string, runId: string, outcome?: string): Promise<string> {
  if (outcome === 'awaiting-approval') return 'awaiting approval';
  let progress: PipelineProgress;
  try {
    progress = await client.withDeadline(Date.now() + QUERY_DEADLINE_MS, () =>
      client.workflow.getHandle(workflowId, runId).query(progressQuery)
    );
  } catch {
    return '(no answer: no worker polling?)';
  }
  if (progress.awaitingApproval) return 'awaiting approval';
  const count = progress.total > 0 ? ` ${progress.step}/${progress.total}` : '';
  return `${progress.stage}${count}`;
}

async function listRunsCommand(flags: RunsLsFlags): Promise<void> {
  const connected = await connectForListing();
  if (!connected) {
    console.log(flags.json ? '[]' : '(no runs: the embedded state has no Temporal database yet)');
    return;
  }
  try {
    // Embedded, no worker of this process runs: a run still open there was interrupted and cannot answer a query.
    const runs = await listRuns(connected.client, { ...flags, queryProgress: connected.cluster });
    if (flags.json) return console.log(JSON.stringify(runs));
    if (runs.length === 0) return console.log(`(no runs in ${connected.where} match)`);
    for (const run of runs) {
      const state = run.status === 'running' ? (run.stage ?? 'interrupted (`stepwise resume`)') : run.status;
      console.log(
        [
          run.workflowId,
          state,
          run.startTime,
          run.model ?? '-',
          run.method ?? '-',
          `outcome ${run.outcome ?? '-'}`,
        ].join('  ')
      );
    }
  } finally {
    await connected.close();
  }
}

/**
 * The cluster when TEMPORAL_ADDRESS is set; otherwise the embedded state's dev server, started here without workers
 * (undefined when the state has no database yet). A `stepwise run` serving that state holds its lock: say so.
 */
export async function connectForListing(): Promise<
  { client: Client; cluster: boolean; where: string; close(): Promise<void> } | undefined
> {
  if (settings().clusterConfigured) {
    const cluster = await connectCluster();
    return { client: cluster.client, cluster: true, where: cluster.where, close: cluster.stop };
  }
  const home = settings().home;
  if (!existsSync(join(home, 'temporal.db'))) return undefined;
  await setup({ temporal: true, log });
  const server = await startTemporalDevServer({
    stateDir: home,
    searchAttributes: devServerSearchAttributes(),
  }).catch((err) => {
    throw err instanceof StateInUseError ? new InputError(err.message, 'STEPWISE_HOME') : err;
  });
  try {
    const temporal = await connectClient({
      connectionOptions: { address: server.address },
      namespace: server.namespace,
    });
    return {
      client: temporal.client,
      cluster: false,
      where: `the state folder ${home}`,
      async close() {
        await temporal.close();
        await server.stop();
      },
    };
  } catch (err) {
    await server.stop();
    throw err;
  }
}

function modelFlag(value: string): string {
  if (!MODEL_NAME_PATTERN.test(value)) {
    throw new InvalidArgumentError(`--model must be a model name (letters, digits, ".", "_", "-"), got '${value}'`);
  }
  return value;
}

function limitFlag(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError(`--limit must be a positive integer, got '${value}'`);
  return n;
}

/** The entries whose value is set: absent attributes stay out of the JSON rather than printing as null. */
function defined<T extends Record<string, unknown>>(record: T): Partial<T> {
  return Object.fromEntries(Object.entries(record).filter(([, v]) => v !== undefined)) as Partial<T>;
}
