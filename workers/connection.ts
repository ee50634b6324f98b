import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { NativeConnectionOptions } from '@temporalio/worker';
import { dataConverterFromSettings } from './codec';
import { clientTracingInterceptors, flushTracing } from './tracing';

/** Where to reach Temporal and in which namespace: explicit address first, then Temporal's standard settings. */
export interface TemporalTarget {
  connectionOptions: NativeConnectionOptions;
  namespace: string;
  /** How payloads are encoded (workers/codec.ts); default: encrypted when this process has payload keys configured. */
  dataConverter?: DataConverter;
}

/**
 * Temporal's own configuration conventions (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`,
 * `TEMPORAL_TLS_*`, `TEMPORAL_PROFILE` and the `temporal.toml` config file), so Stepwise workers are configured
 * exactly like every other Temporal client an operator runs.
 */
export function temporalTarget(address?: string): TemporalTarget {
  const loaded = loadClientConnectConfig();
  const connectionOptions = { ...loaded.connectionOptions };
  if (address) connectionOptions.address = address;
  return { connectionOptions, namespace: loaded.namespace ?? 'default' };
}

/**
 * A client of `target` and nothing else: what a command that starts, lists, queries or cancels runs needs. It loads
 * only the client SDK (no worker, no native connection), which keeps such commands quick to start. Payloads are
 * encoded with the target's data converter (default: encrypted when payload keys are configured).
 * @throws InputError naming the variable when the configured payload keys are malformed (before connecting).
 */
export async function connectClient(target: TemporalTarget) {
  const dataConverter = target.dataConverter ?? dataConverterFromSettings();
  const connection = await Connection.connect(target.connectionOptions as Parameters<typeof Connection.connect>[0]);
  const client = new Client({
    connection,
    namespace: target.namespace,
    dataConverter,
    interceptors: clientTracingInterceptors(),
  });
  return {
    client,
    dataConverter,
    async close() {
      await connection.close();
      // A command that started a run exits soon after: its spans go now, not at the next batch.
      await flushTracing();
    },
  };
}
