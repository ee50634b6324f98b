/**
 * A pinned MLflow tracking server for the MLflow export's test (test/mlflow.test.ts): MLflow from PyPI, installed
 * once into a virtual environment under the cache dir, started on a free loopback port with a SQLite backend store
 * and a temporary artifact root. Stepwise itself never runs Python for MLflow: the export speaks MLflow's REST API
 * from Node (lib/mlflow/client.ts); this server is only what that API is tested against.
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import { freePort, waitFor, type Log } from './cache';
import { ensureVenv } from './python-venv';
import { startServiceProcess, type ServiceProcess } from './service-process';

/** MLflow's release on PyPI (`pip index versions mlflow`); 2.9 or later is needed for the Model Registry's aliases. */
export const MLFLOW_VERSION = '3.17.2';

/**
 * The Python of a virtual environment holding `mlflow==MLFLOW_VERSION` (infra/python-venv.ts), built once.
 */
export async function ensureMlflow(log?: Log): Promise<string> {
  return ensureVenv(
    {
      dir: join('mlflow', MLFLOW_VERSION),
      requirements: [`mlflow==${MLFLOW_VERSION}`],
      what: `mlflow ${MLFLOW_VERSION} (a few minutes, once)`,
    },
    log
  );
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
