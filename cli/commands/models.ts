/**
 * `stepwise models`: the registry, read and changed straight in the artifact store (lib/registry/audit.ts), except a
 * decision on a version whose run is waiting for one, which goes to that run as a Temporal Update so the run carries
 * it out (the audit record, then the alias move).
 *
 *   ls [NAME] | show REF | promote REF --alias A | approve REF | reject REF | archive REF | diff A B | history NAME
 *   | at NAME@ALIAS --time T
 */
import { Command } from 'commander';
import { settings } from '../../infra/config';
import { InputError } from '../../lib/errors';
import { openStore, type ArtifactStore } from '../../lib/store';
import { checkModelName } from '../../lib/registry/names';
import { getVersion, listModels, listVersions, type ModelVersion } from '../../lib/registry/registry';
import { aliasAt, listAliases, modelHistory, versionStatus } from '../../lib/registry/audit';
import { readVersionManifest } from '../../lib/registry/manifest';
import { parseModelRef, resolveRef } from '../../lib/registry/refs';
import { connectClient, temporalTarget } from '../../workers/connection';
import { openServices } from '../shared/services';
import { log } from '../shared/options';
import { archiveVersion, decideVersion, promoteToAlias, type DecisionClient } from '../shared/registry-actions';
import {
  diffFields,
  diffTable,
  historyLine,
  parseTime,
  pct,
  recordClause,
  sideBySide,
  versionLabel,
  type SplitHashes,
} from '../shared/models-format';

interface CommonFlags {
  store?: string;
  json?: boolean;
}

type Action<A extends unknown[], F> = (...args: [...A, F]) => Promise<void>;

/**
 * The subcommand's flags merged with the `models` command's: commander lets the parent take `--json` and `--store`
 * wherever they stand on the line (`stepwise models ls --json` parses them on `models`), so read both.
 */
function withFlags<A extends unknown[], F = object>(body: Action<A, Opened & F>) {
  return async (...args: unknown[]) => {
    const command = args[args.length - 1] as Command;
    const flags = command.optsWithGlobals<CommonFlags & F>();
    const location = flags.store ?? settings().store;
    const store = openStore(location);
    try {
      const opened = { ...flags, store, location };
      await body(...([...args.slice(0, -2), opened] as unknown as [...A, Opened & F]));
    } finally {
      await store.close();
    }
  };
}

const addCommon = (c: Command) =>
  c.option('--store <location>', 'artifact store (env STEPWISE_STORE)').option('--json', 'print JSON');

export function addModelsCommand(program: Command): void {
  const models = addCommon(
    program
      .command('models')
      .description(
        'the model registry: versions, aliases, statuses and the audit log (`stepwise models ls` with no subcommand)'
      )
      .argument('[name]', 'a model: list its versions')
  ).action(withFlags<[string | undefined]>(ls));

  addCommon(
    models
      .command('ls')
      .description('list models with their aliases, or the versions of one with status, aliases, accuracy and method')
      .argument('[name]', 'a model: list its versions')
  ).action(withFlags<[string | undefined]>(ls));

  addCommon(
    models
      .command('show')
      .description('one version: metrics, status and the record that set it, aliases, lineage, checkpoint')
      .argument('<ref>', 'NAME@VERSION, NAME@ALIAS or NAME (its latest version)')
  ).action(withFlags<[string]>(show));

  addCommon(
    models
      .command('promote')
      .description('point an alias at a version; refused if another promotion moved the alias meanwhile')
      .argument('<ref>', 'the version to promote: NAME@VERSION (or NAME@ALIAS, resolved now)')
      .requiredOption('--alias <alias>', 'the alias to move, e.g. champion')
      .option('--why <reason>', 'recorded in the audit log (default "promoted by <identity>")')
      .option('--identity <who>', 'who promotes, for the audit log (default: the OS user)')
  ).action(withFlags<[string], PromoteFlags>(promote));

  for (const kind of ['approve', 'reject'] as const) {
    addCommon(
      models
        .command(kind)
        .description(
          `${kind} a candidate version: sent to its run when the run awaits approval, else recorded in the registry`
        )
        .argument('<ref>', 'NAME@VERSION')
        .option('--comment <text>', 'why, recorded in the audit log')
        .option('--identity <who>', 'who decides, for the audit log (default: the OS user)')
    ).action(withFlags<[string], DecideFlags>((ref, flags) => decide(kind, ref, flags)));
  }

  addCommon(
    models
      .command('archive')
      .description('archive a version no alias names')
      .argument('<ref>', 'NAME@VERSION')
      .option('--why <reason>', 'recorded in the audit log (default "archived by <identity>")')
      .option('--identity <who>', 'who archives, for the audit log (default: the OS user)')
  ).action(withFlags<[string], ArchiveFlags>(archive));

  addCommon(
    models
      .command('diff')
      .description(
        'two versions side by side: config, data hashes, teacher, prompt, validation, backend, code, metrics'
      )
      .argument('<a>', 'NAME@REF')
      .argument('<b>', 'NAME@REF')
  ).action(withFlags<[string, string]>(diff));

  addCommon(
    models
      .command('history')
      .description('every change to a model, oldest first: registrations, gate decisions, approvals, alias moves')
      .argument('<name>', 'a model name')
  ).action(withFlags<[string]>(history));

  addCommon(
    models
      .command('at')
      .description('the version an alias named at a moment, from the audit log alone')
      .argument('<ref>', 'NAME@ALIAS')
      .requiredOption('--time <iso-8601>', 'e.g. 2026-03-03T12:00:00Z (a time without an offset is UTC)')
  ).action(withFlags<[string], { time: string }>(at));
}

/** The flags with the store opened; `location` is the store as given, for processes started from here. */
interface Opened {
  json?: boolean;
  store: ArtifactStore;
  location: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

async function ls(name: string | undefined, flags: Opened): Promise<void> {
  const { store } = flags;
  if (!name) {
    const listed = await Promise.all(
      (await listModels(store)).map(async (model) => ({
        name: model,
        versions: (await listVersions(store, model)).length,
        aliases: Object.fromEntries((await listAliases(store, model)).map((a) => [a.alias, a.version])),
      }))
    );
    if (flags.json) return console.log(JSON.stringify(listed));
    if (listed.length === 0) return console.log(`(no models registered in ${store.location})`);
    for (const m of listed) {
      const aliases = Object.entries(m.aliases).map(([alias, v]) => `${alias} → v${v}`);
      console.log(`${m.name}  ${m.versions} version${m.versions === 1 ? '' : 's'}  ${aliases.join(', ')}`.trimEnd());
    }
    return;
  }
  const model = checkModelName(name, 'name');
  const numbers = await listVersions(store, model);
  if (numbers.length === 0) throw noModel(store, model);
  const aliases = await listAliases(store, model);
  const versions = await Promise.all(
    numbers.map(async (n) => {
      const [v, status] = await Promise.all([getVersion(store, model, n), versionStatus(store, model, n)]);
      return {
        version: n,
        createdAt: v?.createdAt,
        status: status?.status,
        aliases: aliases.filter((a) => a.version === n).map((a) => a.alias),
        accuracy: v?.metrics.accuracy,
        method: v?.lineage.training.method,
        workflowId: v?.lineage.workflowId,
      };
    })
  );
  if (flags.json) return console.log(JSON.stringify(versions));
  for (const v of versions) {
    console.log(
      [
        `${model} v${v.version}`,
        v.createdAt ?? '-',
        (v.status ?? '-').padEnd(9),
        `accuracy ${pct(v.accuracy)}`,
        v.method ?? '-',
        v.aliases.length ? `[${v.aliases.join(', ')}]` : '',
        v.workflowId ? `run ${v.workflowId}` : '',
      ]
        .filter(Boolean)
        .join('  ')
    );
  }
}

async function show(ref: string, flags: Opened): Promise<void> {
  const { store } = flags;
  const { version: v } = await resolveRef(store, ref, 'ref');
  const [status, aliases] = await Promise.all([
    versionStatus(store, v.name, v.version),
    listAliases(store, v.name).then((all) => all.filter((a) => a.version === v.version).map((a) => a.alias)),
  ]);
  if (flags.json) return console.log(JSON.stringify({ ...v, status, aliases }));
  const l = v.lineage;
  const t = l.training;
  const lines = [
    `${v.name} v${v.version}  registered ${v.createdAt}`,
    `status      ${status?.status ?? '-'}${status?.record ? `  (${recordClause(status.record)})` : ''}`,
    `aliases     ${aliases.join(', ') || '(none)'}`,
    `metrics     accuracy ${pct(v.metrics.accuracy)} (${v.metrics.correct}/${v.metrics.total}), majority baseline ${pct(v.metrics.majorityBaseline)}`,
    `data        ${l.dataset.kind} ${l.dataset.task} ${l.dataset.source}; dataset ${l.dataset.datasetHash}, sample ${l.dataset.sampleHash}; ${JSON.stringify(l.dataset.counts)}`,
    l.teacher
      ? `teacher     ${l.teacher.kind} ${l.teacher.model}; template ${l.teacher.templateHash}; responses ${l.teacher.responses}`
      : `teacher     (none recorded)`,
    ...(l.validation
      ? [
          `validation  kept ${l.validation.kept}, dropped ${JSON.stringify(l.validation.dropped)}; report ${l.validation.report}`,
        ]
      : []),
    `training    ${t.method} (${t.labelSource} labels) on ${t.backend}: ${t.steps} steps, final loss ${t.finalLoss}, ${t.params} params` +
      (t.initFrom ? `; from ${t.initFrom.name}@${t.initFrom.version} (${t.initFrom.ref})` : ''),
    `code        ${l.codeVersion}`,
    `run         ${l.workflowId} (run ${l.runId}); manifest ${l.manifest}`,
    `checkpoint  ${v.checkpoint.uri} (${v.checkpoint.size} bytes)`,
  ];
  console.log(lines.join('\n'));
}

async function diff(a: string, b: string, flags: Opened): Promise<void> {
  const { store } = flags;
  const [va, vb] = await Promise.all([resolveRef(store, a, 'a'), resolveRef(store, b, 'b')]);
  const [sa, sb] = await Promise.all([splitHashes(store, va.version), splitHashes(store, vb.version)]);
  const rows = sideBySide(diffFields(va.version, sa), diffFields(vb.version, sb));
  if (flags.json) return console.log(JSON.stringify(rows));
  const label = (v: ModelVersion) => `${v.name}@${v.version}`;
  console.log(diffTable([label(va.version), label(vb.version)], rows).join('\n'));
}

/** The split hashes from the version's run manifest; none when it cannot be read (the row then shows `-`). */
async function splitHashes(store: ArtifactStore, v: ModelVersion): Promise<SplitHashes> {
  const read = await readVersionManifest(store, v);
  if ('problem' in read) return {};
  const of = (role: string) => read.manifest.artifacts?.find((x) => x.role === role)?.sha256;
  return { train: of('split/train'), valid: of('split/valid'), test: of('split/test') };
}

async function history(name: string, flags: Opened): Promise<void> {
  const { store } = flags;
  const model = checkModelName(name, 'name');
  const records = await modelHistory(store, model);
  if (records.length === 0 && (await listVersions(store, model)).length === 0) throw noModel(store, model);
  if (flags.json) return console.log(JSON.stringify(records));
  for (const r of records) console.log(historyLine(r));
}

async function at(ref: string, flags: Opened & { time: string }): Promise<void> {
  const { store } = flags;
  const parsed = parseModelRef(ref, 'ref');
  if (parsed.kind !== 'alias') {
    throw new InputError(`ref: ${JSON.stringify(ref)} names a version, not an alias: expected NAME@ALIAS`, 'ref');
  }
  const time = parseTime(flags.time);
  const records = await modelHistory(store, parsed.name);
  const moves = records.filter((r) => r.action === 'alias' && r.alias === parsed.alias);
  if (moves.length === 0) {
    if (records.length === 0 && (await listVersions(store, parsed.name)).length === 0) {
      throw noModel(store, parsed.name, 'ref');
    }
    throw new InputError(`ref: ${ref}: model ${parsed.name} has no alias ${JSON.stringify(parsed.alias)}`, 'ref');
  }
  const version = aliasAt(records, parsed.alias, time);
  // The record that set it: the alias's last move at or before the time (aliasAt's own rule).
  const setBy =
    version === undefined
      ? undefined
      : moves
          .filter((r) => r.when <= time.toISOString())
          .sort((x, y) => x.seq - y.seq)
          .at(-1);
  if (flags.json) return console.log(JSON.stringify(setBy ? { version, record: setBy } : null));
  const when = time.toISOString();
  if (!setBy) {
    const first = moves.sort((x, y) => x.seq - y.seq)[0];
    return console.log(`${parsed.name}@${parsed.alias} at ${when}: no version (first set ${first.when})`);
  }
  console.log(`${parsed.name}@${parsed.alias} at ${when}: v${version}  (set by ${recordClause(setBy)})`);
}

function noModel(store: ArtifactStore, name: string, field = 'name'): InputError {
  return new InputError(`${field}: no model ${JSON.stringify(name)} in ${store.location}`, field);
}

// ---------------------------------------------------------------------------------------------------------------
// Changing

interface PromoteFlags {
  alias: string;
  why?: string;
  identity?: string;
}

/** Move the alias (cli/shared/registry-actions.ts holds the rule the web UI shares). */
async function promote(ref: string, flags: Opened & PromoteFlags): Promise<void> {
  const p = await promoteToAlias(flags.store, ref, flags);
  if (!p.record) {
    if (flags.json) return console.log(JSON.stringify(null));
    return console.log(`${p.alias}: already v${p.version.version}; nothing written`);
  }
  if (flags.json) return console.log(JSON.stringify(p.record));
  console.log(`${p.alias}: ${versionLabel(p.before)} → v${p.version.version}`);
}

interface DecideFlags {
  comment?: string;
  identity?: string;
}

/** Approve or reject: through the run when it waits for the decision, in the registry otherwise. */
async function decide(kind: 'approve' | 'reject', ref: string, flags: Opened & DecideFlags): Promise<void> {
  const done = kind === 'approve' ? 'approved' : 'rejected';
  const decision = await decideVersion(flags.store, ref, kind, {
    ...flags,
    connect: () => connectForDecision(flags.location),
  });
  const v = decision.version;
  if (decision.by === 'run') {
    const { outcome } = decision;
    if (flags.json) return console.log(JSON.stringify(outcome));
    const moved =
      outcome.outcome === 'promoted'
        ? `; ${outcome.alias}: ${versionLabel(outcome.previous)} → v${outcome.version}`
        : '';
    return console.log(
      `${v.name} v${v.version}: ${done} by ${decision.who} in run ${decision.workflowId}: ${outcome.outcome}${moved}`
    );
  }
  if (decision.closedRun) {
    log(`stepwise: run ${decision.closedRun} is no longer running; recording the decision in the registry`);
  }
  if (flags.json) return console.log(JSON.stringify(decision.record));
  console.log(`${v.name} v${v.version}: ${String(decision.record.from)} → ${String(decision.record.to)}`);
}

async function archive(ref: string, flags: Opened & ArchiveFlags): Promise<void> {
  const record = await archiveVersion(flags.store, ref, flags);
  if (flags.json) return console.log(JSON.stringify(record));
  console.log(`${record.model} v${String(record.version)}: ${String(record.from)} → ${String(record.to)}`);
}

interface ArchiveFlags {
  why?: string;
  identity?: string;
}

/**
 * The Temporal service the waiting run is on: the configured cluster, or the embedded state's, started here with
 * workers (the run's update handler needs one to run). A `stepwise run` still serving that state holds it: the user
 * then points TEMPORAL_ADDRESS at the dev server that run printed.
 */
async function connectForDecision(store: string): Promise<DecisionClient> {
  if (settings().clusterConfigured) {
    const target = temporalTarget();
    const temporal = await connectClient(target);
    return { client: temporal.client, where: `namespace ${target.namespace}`, stop: () => temporal.close() };
  }
  try {
    return await openServices(store);
  } catch (err) {
    if (err instanceof InputError && err.field === 'STEPWISE_HOME') {
      throw new InputError(
        `${err.message}; to decide on a run that process serves, set TEMPORAL_ADDRESS to the dev server address it printed`,
        'STEPWISE_HOME'
      );
    }
    throw err;
  }
}
