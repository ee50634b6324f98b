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
import { log } from './options';

/** A connected client, where to browse its runs, and how to let go of it. */
export interface Services {
  client: Client;
  namespace: string;
  /** The Temporal UI of the embedded server; a cluster's UI address is not known here. */
  uiUrl?: string;
  stop(): Promise<void>;
}

/** The cluster when one is configured, the embedded services (installed on first use) otherwise. */
export async function openServices(store: string): Promise<Services> {
  if (settings().clusterConfigured) {
    const target = temporalTarget();
    const temporal = await connectTemporal(target);
    return { client: temporal.client, namespace: target.namespace, stop: () => temporal.close() };
  }
  const dir = settings().home;
  log(`stepwise: preparing embedded services (state in ${dir})`);
  await setup({ temporal: true, tfjsNative: true, log });
  const embedded = await startEmbedded({ stateDir: dir, store, log });
  log(
    `stepwise: Temporal dev server at ${embedded.address}${embedded.uiUrl ? `, UI ${embedded.uiUrl}` : ''}; artifacts in ${embedded.store.location}`
  );
  return {
    client: embedded.client,
    namespace: embedded.namespace,
    uiUrl: embedded.uiUrl,
    stop: () => embedded.stop(),
  };
}
