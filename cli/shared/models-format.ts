/**
 * How `stepwise models` shows registry records: version and audit lines, the rows of `diff`, and the parsing of the
 * arguments every subcommand shares. Pure functions of the records, so what a person reads and what `--json` prints
 * come from the same values.
 */
import { InputError } from '../../lib/errors';
import type { AuditRecord } from '../../lib/registry/audit';
import type { ModelVersion } from '../../lib/registry/registry';

export const pct = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);

/** `v3`, or `(none)` for an alias that named nothing. */
export const versionLabel = (v: number | null | undefined) => (v === null || v === undefined ? '(none)' : `v${v}`);

/** What a record moved: the version for a status change, `alias NAME` for an alias move. */
export function subjectOf(record: AuditRecord): string {
  return record.action === 'alias' ? `alias ${record.alias ?? '?'}` : versionLabel(record.version);
}

/** A head's value as people read it: versions for aliases, statuses as they are. */
function valueOf(record: AuditRecord, value: string | number | null): string {
  if (record.action === 'alias') return versionLabel(value as number | null);
  return value === null ? '(none)' : String(value);
}

/** One audit record on one line: when, action, subject, from → to, who, why, workflow. */
export function historyLine(r: AuditRecord): string {
  return [
    r.when,
    r.action.padEnd(8),
    subjectOf(r).padEnd(16),
    `${valueOf(r, r.from)} → ${valueOf(r, r.to)}`.padEnd(24),
    r.who,
    JSON.stringify(r.why),
    r.workflowId ? `workflow ${r.workflowId}` : '',
  ]
    .join('  ')
    .trimEnd();
}

/** The record that set a head, in a clause: `gate by stepwise-pipeline at T: "why" (workflow W)`. */
export function recordClause(r: AuditRecord): string {
  return `${r.action} by ${r.who} at ${r.when}: ${JSON.stringify(r.why)}${r.workflowId ? ` (workflow ${r.workflowId})` : ''}`;
}

/**
 * A `--time` value: ISO-8601, a date (`2026-03-03`) or a date and time; a time without an offset is read as UTC, so
 * the answer does not depend on the machine's time zone.
 */
export function parseTime(value: string, field = '--time'): Date {
  const m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i.exec(value.trim());
  const iso = m ? (m[2] ? `${m[1]}T${m[2]}${m[3] ?? 'Z'}` : `${m[1]}T00:00:00Z`) : undefined;
  const time = iso === undefined ? NaN : Date.parse(iso);
  if (Number.isNaN(time)) {
    throw new InputError(
      `${field}: ${JSON.stringify(value)} is not an ISO-8601 time: expected e.g. 2026-03-03 or 2026-03-03T12:00:00Z`,
      field
    );
  }
  return new Date(time);
}

/** Hashes of a version's splits, read from its run manifest (absent when the manifest cannot be read). */
export type SplitHashes = Partial<Record<'train' | 'valid' | 'test', string>>;

/** Everything `diff` compares, one row per field: value per version, as strings, numbers or null (absent). */
export function diffFields(v: ModelVersion, splits: SplitHashes): Record<string, string | number | null> {
  const { lineage: l, metrics: m } = v;
  const t = l.training;
  const show = (x: unknown): string | number | null =>
    x === undefined || x === null ? null : typeof x === 'number' || typeof x === 'string' ? x : JSON.stringify(x);
  const config = Object.fromEntries(
    Object.keys(t.config)
      .sort()
      .map((key) => [`config.${key}`, show(t.config[key])])
  );
  return {
    ...config,
    'training.method': t.method,
    'training.labelSource': t.labelSource,
    'training.steps': t.steps,
    'training.finalLoss': t.finalLoss,
    'training.params': t.params,
    'training.initFrom': t.initFrom ? `${t.initFrom.name}@${t.initFrom.version} (${t.initFrom.ref})` : null,
    backend: t.backend,
    'data.kind': l.dataset.kind,
    'data.task': l.dataset.task,
    'data.source': l.dataset.source,
    'data.datasetHash': l.dataset.datasetHash,
    'data.sampleHash': l.dataset.sampleHash,
    'data.split.train': splits.train ?? null,
    'data.split.valid': splits.valid ?? null,
    'data.split.test': splits.test ?? null,
    'data.counts': show(l.dataset.counts),
    'teacher.kind': show(l.teacher?.kind),
    'teacher.model': show(l.teacher?.model),
    'teacher.responses': show(l.teacher?.responses),
    'teacher.costUsd': show(l.teacher?.costUsd),
    // The prompt template is the task's; its hash says whether its text (and exemplars) changed.
    'prompt.templateHash': show(l.teacher?.templateHash),
    'validation.report': show(l.validation?.report),
    'validation.kept': show(l.validation?.kept),
    'validation.dropped': show(l.validation?.dropped),
    'validation.teacherAccuracy': show(l.validation?.teacherAccuracy),
    codeVersion: l.codeVersion,
    'metrics.accuracy': m.accuracy,
    'metrics.correct': m.correct,
    'metrics.total': m.total,
    'metrics.majorityBaseline': m.majorityBaseline,
    checkpoint: v.checkpoint.sha256,
    workflowId: l.workflowId,
  };
}

/** The two versions' fields side by side, as `diff --json` prints them: `{ field: [a, b] }`. */
export function sideBySide(
  a: Record<string, string | number | null>,
  b: Record<string, string | number | null>
): Record<string, [string | number | null, string | number | null]> {
  const fields = [...new Set([...Object.keys(a), ...Object.keys(b)])];
  return Object.fromEntries(fields.map((f) => [f, [a[f] ?? null, b[f] ?? null]]));
}

/** A diff as a table, each differing row marked with `*` in the first column. */
export function diffTable(
  labels: [string, string],
  rows: Record<string, [string | number | null, string | number | null]>
): string[] {
  const cell = (x: string | number | null) => (x === null ? '-' : String(x));
  const entries = Object.entries(rows);
  const fieldWidth = Math.max(5, ...entries.map(([f]) => f.length));
  const aWidth = Math.max(labels[0].length, ...entries.map(([, [a]]) => cell(a).length));
  const line = (mark: string, f: string, a: string, b: string) =>
    `${mark} ${f.padEnd(fieldWidth)}  ${a.padEnd(aWidth)}  ${b}`.trimEnd();
  return [
    line(' ', 'field', labels[0], labels[1]),
    ...entries.map(([f, [a, b]]) => line(cell(a) === cell(b) ? ' ' : '*', f, cell(a), cell(b))),
  ];
}
