import type { DataConverter } from '@temporalio/common';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { NativeConnectionOptions } from '@temporalio/worker';

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
