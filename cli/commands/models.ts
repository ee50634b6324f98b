/**
 * `stepwise models`: what the registry holds, read straight from the artifact store (no Temporal needed).
 */
import { Command } from 'commander';
import { openStore } from '../../lib/store';
import { listModels, listVersions, getVersion } from '../../lib/registry/registry';
import { settings } from '../../infra/config';

export function addModelsCommand(program: Command): void {
  program
    .command('models')
    .description('list registered models, or the versions of one with their metrics and lineage')
    .argument('[name]')
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option('--json', 'print JSON')
    .action(async (name: string | undefined, flags: { store?: string; json?: boolean }) => {
      const store = openStore(flags.store ?? settings().store);
      if (!name) {
        const models = await listModels(store);
        console.log(flags.json ? JSON.stringify(models) : models.join('\n') || '(no models registered)');
        return;
      }
      const versions = await Promise.all((await listVersions(store, name)).map((v) => getVersion(store, name, v)));
      if (flags.json) return console.log(JSON.stringify(versions));
      for (const v of versions) {
        if (!v) continue;
        console.log(
          `${v.name} v${v.version}  ${v.createdAt}  accuracy ${(100 * v.metrics.accuracy).toFixed(1)}%  ${v.lineage.training.method}  run ${v.lineage.workflowId}`
        );
      }
    });
}
