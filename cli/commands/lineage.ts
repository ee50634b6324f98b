/**
 * `stepwise lineage NAME@REF`: where a registered version came from, as one tree (lib/registry/lineage.ts), from the
 * dataset's bytes to the approval; `--json` for tools, `--dot` for Graphviz (`stepwise lineage m@3 --dot | dot -Tsvg`).
 */
import { Command } from 'commander';
import { settings } from '../../infra/config';
import { InputError } from '../../lib/errors';
import { openStore } from '../../lib/store';
import { lineageTree, renderDot, renderTree } from '../../lib/registry/lineage';
import { resolveRef } from '../../lib/registry/refs';

interface LineageFlags {
  store?: string;
  json?: boolean;
  dot?: boolean;
}

export function addLineageCommand(program: Command): void {
  program
    .command('lineage')
    .description(
      'the whole chain behind a registered version: data, sample, prompt, teacher, responses, validation, ' +
        'tokenizer, training, code, checkpoint, metrics, gate, approval, run'
    )
    .argument('<ref>', 'NAME@VERSION, NAME@ALIAS or NAME (its latest version)')
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option('--json', 'print the tree as JSON')
    .option('--dot', 'print the tree as a Graphviz digraph')
    .action(async (ref: string, flags: LineageFlags) => {
      if (flags.json && flags.dot) throw new InputError('--json and --dot: choose one output format', 'format');
      const store = openStore(flags.store ?? settings().store);
      try {
        const { version } = await resolveRef(store, ref);
        const tree = await lineageTree(store, version);
        if (flags.json) console.log(JSON.stringify(tree, null, 2));
        else if (flags.dot) process.stdout.write(renderDot(tree));
        else console.log(renderTree(tree));
      } finally {
        await store.close();
      }
    });
}
