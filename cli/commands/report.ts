/**
 * `stepwise report RUN`: where a run's HTML report is (lib/report/run-report.ts), for a workflow id or a registered
 * version (`NAME@REF`, whose lineage names its run). `--out` copies the page to a file, `--open` opens it in the
 * desktop's browser, and `--rebuild` builds it again with this code from the inputs the record keeps.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { settings } from '../../infra/config';
import { which } from '../../infra/cache';
import { InputError } from '../../lib/errors';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import { isModelRef } from '../../lib/registry/refs';
import { resolveRef } from '../../lib/registry/refs';
import { readRunReport, rebuildRunReport, runReportHtmlKey, type RunReportRecord } from '../../lib/report/run-report';

interface ReportFlags {
  store?: string;
  out?: string;
  open?: boolean;
  rebuild?: boolean;
  json?: boolean;
}

export function addReportCommand(program: Command): void {
  program
    .command('report')
    .description(
      "a run's self-contained HTML report: timeline, teacher, validation, training, evaluation, gate, lineage"
    )
    .argument(
      '<run>',
      'a workflow id (as `stepwise run` prints it), or NAME@VERSION / NAME@ALIAS of a registered version'
    )
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option('--out <file>', 'write the report to this file')
    .option('--open', 'open the report in a browser (xdg-open)')
    .option('--rebuild', 'build the report again with this code, from the inputs stored with it')
    .option('--json', "print the report's record as JSON")
    .action(async (run: string, flags: ReportFlags) => {
      const store = openStore(flags.store ?? settings().store);
      try {
        const workflowId = await workflowIdOf(store, run);
        let record = await readRunReport(store, workflowId);
        if (!record) {
          throw new InputError(
            `run: no report for workflow '${workflowId}' in ${store.location}; runs from before reports have none, ` +
              'and a run still going writes its report when it ends',
            'run'
          );
        }
        if (flags.rebuild) {
          await rebuildRunReport(store, record);
          record = (await readRunReport(store, workflowId))!;
        }
        const file = await localFile(store, record, flags.out, flags.open);
        if (flags.json) console.log(JSON.stringify({ ...record, ...(file ? { file } : {}) }, null, 2));
        else {
          console.log(file ?? record.uri);
          console.error(
            `report of ${record.workflowId} (${record.outcome}): ${record.bytes} bytes, ${record.charts} charts, built in ${record.buildMs} ms`
          );
        }
        if (flags.open) openInBrowser(file!);
      } finally {
        await store.close();
      }
    });
}

/** A workflow id as given, or the run that registered `NAME@REF`. */
async function workflowIdOf(store: ArtifactStore, run: string): Promise<string> {
  if (!isModelRef(run)) return run;
  const { version } = await resolveRef(store, run, 'run');
  return version.lineage.workflowId;
}

/**
 * A local file holding the page, where one is needed: `--out`, or the store's own copy when the store is a folder, or
 * a temporary file for `--open` on an object store.
 */
async function localFile(
  store: ArtifactStore,
  record: RunReportRecord,
  out: string | undefined,
  open: boolean | undefined
): Promise<string | undefined> {
  const key = runReportHtmlKey(record.workflowId);
  if (out) {
    const bytes = await store.getKey(key);
    await writeFile(out, bytes ?? (await store.get(record.report)));
    return resolve(out);
  }
  const uri = store.uri(key);
  if (uri.startsWith('file:')) return fileURLToPath(uri);
  if (!open) return undefined;
  const path = join(tmpdir(), `stepwise-report-${record.workflowId.replace(/[^\w.-]/g, '_')}.html`);
  await writeFile(path, await store.get(record.report));
  return path;
}

function openInBrowser(file: string): void {
  const opener = which('xdg-open') ?? which('open');
  if (!opener) {
    console.error(`stepwise: no xdg-open on this machine; open ${file} in a browser`);
    return;
  }
  spawn(opener, [file], { detached: true, stdio: 'ignore' }).unref();
}
