/**
 * Where a process's log lines go, and in what shape. The Temporal SDK hands every entry (its own, each workflow's
 * `log`, each activity's `Context.current().log`) to the Runtime's logger with the ids of what produced it in `meta`;
 * this module writes each entry as one line: a JSON object (`STEPWISE_LOG_FORMAT=json`, the default of `stepwise
 * worker`, for a log collector) or text (a file or terminal a person reads), at `STEPWISE_LOG_LEVEL` and above.
 *
 * A JSON line has `time`, `level` and `message`, then the SDK's metadata flattened: `namespace`, `taskQueue`,
 * `workflowType`, `workflowId`, `runId`, and for an activity `activityType` (its stage: `sample`, `trainStudent`, …),
 * `activityId` and `attempt`, and `error` (name, message, stack, causes) where there is one. A query by run, stage or
 * attempt is then a filter on fields, not a regular expression over messages.
 */
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger, LogLevel, LogMetadata } from '@temporalio/common';
import type { LogEntry } from '@temporalio/worker';
import { settings } from '../infra/config';
import { InputError } from '../lib/errors';

export const LOG_FORMATS = ['json', 'text'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const LOG_LEVELS: readonly LogLevel[] = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];

/** Receives one formatted entry (without its newline). */
export type LineSink = (line: string) => void;

/**
 * The format and level the environment asks for (`STEPWISE_LOG_FORMAT`, `STEPWISE_LOG_LEVEL`), else the defaults
 * the caller gives: `json` for a production worker, `text` where a person reads the lines; `INFO`.
 * @throws InputError naming the variable when it holds something else.
 */
export function logSettings(defaults: { format: LogFormat; level?: LogLevel }): { format: LogFormat; level: LogLevel } {
  const config = settings();
  const format = config.logFormat?.trim().toLowerCase() ?? defaults.format;
  if (!(LOG_FORMATS as readonly string[]).includes(format)) {
    throw new InputError(
      `STEPWISE_LOG_FORMAT is '${config.logFormat}'; expected ${LOG_FORMATS.join(' or ')}`,
      'STEPWISE_LOG_FORMAT'
    );
  }
  const level = config.logLevel?.trim().toUpperCase() ?? defaults.level ?? 'INFO';
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new InputError(
      `STEPWISE_LOG_LEVEL is '${config.logLevel}'; expected one of ${LOG_LEVELS.join(', ')}`,
      'STEPWISE_LOG_LEVEL'
    );
  }
  return { format: format as LogFormat, level: level as LogLevel };
}

/** A logger (the SDK's `Logger`, for `Runtime.install`) writing each entry at `level` or above to every sink. */
export function createLogger(opts: { format: LogFormat; level: LogLevel; sinks: LineSink[] }): Logger {
  const format = opts.format === 'json' ? jsonLine : textLine;
  // The worker SDK is loaded only here, where a logger is made for workers: the CLI imports this module for its
  // settings and sinks, and most commands never start a worker.
  const { DefaultLogger } = require('@temporalio/worker') as typeof import('@temporalio/worker');
  return new DefaultLogger(opts.level, (entry) => {
    const line = format(entry);
    for (const sink of opts.sinks) sink(line);
  });
}

/**
 * The logger of `stepwise worker`: JSON lines on stdout unless `STEPWISE_LOG_FORMAT` says otherwise, so a log
 * collector reads every line, the worker's own included, as one record.
 */
export function workerLogger(): Logger {
  return createLogger({ ...logSettings({ format: 'json' }), sinks: [stdoutSink] });
}

export const stdoutSink: LineSink = (line) => void process.stdout.write(`${line}\n`);
export const stderrSink: LineSink = (line) => void process.stderr.write(`${line}\n`);

/**
 * A sink appending to `path` (its folder created), written synchronously: the lines just before a crash or a
 * `process.exit` are the ones that explain it, and an asynchronous stream would lose them. A failed write is
 * dropped: a log file must never fail the run it describes.
 */
export function appendingFile(path: string): LineSink & { path: string; close(): void } {
  mkdirSync(dirname(path), { recursive: true });
  let fd: number | undefined = openSync(path, 'a');
  const sink = (line: string) => {
    if (fd === undefined) return;
    try {
      writeSync(fd, `${line}\n`);
    } catch {
      // A full disk or a closed descriptor: the run goes on without its log.
    }
  };
  return Object.assign(sink, {
    path,
    close() {
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
    },
  });
}

/** Metadata the SDK adds that a reader has no use for: the task token is an opaque encoding of the ids shown anyway. */
const DROPPED = new Set(['taskToken']);
/** One name per id whoever logs it: activities carry their workflow's run as `workflowRunId`, workflows as `runId`. */
const RENAMED: Record<string, string> = { workflowRunId: 'runId' };
/** These lead, in this order, so lines read alike; any other metadata follows in the order the SDK gave it. */
const LEADING = ['sdkComponent', 'namespace', 'taskQueue', 'workflowType', 'workflowId', 'runId', 'activityType'];

/** An entry as one flat record: `time`, `level`, `message`, then its metadata (errors made plain objects). */
export function logRecord(entry: LogEntry): Record<string, unknown> {
  const meta: Record<string, unknown> = {};
  for (const [key, value] of Object.entries((entry.meta ?? {}) as LogMetadata)) {
    if (DROPPED.has(key) || value === undefined) continue;
    meta[RENAMED[key] ?? key] = key === 'error' || value instanceof Error ? errorRecord(value) : value;
  }
  const record: Record<string, unknown> = {
    time: new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString(),
    level: entry.level.toLowerCase(),
    message: entry.message,
  };
  for (const key of LEADING) if (key in meta) record[key] = meta[key];
  for (const [key, value] of Object.entries(meta)) if (!(key in record)) record[key] = value;
  return record;
}

/** One JSON object per entry. */
export function jsonLine(entry: LogEntry): string {
  const record = logRecord(entry);
  try {
    return JSON.stringify(record, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
  } catch {
    // A circular value in someone's metadata: keep the line, lose that detail.
    return JSON.stringify({ time: record.time, level: record.level, message: record.message });
  }
}

/** `time LEVEL message key=value …`, the error's stack indented below it. */
export function textLine(entry: LogEntry): string {
  const { time, level, message, error, ...meta } = logRecord(entry);
  const fields = Object.entries(meta)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : safeJson(value)}`)
    .join(' ');
  // The fields stay on the first line, where a reader scanning the file finds them; a message's further lines
  // (a bundler's report) follow, indented.
  const [first, ...rest] = String(message).split('\n');
  let line = `${String(time)} ${String(level).toUpperCase().padEnd(5)} ${first}${fields ? ` ${fields}` : ''}`;
  if (rest.length > 0) line += `\n${indent(rest.join('\n'))}`;
  if (error !== undefined) {
    const e = error as { name?: string; message?: string; stack?: string; causes?: string[] };
    const detail = e.stack ?? `${e.name ?? 'Error'}: ${e.message ?? safeJson(error)}`;
    line += `\n${[detail, ...(e.causes ?? []).map((c) => `caused by: ${c}`)].map((l) => indent(l)).join('\n')}`;
  }
  return line;
}

/** An error as plain data: name, message, stack, and its causes' messages (an activity failure nests them). */
function errorRecord(value: unknown): unknown {
  if (!(value instanceof Error)) return value;
  const causes: string[] = [];
  for (let c = value.cause; c instanceof Error && causes.length < 10; c = c.cause)
    causes.push(`${c.name}: ${c.message}`);
  const type = (value as { type?: unknown }).type;
  return {
    name: value.name,
    ...(typeof type === 'string' ? { type } : {}),
    message: value.message,
    ...(value.stack ? { stack: value.stack } : {}),
    ...(causes.length > 0 ? { causes } : {}),
  };
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) ?? String(value);
  } catch {
    return String(value);
  }
}

const indent = (text: string) =>
  text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
