/**
 * The Temporal service a run talks to: the cluster named by TEMPORAL_ADDRESS, or embedded services that live
 * only as long as this process.
 */
import type { Client } from '@temporalio/client';
import { setup } from '../../infra/setup';
import { temporalTarget } from '../../workers/connection';
import { settings } from '../../infra/config';
import { connectTemporal } from '../../workers/pipeline-worker';
import { startEmbedded } from '../../workers/embedded';
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
  stop(): Promise<void>;
}

/** The cluster when one is configured, the embedded services (installed on first use) otherwise. */
export async function openServices(store: string): Promise<Services> {
  if (settings().clusterConfigured) return connectCluster();
  const dir = settings().home;
  log(`stepwise: preparing embedded services (state in ${dir})`);
  await setup({ temporal: true, tfjsNative: true, log });
  let embedded: Awaited<ReturnType<typeof startEmbedded>>;
  try {
    embedded = await startEmbedded({ stateDir: dir, store, log });
  } catch (err) {
    // Another `stepwise run` (or `stepwise dev`) serves this state: the user's to resolve, so one line, no stack.
    if (err instanceof StateInUseError) throw new InputError(err.message, 'STEPWISE_HOME');
    throw err;
  }
  log(
    `stepwise: Temporal dev server at ${embedded.address}${embedded.uiUrl ? `, UI ${embedded.uiUrl}` : ''}; artifacts in ${embedded.store.location}`
  );
  return {
    client: embedded.client,
    namespace: embedded.namespace,
    uiUrl: embedded.uiUrl,
    where: `the state folder ${dir}`,
    embeddedAddress: embedded.address,
    interrupted: embedded.interrupted,
    stop: () => embedded.stop(),
  };
}

/** The cluster the standard `TEMPORAL_*` settings name (call only when `settings().clusterConfigured`). */
export async function connectCluster(): Promise<Services> {
  const target = temporalTarget();
  const temporal = await connectTemporal(target);
  return {
    client: temporal.client,
    namespace: target.namespace,
    where: `namespace ${target.namespace} at ${target.connectionOptions.address ?? 'localhost:7233'}`,
    interrupted: [],
    stop: () => temporal.close(),
  };
}
