/**
 * The Python the benches compare against: PyTorch and transformers at bench/requirements.txt's pins, in a cached
 * virtual environment (infra/python-venv.ts). Only `npm run bench:*` installs it; tests and CI never need it.
 * BENCH_PYTHON names an interpreter of one's own instead.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import type { Log } from './cache';
import { ensureVenv } from './python-venv';

/** The pins of bench/requirements.txt (`name==version` lines; comments and blanks skipped). */
export function benchRequirements(file = join(__dirname, '..', 'bench', 'requirements.txt')): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim())
    .filter((line) => line.length > 0);
}

/** BENCH_PYTHON when set, else the cached venv's Python (installed on first use: ~4 GB of wheels, minutes). */
export async function benchPython(log?: Log): Promise<string> {
  if (process.env.BENCH_PYTHON) return process.env.BENCH_PYTHON;
  const requirements = benchRequirements();
  // The folder is named by the pins, so changing one builds a fresh venv beside the old.
  const tag = requirements
    .map((r) => r.replace(/[^A-Za-z0-9.=_-]/g, ''))
    .join('_')
    .replace(/==/g, '-');
  return ensureVenv(
    {
      dir: join('bench-python', tag),
      requirements,
      what: `${requirements.join(', ')} for the benches (~4 GB, minutes, once)`,
    },
    log
  );
}
