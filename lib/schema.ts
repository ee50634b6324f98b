/**
 * What every options schema shares: enums that list their choices plainly, and zod issues turned into the
 * field / value / expected triple users are shown (as a `SpecError` for a spec, an `InputError` for a library call).
 *
 * Imported by the workflow bundle (through lib/pipeline/spec.ts): zod only, no Node built-ins, no I/O.
 */
import { z } from 'zod';

/** An enum whose error lists the choices as a user types them (`expected one of a, b`), not as a union type. */
export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `expected one of ${values.join(', ')}` });
}

/** A bad field, phrased for a user: the dotted path, the value given there, and what was expected. */
export interface FieldIssue {
  field: string;
  value: unknown;
  message: string;
}

/** The value at `path` in `input`, or undefined where the path leaves the object. */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

/**
 * zod's issues as {@link FieldIssue}s. zod's category prefixes ("Too big: ") are dropped: what follows them already
 * says what was expected, and the field and value are shown beside it.
 * @param root the field name shown for an issue about the whole input (an unknown key, say).
 */
export function fieldIssues(error: z.ZodError, input: unknown, root: string): FieldIssue[] {
  // An unknown key is reported at the key itself (a typo's value is what the user will look for), one per key.
  const located = error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map((key) => ({ path: [...issue.path, key], message: `Unrecognized key: ${JSON.stringify(key)}` }))
      : [{ path: issue.path, message: issue.message }]
  );
  return located.map(({ path, message }) => ({
    field: path.map(String).join('.') || root,
    value: valueAt(input, path),
    message: message.replace(/^(Invalid input|Invalid option|Too big|Too small): /, ''),
  }));
}

/** A value as JSON, cut to 80 characters (a whole object in an error message buries the point). */
export function showValue(value: unknown): string {
  const shown = value === undefined ? 'nothing' : JSON.stringify(value);
  return shown && shown.length > 80 ? shown.slice(0, 77) + '...' : shown;
}
