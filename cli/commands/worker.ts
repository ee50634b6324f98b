/**
 * `stepwise worker`: a long-lived worker for one task queue of a Temporal cluster.
 */
import { Command, Option } from 'commander';
import { temporalTarget } from '../../workers/connection';
import { runWorker } from '../../workers/pipeline-worker';
import { QUEUE_KINDS, type QueueKind } from '../../contract';
import { settings } from '../../infra/config';
import { parsePort } from '../shared/options';

export function addWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description(
      'run a long-lived worker against a Temporal cluster (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS / API key); ' +
        'versioned as build STEPWISE_BUILD_ID of deployment STEPWISE_DEPLOYMENT_NAME unless STEPWISE_WORKER_VERSIONING=off'
    )
    .addOption(
      new Option('--queue <queue>', 'cpu: workflows, data, teacher, registry; gpu: training, evaluation')
        .choices(QUEUE_KINDS)
        .makeOptionMandatory()
    )
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option(
      '--metrics-port <port>',
      "serve Prometheus metrics (the SDK's temporal_* and stepwise_*) at /metrics on this port (env STEPWISE_METRICS_PORT)"
    )
    .option(
      '--metrics-host <address>',
      'address the metrics endpoint binds (env STEPWISE_METRICS_HOST, default 0.0.0.0)'
    )
    // runWorker prepares a GPU worker itself (native tfjs, CUDA libraries on LD_LIBRARY_PATH for the student children).
    .action(async (flags: { queue: QueueKind; store?: string; metricsPort?: string; metricsHost?: string }) => {
      const config = settings();
      // Checked here, so the message names what the operator set: the flag or the variable.
      const metricsPort =
        flags.metricsPort !== undefined
          ? parsePort(flags.metricsPort, '--metrics-port')
          : config.metricsPort !== undefined
            ? parsePort(config.metricsPort, 'STEPWISE_METRICS_PORT')
            : undefined;
      await runWorker({
        queue: flags.queue,
        target: temporalTarget(),
        store: flags.store ?? config.store,
        metricsPort,
        metricsHost: flags.metricsHost ?? config.metricsHost,
      });
    });
}
