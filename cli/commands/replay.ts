/**
 * `stepwise replay`: the check to run before deploying new workflow code. Downloads the histories of recent runs from
 * the cluster and replays each against this checkout's workflows (or `--workflows`), printing one line per run and
 * exiting 1 if any does not replay: a run that would fail its next workflow task on the new code.
 *
 * Pinned runs (Worker Versioning, workers/versioning.ts) never meet new code, so a failure here means: keep the old
 * build's workers until those runs drain, and know that unversioned runs, and anything moved by hand, would break.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command } from 'commander';
import type { Client, HistoryAndWorkflowId } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { InputError } from '../../lib/errors';
import { temporalTarget } from '../../workers/connection';
import { connectTemporal, quietTemporalLogs } from '../../workers/pipeline-worker';
import { grpcCode, GRPC_INVALID_ARGUMENT } from '../../workers/versioning';
import { log } from '../shared/options';

/** Every workflow type Stepwise starts: what a deploy of its workflow code can break. */
export const DEFAULT_REPLAY_QUERY = `WorkflowType IN ('distillationPipeline', 'teacherStage', 'distillationSweep')`;

interface ReplayFlags {
  query: string;
  limit: string;
  workflows?: string;
  json?: boolean;
}

/** One replayed run, as `--json` prints it (one object per line). */
export interface ReplayLine {
  workflowId: string;
  runId: string;
  /** `ok`, `nondeterministic` (the code issues different commands than the history recorded), or `error`. */
  outcome: 'ok' | 'nondeterministic' | 'error';
  error?: string;
}

export function addReplayCommand(program: Command): void {
  program
    .command('replay')
    .description(
      "replay recent runs from the cluster against this checkout's workflow code; exit 1 on any nondeterminism (needs TEMPORAL_ADDRESS)"
    )
    .option('--query <query>', 'visibility query choosing the runs', DEFAULT_REPLAY_QUERY)
    .option('--limit <n>', 'at most this many runs, newest first', '50')
    .option('--workflows <path>', "the workflow module to check (default: this checkout's workflows/)")
    .option('--json', 'print one JSON object per run')
    .action(async (flags: ReplayFlags) => replayCommand(flags));
}

/** Exit code 2 for bad flags or a query the server refuses, 1 when any run fails to replay. */
async function replayCommand(flags: ReplayFlags): Promise<void> {
  let limit: number;
  let workflowsPath: string;
  try {
    limit = parseLimit(flags.limit);
    workflowsPath = workflowsModule(flags.workflows);
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    log(`stepwise replay: ${err.message}`);
    process.exitCode = 2;
    return;
  }
  quietTemporalLogs();
  const temporal = await connectTemporal(temporalTarget());
  try {
    const lines = await replayRecent(temporal.client, {
      query: flags.query,
      limit,
      workflowsPath,
      dataConverter: temporal.dataConverter,
      onLine: (line) => console.log(flags.json ? JSON.stringify(line) : formatLine(line)),
    });
    const failed = lines.filter((l) => l.outcome !== 'ok').length;
    if (lines.length === 0) log(`stepwise replay: no run matches ${flags.query}: nothing checked`);
    else log(`stepwise replay: ${lines.length - failed} of ${lines.length} runs replay against ${workflowsPath}`);
    if (failed > 0) process.exitCode = 1;
  } catch (err) {
    if (grpcCode(err) !== GRPC_INVALID_ARGUMENT) throw err;
    log(`stepwise replay: --query: the server refused ${JSON.stringify(flags.query)}: ${(err as Error).message}`);
    process.exitCode = 2;
  } finally {
    await temporal.close();
  }
}

/**
 * Replays the newest `limit` runs matching `query` against `workflowsPath`, reporting each as it finishes. Histories
 * are downloaded a few at a time (`intoHistories`) while earlier ones replay.
 */
export async function replayRecent(
  client: Client,
  opts: {
    query: string;
    limit: number;
    workflowsPath: string;
    dataConverter?: Parameters<typeof Worker.runReplayHistories>[0]['dataConverter'];
    onLine?: (line: ReplayLine) => void;
  }
): Promise<ReplayLine[]> {
  const histories = client.workflow.list({ query: opts.query, pageSize: Math.min(opts.limit, 100) }).intoHistories();
  const lines: ReplayLine[] = [];
  const results = Worker.runReplayHistories(
    { workflowsPath: opts.workflowsPath, dataConverter: opts.dataConverter, replayName: 'stepwise-replay' },
    take(histories, opts.limit)
  );
  for await (const result of results) {
    const line: ReplayLine = {
      workflowId: result.workflowId,
      runId: result.runId,
      outcome: !result.error ? 'ok' : result.error instanceof DeterminismViolationError ? 'nondeterministic' : 'error',
      ...(result.error ? { error: result.error.message } : {}),
    };
    lines.push(line);
    opts.onLine?.(line);
  }
  return lines;
}

/** The first `n` items; stopping early closes the source, so no further history is downloaded. */
async function* take(source: AsyncIterable<HistoryAndWorkflowId>, n: number): AsyncGenerator<HistoryAndWorkflowId> {
  if (n <= 0) return;
  let taken = 0;
  for await (const item of source) {
    yield item;
    if (++taken >= n) return;
  }
}

function formatLine(line: ReplayLine): string {
  const head = `${line.outcome === 'ok' ? 'ok  ' : 'FAIL'} ${line.workflowId} ${line.runId}`;
  return line.error ? `${head}: ${line.outcome}: ${line.error.split('\n')[0]}` : head;
}

function parseLimit(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new InputError(`--limit must be a positive integer, got '${value}'`, '--limit');
  return n;
}

/** The workflow module to replay against: `--workflows` (a file or folder, resolved like `require`), or ours. */
function workflowsModule(path: string | undefined): string {
  if (path === undefined) return require.resolve('../../workflows');
  const absolute = resolve(path);
  try {
    return require.resolve(absolute);
  } catch {
    throw new InputError(
      `--workflows: no workflow module at ${absolute}${existsSync(absolute) ? ' (a folder needs an index)' : ''}`,
      '--workflows'
    );
  }
}
