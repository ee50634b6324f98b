/**
 * The names the registry builds store keys from. A model name, alias, workflow id or run id becomes one segment of a
 * key (`registry/<name>/versions/…`, `runs/<workflowId>/manifest.json`), so each must stay one plain segment: no
 * "/", no "..", no control characters, never empty. The store itself refuses keys that leave its root; these checks
 * keep a name inside its own prefix too (a model named `a/versions` would otherwise write into model `a`).
 */
import { InputError } from '../errors';

/**
 * Model names and aliases. The spec's own rule for `name` (lib/pipeline/spec.ts) is narrower (lower case, 63
 * characters); this is the safety rule every key the registry builds must meet, whoever calls it (the CLI's
 * `stepwise models <name>` reads with names no spec checked).
 */
export const MODEL_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * Workflow and run ids: Temporal accepts nearly any string, but these become key segments. Temporal's own run ids
 * are UUIDs and the CLI's workflow ids `stepwise-<name>-<timestamp>`, both well inside this.
 */
export const RUN_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,199}$/;

function check(value: unknown, field: string, pattern: RegExp): string {
  if (typeof value !== 'string' || !pattern.test(value)) {
    // JSON shows control characters escaped; a long value is cut so the message stays one readable line.
    const shown =
      typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : String(value);
    throw new InputError(`${field}: must match ${pattern.source} (got ${shown})`, field);
  }
  return value;
}

/** A model name (or alias) that stays inside its registry prefix; `field` is what the error names, e.g. `name`. */
export function checkModelName(value: unknown, field = 'name'): string {
  return check(value, field, MODEL_NAME_PATTERN);
}

/** A workflow or run id that stays one key segment; `field` is `workflowId` or `runId`. */
export function checkRunId(value: unknown, field: string): string {
  return check(value, field, RUN_ID_PATTERN);
}
