/**
 * Pinned Python virtual environments under the cache dir, for the Python tools Stepwise itself never runs but tests
 * and benches compare against (an MLflow server; PyTorch and transformers for the benches' baselines). Each is built
 * once with `python3 -m venv` and `pip install` of exact pins from PyPI (the route these machines have to them), in
 * place under a lock, not in a scratch folder renamed into place: a venv's scripts name its path, so a moved venv
 * would run the wrong Python.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { cacheDir, runCommand, withLock, type Log } from './cache';

/** Written last into the virtual environment: a folder without it is a partial install, rebuilt from scratch. */
const COMPLETE = '.stepwise-complete';

export interface VenvSpec {
  /** The folder under the cache dir, e.g. `mlflow/3.17.2`; a new pin must give a new folder. */
  dir: string;
  /** Exact requirements (`name==version`). */
  requirements: readonly string[];
  /** Said once, before the install starts (e.g. how long it takes). */
  what: string;
}

/** The Python of the venv `spec` names, installing it first if it is missing or partial. */
export async function ensureVenv(spec: VenvSpec, log?: Log): Promise<string> {
  const venv = join(cacheDir(), spec.dir);
  const python = join(venv, 'bin', 'python');
  if (existsSync(join(venv, COMPLETE))) return python;
  await withLock(
    `${venv}.lock`,
    async () => {
      if (existsSync(join(venv, COMPLETE))) return;
      await rm(venv, { recursive: true, force: true });
      await mkdir(venv, { recursive: true });
      const base = process.env.PYTHON ?? 'python3';
      log?.(`installing ${spec.what} from PyPI into ${venv}`);
      try {
        await runCommand(base, ['-m', 'venv', venv], { log });
        await runCommand(
          python,
          [
            '-m',
            'pip',
            'install',
            '--disable-pip-version-check',
            '--no-input',
            '--progress-bar',
            'off',
            // Wheels only: a source build would need compilers and take far longer than the install it replaces.
            '--only-binary=:all:',
            ...spec.requirements,
          ],
          { log }
        );
        await writeFile(join(venv, COMPLETE), spec.requirements.join('\n') + '\n');
      } catch (err) {
        await rm(venv, { recursive: true, force: true });
        throw err;
      }
    },
    { log }
  );
  return python;
}
