/**
 * The Temporal service a run talks to: the cluster named by TEMPORAL_ADDRESS, or embedded services that live
 * only as long as this process.
 */
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { connectClient, temporalTarget } from '../../workers/connection';
import { settings } from '../../infra/config';
import type { startEmbedded } from '../../workers/embedded';
import { createLogger, logSettings, stderrSink } from '../../workers/logging';
import { serviceLog } from './service-log';
import type { InterruptedRun } from '../../workers/interrupted';
import { StateInUseError } from '../../infra/db-lock';
import { InputError } from '../../lib/errors';
import { log } from './options';

/** A connected client, where to browse its runs, and how to let go of it. */
export interface Services {
  client: Client;
  namespace: string;
  /** The Temporal UI of the embedded server; a cluster's UI address is not known here. */
  uiUrl?: string;
  /** Where runs live, for messages: the embedded state folder, or the cluster's address and namespace. */
  where: string;
  /**
   * The embedded dev server's address: other `stepwise` commands (an approval) reach its runs with
   * `TEMPORAL_ADDRESS` set to it while this process holds the state.
   */
  embeddedAddress?: string;
  /** Embedded: pipeline runs a killed process left open in the state, which this process's workers now continue. */
  interrupted: InterruptedRun[];
  /** Embedded: the folder holding the dev server's and the workers' logs, named when something fails. */
  logs?: string;
  stop(): Promise<void>;
}

/**
 * The cluster when one is configured, the embedded services (installed on first use) otherwise. Embedded, the dev
 * server's output and the workers' logs go to files under `<STEPWISE_HOME>/logs` (temporal.log, workers.log), so the
 * console shows the run's stages and its outcome; `verbose` shows them on the console too.
 */
export async function openServices(store: string, opts: { verbose?: boolean } = {}): Promise<Services> {
  if (settings().clusterConfigured) return connectCluster();
  const dir = settings().home;
  // Checked before anything starts: a misspelt setting is one line, not a half-started server.
  const logFormat = logSettings({ format: 'text' });
  log(`stepwise: preparing embedded services (state in ${dir})`);
  // Loaded here, not at the top: the embedded server and workers bring the worker SDK, the activities and tfjs's
  // installer, which a command talking to a cluster (or only reading the store) never needs.
  const { setup } = require('../../infra/setup') as typeof import('../../infra/setup');
  const embeddedModule = require('../../workers/embedded') as typeof import('../../workers/embedded');
  await setup({ temporal: true, tfjsNative: true, log });
  const logs = embeddedLogs(dir, Boolean(opts.verbose), logFormat);
  let embedded: Awaited<ReturnType<typeof startEmbedded>>;
  try {
    embedded = await embeddedModule.startEmbedded({
      stateDir: dir,
      store,
      log,
      serverLog: logs.server,
      logger: createLogger({ ...logFormat, sinks: logs.workers }),
    });
  } catch (err) {
    logs.close();
    // Another `stepwise run` (or `stepwise dev`) serves this state: the user's to resolve, so one line, no stack.
    if (err instanceof StateInUseError) throw new InputError(err.message, 'STEPWISE_HOME');
    log(`stepwise: the embedded services did not start; their logs are in ${logs.dir}`);
    throw err;
  }
  log(
    `stepwise: Temporal dev server at ${embedded.address}${embedded.uiUrl ? `, UI ${embedded.uiUrl}` : ''}; ` +
      `artifacts in ${embedded.store.location}; logs in ${logs.dir}`
  );
  return {
    client: embedded.client,
    namespace: embedded.namespace,
    uiUrl: embedded.uiUrl,
    where: `the state folder ${dir}`,
    embeddedAddress: embedded.address,
    interrupted: embedded.interrupted,
    logs: logs.dir,
    stop: async () => {
      try {
        await embedded.stop();
      } finally {
        logs.close();
      }
    },
  };
}

/** The embedded services' log files under `<home>/logs`: the files always, the console too when `verbose`. */
function embeddedLogs(home: string, verbose: boolean, format: { format: string }) {
  const dir = join(home, 'logs');
  const server = serviceLog(join(dir, 'temporal.log'), { echo: verbose ? log : undefined });
  const workers = serviceLog(join(dir, 'workers.log'), {
    echo: verbose ? stderrSink : undefined,
    json: format.format === 'json',
  });
  return {
    dir,
    server,
    workers: [workers],
    close() {
      server.close();
      workers.close();
    },
  };
}

/** The cluster the standard `TEMPORAL_*` settings name (call only when `settings().clusterConfigured`). */
export async function connectCluster(): Promise<Services> {
  const target = temporalTarget();
  const temporal = await connectClient(target);
  return {
    client: temporal.client,
    namespace: target.namespace,
    where: `namespace ${target.namespace} at ${target.connectionOptions.address ?? 'localhost:7233'}`,
    interrupted: [],
    stop: () => temporal.close(),
  };
}
