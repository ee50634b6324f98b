/**
 * Small pieces every command shares: where diagnostics go, and how numeric flags are parsed.
 */
import { InvalidArgumentError } from 'commander';

/** Diagnostics go to stderr, so stdout carries only results (a run id, a JSON line) that scripts can read. */
export const log = (line: string) => process.stderr.write(`${line}\n`);

/** A commander parser for a numeric flag that names the flag and the bad value, before any command runs. */
export function number(name: string) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got '${value}'`);
    return n;
  };
}
