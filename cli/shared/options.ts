/**
 * Small pieces every command shares: where diagnostics go, and how numeric flags and ports are parsed.
 */
import { InvalidArgumentError } from 'commander';
import { InputError } from '../../lib/errors';

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

/**
 * A TCP port from a flag or a setting: digits only, from `min` (0 where the command takes any free port) to 65535.
 * @throws InputError naming `field` and the bad value.
 */
export function parsePort(value: string, field: string, min: 0 | 1 = 1): number {
  const port = Number(value);
  if (!/^\d+$/.test(value.trim()) || port < min || port > 65535) {
    throw new InputError(`${field} is '${value}'; expected a port number from ${min} to 65535`, field);
  }
  return port;
}

/** A commander parser for a port flag: {@link parsePort}'s check, a usage error before any command runs. */
export function portFlag(name: string, min: 0 | 1) {
  return (value: string) => {
    try {
      return parsePort(value, name, min);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}
