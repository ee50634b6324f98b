/**
 * `stepwise verify NAME@REF`: re-read every stored object a version's lineage names (the checkpoint, the manifest
 * and each artifact it lists, the teacher's responses, the validation report, the gate's evaluation set…), re-hash
 * each, and name every one that is missing or altered. Exit status 0 when all are intact, 3 when any is not (1 is
 * left to errors that stopped the check, such as a reference that names no version).
 */
import { Command } from 'commander';
import { settings } from '../../infra/config';
import { openStore } from '../../lib/store';
import { lineageObjects, lineageTree, verifyObjects } from '../../lib/registry/lineage';
import { resolveRef } from '../../lib/registry/refs';

/** The exit status of a check that ran and found missing or altered objects. */
export const VERIFY_FAILED_EXIT = 3;

interface VerifyFlags {
  store?: string;
  json?: boolean;
}

export function addVerifyCommand(program: Command): void {
  program
    .command('verify')
    .description(
      're-read and re-hash every stored object a version’s lineage names; non-zero if any is missing or altered'
    )
    .argument('<ref>', 'NAME@VERSION, NAME@ALIAS or NAME (its latest version)')
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option('--json', 'print every object with its status as JSON')
    .action(async (ref: string, flags: VerifyFlags) => {
      const store = openStore(flags.store ?? settings().store);
      try {
        const { version } = await resolveRef(store, ref);
        const results = await verifyObjects(store, lineageObjects(await lineageTree(store, version)));
        const bad = results.filter((r) => r.status !== 'ok');
        const what = `${version.name} v${version.version}`;
        if (flags.json) {
          console.log(
            JSON.stringify(
              { name: version.name, version: version.version, ok: bad.length === 0, objects: results },
              null,
              2
            )
          );
        } else {
          for (const r of bad) {
            const found = r.actual ? `found ${r.actual}` : (r.reason ?? 'bytes unreadable');
            const why = r.status === 'altered' ? ` (expected sha256 ${r.sha256}, ${found})` : '';
            console.log(`${r.status.toUpperCase()}  ${r.roles.join(', ')}  ${r.uri}${why}`);
          }
          console.log(
            bad.length
              ? `${what}: ${bad.length} of ${results.length} objects missing or altered`
              : `${what}: all ${results.length} objects verified`
          );
        }
        if (bad.length) process.exitCode = VERIFY_FAILED_EXIT;
      } finally {
        await store.close();
      }
    });
}
