/**
 * A pinned MLflow tracking server for the MLflow export's test (test/mlflow.test.ts): MLflow from PyPI, installed
 * once into a virtual environment under the cache dir, started on a free loopback port with a SQLite backend store
 * and a temporary artifact root. Stepwise itself never runs Python for MLflow: the export speaks MLflow's REST API
 * from Node (lib/mlflow/client.ts); this server is only what that API is tested against.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import { cacheDir, freePort, runCommand, waitFor, withLock, type Log } from './cache';
import { startServiceProcess, type ServiceProcess } from './service-process';

/** MLflow's release on PyPI (`pip index versions mlflow`); 2.9 or later is needed for the Model Registry's aliases. */
export const MLFLOW_VERSION = '3.17.2';

/** Written last into the virtual environment: a folder without it is a partial install, rebuilt from scratch. */
const COMPLETE = '.stepwise-complete';

/**
 * The Python of a virtual environment holding `mlflow==MLFLOW_VERSION`, built once with `python3 -m venv` and
 * `pip install` (PyPI is the route these machines have to MLflow). Built in place under a lock, not in a scratch
 * folder renamed into place: a venv's scripts name its path, so a moved venv would run the wrong Python.
 */
export async function ensureMlflow(log?: Log): Promise<string> {
  const venv = join(cacheDir(), 'mlflow', MLFLOW_VERSION);
  const python = join(venv, 'bin', 'python');
  if (existsSync(join(venv, COMPLETE))) return python;
  await withLock(
    `${venv}.lock`,
    async () => {
      if (existsSync(join(venv, COMPLETE))) return;
      await rm(venv, { recursive: true, force: true });
      await mkdir(venv, { recursive: true });
      const base = process.env.PYTHON ?? 'python3';
      log?.(`installing mlflow ${MLFLOW_VERSION} from PyPI into ${venv} (a few minutes, once)`);
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
            `mlflow==${MLFLOW_VERSION}`,
          ],
          { log }
        );
        await writeFile(join(venv, COMPLETE), `mlflow==${MLFLOW_VERSION}\n`);
      } catch (err) {
        await rm(venv, { recursive: true, force: true });
        throw err;
      }
    },
    { log }
  );
  return python;
}

export interface MlflowServerOptions {
  /** Holds the SQLite database and the artifact root; created if missing. */
  dataDir: string;
  port?: number;
  log?: Log;
}

export interface MlflowServer {
  /** The tracking URI, e.g. `http://127.0.0.1:5123` (what `STEPWISE_MLFLOW_URI` is set to). */
  uri: string;
  readonly pid: number;
  stop(): Promise<void>;
}

/**
 * `mlflow server` on 127.0.0.1 with a SQLite backend store (tracking and Model Registry alike) and an artifact root
 * in `dataDir`, resolved once its REST API answers. One worker process: the tests' load is a few hundred requests.
 */
export async function startMlflowServer(opts: MlflowServerOptions): Promise<MlflowServer> {
  const python = await ensureMlflow(opts.log);
  const dataDir = resolve(opts.dataDir);
  await mkdir(join(dataDir, 'artifacts'), { recursive: true });
  const port = opts.port ?? (await freePort());
  const uri = `http://127.0.0.1:${port}`;
  const args = [
    '-m',
    'mlflow',
    'server',
    '--backend-store-uri',
    `sqlite:///${join(dataDir, 'mlflow.db')}`,
    '--default-artifact-root',
    pathToFileURL(join(dataDir, 'artifacts')).href,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--workers',
    '1',
  ];
  const service: ServiceProcess = startServiceProcess('mlflow', python, args, {
    log: opts.log,
  });
  try {
    // The first start creates the schema (alembic migrations): seconds on a busy machine.
    await waitFor(async () => (await fetch(`${uri}/health`)).ok, {
      timeoutMs: 180_000,
      intervalMs: 250,
      what: `mlflow server at ${uri}`,
      abort: () => {
        const reason = service.exitReason();
        return reason && `mlflow server ${reason}:\n${service.outputTail().trim().slice(-4000)}`;
      },
    });
  } catch (err) {
    await service.stop(2_000);
    throw err;
  }
  opts.log?.(`mlflow server at ${uri} (backend ${dataDir}/mlflow.db)`);
  return { uri, pid: service.pid, stop: () => service.stop() };
}
