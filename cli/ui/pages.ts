/**
 * The pages of `stepwise ui`: each reads what it shows (Temporal's visibility and queries, the registry in the
 * artifact store) through the same functions the `stepwise runs`, `models` and `lineage` commands use, and renders
 * it. Pages never hold a secret: the store is named without credentials, specs are not shown, lineage details pass
 * through the registry's own redaction (lib/registry/lineage.ts).
 */
import { WorkflowNotFoundError, type Client, type WorkflowExecutionDescription } from '@temporalio/client';
import {
  progressQuery,
  RUN_OUTCOMES,
  StepwiseMethod,
  StepwiseModel,
  StepwiseOutcome,
  StepwiseTask,
  type PipelineProgress,
  type RunOutcome,
} from '../../contract';
import { InputError } from '../../lib/errors';
import type { ArtifactStore } from '../../lib/store';
import { getVersion, listModels, listVersions } from '../../lib/registry/registry';
import { listAliases, modelHistory, versionStatus, type AuditRecord } from '../../lib/registry/audit';
import { checkModelName } from '../../lib/registry/names';
import { lineageTree, redact, type LineageNode } from '../../lib/registry/lineage';
import { readRunReport, runReportHtmlKey } from '../../lib/report/run-report';
import { listRuns, runsQuery, STATUSES, type RunsFilter, type StatusFlag } from '../commands/runs';
import { pct, recordClause, subjectOf, versionLabel } from '../shared/models-format';
import { awaitsApproval } from '../shared/registry-actions';
import { actionForm, esc, href, link, page, statusBadge } from './layout';

/** What every page reads from. */
export interface UiContext {
  /** Undefined when there is no Temporal service to read (the embedded state has no database yet). */
  temporal?: {
    client: Client;
    namespace: string;
    /** Whether a worker answers the progress query (false: embedded state served without workers). */
    queryProgress: boolean;
  };
  store: ArtifactStore;
  /** The Temporal Web UI's base URL, for links to a run's history. */
  temporalUiUrl?: string;
  /** Actions are on (`--allow-actions`): the pages show their forms. */
  actions: boolean;
  /** Where the data comes from, for the footer: never with credentials. */
  footer: string;
}

/** A rendered response. */
export interface Rendered {
  status: number;
  body: string;
  contentType?: string;
}

/** How long a run has to answer the progress query before the page renders without it. */
const QUERY_DEADLINE_MS = 3_000;

const html = (body: string, status = 200): Rendered => ({ status, body });

// ---------------------------------------------------------------------------------------------------------------
// Runs

/** `/`: pipeline runs from Temporal's visibility store, filtered by the search attributes. */
export async function runsPage(ctx: UiContext, query: URLSearchParams, nonce: string): Promise<Rendered> {
  const frame = (body: string, refreshSeconds?: number) =>
    page({ title: 'runs', body, nonce, actions: ctx.actions, footer: ctx.footer, refreshSeconds });
  if (!ctx.temporal) {
    return html(frame('<h1>Runs</h1><p class="muted">No runs: the embedded state has no Temporal database yet.</p>'));
  }
  let filter: RunsFilter;
  let limit: number;
  try {
    filter = runsFilter(query);
    limit = limitOf(query.get('limit'));
    runsQuery(filter); // checks every value before anything is asked
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    return html(frame(`<h1>Runs</h1>${filterForm(query)}<p class="message error">${esc(err.message)}</p>`), 400);
  }
  const runs = await listRuns(ctx.temporal.client, { ...filter, limit, queryProgress: ctx.temporal.queryProgress });
  const rows = runs.map(
    (r) =>
      `<tr data-workflow-id="${esc(r.workflowId)}"><td>${link(['runs', r.workflowId], r.workflowId)}</td>` +
      `<td>${statusBadge('status', r.status)}${r.stage ? ` <span class="muted">${esc(r.stage)}</span>` : ''}</td>` +
      `<td class="mono">${esc(r.startTime)}</td>` +
      `<td>${r.model ? link(['models', r.model], r.model) : '-'}</td><td>${esc(r.task ?? '-')}</td>` +
      `<td>${esc(r.method ?? '-')}</td><td>${esc(r.outcome ?? '-')}</td></tr>`
  );
  const table = rows.length
    ? `<table id="runs"><thead><tr><th>workflow id</th><th>state</th><th>started</th><th>model</th><th>task</th>` +
      `<th>method</th><th>outcome</th></tr></thead><tbody>${rows.join('')}</tbody></table>`
    : '<p class="muted">No runs match.</p>';
  const running = runs.some((r) => r.status === 'running');
  return html(frame(`<h1>Runs</h1>${filterForm(query)}${table}`, running ? 10 : undefined));
}

function runsFilter(query: URLSearchParams): RunsFilter {
  const value = (name: string) => query.get(name)?.trim() || undefined;
  const status = value('status');
  if (status !== undefined && !(status in STATUSES)) {
    throw new InputError(`status must be one of ${Object.keys(STATUSES).join(', ')}, got '${status}'`, 'status');
  }
  const outcome = value('outcome');
  if (outcome !== undefined && !(RUN_OUTCOMES as readonly string[]).includes(outcome)) {
    throw new InputError(`outcome must be one of ${RUN_OUTCOMES.join(', ')}, got '${outcome}'`, 'outcome');
  }
  return {
    model: value('model'),
    status: status as StatusFlag | undefined,
    task: value('task'),
    method: value('method'),
    outcome: outcome as RunOutcome | undefined,
  };
}

function limitOf(value: string | null): number {
  if (value === null || value === '') return 50;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    throw new InputError(`limit must be an integer from 1 to 1000, got '${value}'`, 'limit');
  }
  return n;
}

function filterForm(query: URLSearchParams): string {
  const text = (name: string, label: string) =>
    `<label>${esc(label)}<input name="${name}" value="${esc(query.get(name) ?? '')}" size="14"></label>`;
  const select = (name: string, choices: readonly string[]) =>
    `<label>${name}<select name="${name}"><option value="">any</option>${choices
      .map((c) => `<option${query.get(name) === c ? ' selected' : ''}>${esc(c)}</option>`)
      .join('')}</select></label>`;
  return (
    `<form class="filters" method="get" action="/">${text('model', 'model')}${select('status', Object.keys(STATUSES))}` +
    `${text('task', 'task')}${text('method', 'method')}${select('outcome', RUN_OUTCOMES)}` +
    `<button type="submit">filter</button></form>`
  );
}

/** The state of a run page's live part: its signature changes when a reload is due (a stage ends, a wait begins). */
export interface RunState {
  status: string;
  signature: string;
  stages: { name: string; status: string; summary?: string; progress?: string; fraction?: number }[];
  awaitingApproval?: PipelineProgress['awaitingApproval'];
}

/** A run's status and, while it runs and a worker answers, its progress. Undefined when the run does not exist. */
async function runState(
  ctx: UiContext,
  workflowId: string
): Promise<{ state: RunState; description: WorkflowExecutionDescription } | undefined> {
  const { client, queryProgress } = ctx.temporal!;
  const handle = client.workflow.getHandle(workflowId);
  let description: WorkflowExecutionDescription;
  try {
    description = await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
  const status = description.status.name.toLowerCase().replace(/_/g, '-');
  let progress: PipelineProgress | undefined;
  if (status === 'running' && queryProgress) {
    progress = await client
      .withDeadline(Date.now() + QUERY_DEADLINE_MS, () => handle.query(progressQuery))
      .catch(() => undefined);
  }
  const stages = (progress?.stages ?? []).map((s) => {
    const live = s.status === 'running' && progress!.total > 0;
    const waits = s.name === 'gate' && s.status === 'running' && progress!.awaitingApproval;
    return {
      ...s,
      ...(waits ? { progress: 'awaiting approval' } : {}),
      ...(live
        ? { progress: `${progress!.step}/${progress!.total}`, fraction: Math.min(1, progress!.step / progress!.total) }
        : {}),
    };
  });
  const waiting = progress?.awaitingApproval;
  const signature = [
    status,
    stages.map((s) => `${s.name}:${s.status}`).join(','),
    waiting ? `${waiting.name}@${waiting.version}` : '',
  ].join('|');
  return { state: { status, signature, stages, ...(waiting ? { awaitingApproval: waiting } : {}) }, description };
}

/** `/runs/<id>/progress.json`: what the run page's script polls. */
export async function runProgressJson(ctx: UiContext, workflowId: string): Promise<Rendered> {
  const found = ctx.temporal ? await runState(ctx, workflowId) : undefined;
  if (!found) return { status: 404, body: JSON.stringify({ error: 'no such run' }), contentType: 'application/json' };
  return { status: 200, body: JSON.stringify(found.state), contentType: 'application/json' };
}

/** `/runs/<id>`: live stage progress while the run runs, its approval wait, and its report once it has one. */
export async function runPage(ctx: UiContext, workflowId: string, nonce: string): Promise<Rendered> {
  const frame = (body: string, more: { refreshSeconds?: number; poll?: { url: string; signature: string } } = {}) =>
    page({ title: workflowId, body, nonce, actions: ctx.actions, footer: ctx.footer, ...more });
  const found = ctx.temporal ? await runState(ctx, workflowId) : undefined;
  if (!found) {
    return html(frame(`<h1>Run ${esc(workflowId)}</h1><p class="message error">No such run.</p>`), 404);
  }
  const { state, description: d } = found;
  const attrs = d.typedSearchAttributes;
  const model = attrs.get(StepwiseModel);
  const ns = ctx.temporal!.namespace;
  const temporalLink = ctx.temporalUiUrl
    ? `<a href="${esc(`${ctx.temporalUiUrl.replace(/\/$/, '')}/namespaces/${encodeURIComponent(ns)}/workflows/${encodeURIComponent(workflowId)}/${encodeURIComponent(d.runId)}`)}">open in the Temporal UI</a>`
    : `<span class="muted">Temporal: namespace ${esc(ns)}, workflow ${esc(workflowId)} (start with --temporal-ui URL for a link)</span>`;
  const facts: [string, string][] = [
    ['status', statusBadge('status', state.status)],
    ['model', model ? link(['models', model], model) : '-'],
    ['task', esc(attrs.get(StepwiseTask) ?? '-')],
    ['method', esc(attrs.get(StepwiseMethod) ?? '-')],
    ['outcome', esc(attrs.get(StepwiseOutcome) ?? '-')],
    ['started', `<span class="mono">${esc(d.startTime.toISOString())}</span>`],
    ['closed', d.closeTime ? `<span class="mono">${esc(d.closeTime.toISOString())}</span>` : '-'],
    ['Temporal run', `<span class="mono">${esc(d.runId)}</span> · ${temporalLink}`],
  ];
  const parts = [
    `<h1>Run <span class="mono">${esc(workflowId)}</span></h1>`,
    `<table class="facts"><tbody>${facts.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${v}</td></tr>`).join('')}</tbody></table>`,
  ];
  if (state.awaitingApproval) parts.push(approvalBox(ctx, workflowId, state.awaitingApproval));
  if (state.stages.length) parts.push(`<h2>Stages</h2>${stageTable(state)}`);
  else if (state.status === 'running') {
    parts.push(
      `<p class="muted">${ctx.temporal!.queryProgress ? 'No progress yet (no worker answered the progress query).' : 'Progress is not shown: no worker serves this embedded state (`stepwise resume` continues the run).'}</p>`
    );
  }
  const report = await readRunReport(ctx.store, workflowId).catch(() => undefined);
  if (report) {
    const src = href(['runs', workflowId, 'report']);
    parts.push(
      `<h2>Report</h2><p>${esc(report.outcome)}; ${esc(report.charts)} charts, generated ${esc(report.generatedAt)} · ` +
        `<a href="${esc(src)}" data-testid="report-link">open the report alone</a></p>` +
        `<iframe class="report" sandbox src="${esc(src)}" title="run report"></iframe>`
    );
  } else {
    parts.push(
      `<p class="muted">${state.status === 'running' ? 'The report is written when the run ends.' : 'This run has no report (runs from before reports have none).'}</p>`
    );
  }
  const live = state.status === 'running';
  return html(
    frame(
      parts.join('\n'),
      live
        ? { refreshSeconds: 5, poll: { url: href(['runs', workflowId, 'progress.json']), signature: state.signature } }
        : {}
    )
  );
}

function stageTable(state: RunState): string {
  const rows = state.stages.map(
    (s) =>
      `<tr data-stage="${esc(s.name)}"><td>${esc(s.name)}</td><td>${statusBadge('stage', s.status)}</td>` +
      `<td><span class="bar"><span id="bar-${esc(s.name)}" style="width:${s.status === 'done' ? 100 : ((s.fraction ?? 0) * 100).toFixed(0)}%"></span></span> ` +
      `<span id="progress-${esc(s.name)}" class="mono">${esc(s.progress ?? '')}</span></td><td>${esc(s.summary ?? '')}</td></tr>`
  );
  return `<table id="stages"><thead><tr><th>stage</th><th>status</th><th>progress</th><th>summary</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function approvalBox(ctx: UiContext, workflowId: string, a: NonNullable<PipelineProgress['awaitingApproval']>): string {
  const ref = `${a.name}@${a.version}`;
  const head =
    `<p><strong>Awaiting approval:</strong> ${link(['models', a.name], a.name)} ` +
    `${link(['models', a.name, a.version, 'lineage'], `v${a.version}`)} for alias <code>${esc(a.alias)}</code>, ` +
    `until <span class="mono">${esc(a.deadline)}</span>.</p>`;
  const how = ctx.actions
    ? decisionForms(a.name, a.version, href(['runs', workflowId]))
    : `<p class="muted">Decide with <code>stepwise models approve ${esc(ref)}</code> or <code>reject</code> ` +
      `(or start <code>stepwise ui --allow-actions</code>).</p>`;
  return `<div class="box waiting" id="awaiting-approval">${head}${how}</div>`;
}

function decisionForms(name: string, version: number, back: string): string {
  const inputs =
    '<input name="comment" placeholder="comment (audit log)" size="24">' +
    '<input name="identity" placeholder="who (default: OS user)" size="16">';
  return ['approve', 'reject']
    .map((kind) =>
      actionForm({
        action: href(['models', name, version, kind]),
        label: kind,
        fields: { back },
        inputs,
        buttonClass: kind,
        testId: kind,
      })
    )
    .join('');
}

/** `/runs/<id>/report`: the run's self-contained report page, as the store holds it. */
export async function runReport(ctx: UiContext, workflowId: string): Promise<Rendered> {
  const record = await readRunReport(ctx.store, workflowId).catch(() => undefined);
  if (!record) return { status: 404, body: 'no report for this run', contentType: 'text/plain; charset=utf-8' };
  const bytes = (await ctx.store.getKey(runReportHtmlKey(workflowId))) ?? (await ctx.store.get(record.report));
  return { status: 200, body: bytes.toString('utf8'), contentType: 'text/html; charset=utf-8' };
}

// ---------------------------------------------------------------------------------------------------------------
// Models

/** `/models`: every model with its version count and aliases. */
export async function modelsPage(ctx: UiContext, nonce: string): Promise<Rendered> {
  const models = await Promise.all(
    (await listModels(ctx.store)).map(async (name) => ({
      name,
      versions: (await listVersions(ctx.store, name)).length,
      aliases: await listAliases(ctx.store, name),
    }))
  );
  const rows = models.map(
    (m) =>
      `<tr><td>${link(['models', m.name], m.name)}</td><td class="num">${m.versions}</td><td>${m.aliases
        .map((a) => `${esc(a.alias)} → v${esc(a.version)}`)
        .join(', ')}</td></tr>`
  );
  const body = rows.length
    ? `<table id="models"><thead><tr><th>model</th><th>versions</th><th>aliases</th></tr></thead><tbody>${rows.join('')}</tbody></table>`
    : '<p class="muted">No models registered.</p>';
  return html(
    page({ title: 'models', body: `<h1>Models</h1>${body}`, nonce, actions: ctx.actions, footer: ctx.footer })
  );
}

/** The model name a URL holds, checked; or the page that says what is wrong with it (400). */
function nameOrPage(rawName: string, frame: (body: string) => string): string | Rendered {
  try {
    return checkModelName(rawName, 'name');
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    return html(frame(`<p class="message error">${esc(err.message)}</p>`), 400);
  }
}

/** `/models/<name>`: versions with status, aliases and metrics; the aliases; the audit history; the actions. */
export async function modelPage(ctx: UiContext, rawName: string, nonce: string): Promise<Rendered> {
  const frame = (body: string) => page({ title: rawName, body, nonce, actions: ctx.actions, footer: ctx.footer });
  const name = nameOrPage(rawName, frame);
  if (typeof name !== 'string') return name;
  const [numbers, aliases, history] = await Promise.all([
    listVersions(ctx.store, name),
    listAliases(ctx.store, name),
    modelHistory(ctx.store, name),
  ]);
  if (numbers.length === 0 && history.length === 0) {
    return html(frame(`<h1>${esc(name)}</h1><p class="message error">No model ${esc(name)} in the registry.</p>`), 404);
  }
  const versions = await Promise.all(
    numbers.map(async (n) => {
      const [v, status] = await Promise.all([getVersion(ctx.store, name, n), versionStatus(ctx.store, name, n)]);
      return { n, v, status, aliases: aliases.filter((a) => a.version === n).map((a) => a.alias) };
    })
  );
  const back = href(['models', name]);
  const rows = versions
    .slice()
    .reverse()
    .map(({ n, v, status, aliases: named }) => {
      const actions: string[] = [];
      if (ctx.actions) {
        if (status?.record && awaitsApproval(status.record)) actions.push(decisionForms(name, n, back));
        if (status?.status !== 'archived' && status?.status !== 'rejected') {
          actions.push(
            actionForm({
              action: href(['models', name, n, 'promote']),
              label: 'promote',
              fields: { back },
              inputs: '<input name="alias" value="champion" size="10" required aria-label="alias">',
              testId: `promote-${n}`,
            })
          );
        }
        if (named.length === 0 && status?.status !== 'archived') {
          actions.push(
            actionForm({
              action: href(['models', name, n, 'archive']),
              label: 'archive',
              fields: { back },
              testId: `archive-${n}`,
            })
          );
        }
      }
      return (
        `<tr data-version="${n}"><td>${link(['models', name, n, 'lineage'], `v${n}`)}</td>` +
        `<td class="mono">${esc(v?.createdAt ?? '-')}</td>` +
        `<td title="${esc(status?.record ? recordClause(status.record) : '')}">${statusBadge('st', status?.status)}</td>` +
        `<td class="aliases">${esc(named.join(', '))}</td><td class="num">${esc(pct(v?.metrics.accuracy))}</td>` +
        `<td>${esc(v?.lineage.training.method ?? '-')}</td>` +
        `<td>${v ? link(['runs', v.lineage.workflowId], v.lineage.workflowId) : '-'}</td>` +
        (ctx.actions ? `<td>${actions.join('')}</td>` : '') +
        '</tr>'
      );
    });
  const aliasRows = aliases.map(
    (a) =>
      `<tr data-alias="${esc(a.alias)}"><td>${esc(a.alias)}</td><td>${link(['models', name, a.version, 'lineage'], `v${a.version}`)}</td>` +
      `<td>${esc(recordClause(a.record))}</td></tr>`
  );
  const historyRows = history.map(
    (r) =>
      `<tr><td class="mono">${esc(r.when)}</td><td>${esc(r.action)}</td><td>${esc(subjectOf(r))}</td>` +
      `<td>${esc(`${valueOf(r, r.from)} → ${valueOf(r, r.to)}`)}</td><td>${esc(r.who)}</td><td>${esc(r.why)}</td>` +
      `<td>${r.workflowId ? link(['runs', r.workflowId], r.workflowId) : ''}</td></tr>`
  );
  const body = [
    `<h1>Model ${esc(name)}</h1>`,
    '<h2>Aliases</h2>',
    aliasRows.length
      ? `<table id="aliases"><thead><tr><th>alias</th><th>version</th><th>set by</th></tr></thead><tbody>${aliasRows.join('')}</tbody></table>`
      : '<p class="muted">No aliases.</p>',
    '<h2>Versions</h2>',
    `<table id="versions"><thead><tr><th>version</th><th>registered</th><th>status</th><th>aliases</th><th>accuracy</th>` +
      `<th>method</th><th>run</th>${ctx.actions ? '<th>actions</th>' : ''}</tr></thead><tbody>${rows.join('')}</tbody></table>`,
    '<h2>History</h2>',
    `<table id="history"><thead><tr><th>when</th><th>action</th><th>subject</th><th>change</th><th>who</th><th>why</th>` +
      `<th>run</th></tr></thead><tbody>${historyRows.join('')}</tbody></table>`,
  ];
  return html(frame(body.join('\n')));
}

/** A head's value as people read it: versions for aliases, statuses as they are. */
const valueOf = (r: AuditRecord, value: string | number | null) =>
  r.action === 'alias' ? versionLabel(value as number | null) : value === null ? '(none)' : String(value);

/** `/models/<name>/<version>/lineage`: the version's facts and where it came from, as one tree. */
export async function lineagePage(
  ctx: UiContext,
  rawName: string,
  rawVersion: string,
  nonce: string
): Promise<Rendered> {
  const frame = (body: string) =>
    page({ title: `${rawName}@${rawVersion} lineage`, body, nonce, actions: ctx.actions, footer: ctx.footer });
  const name = nameOrPage(rawName, frame);
  if (typeof name !== 'string') return name;
  const n = Number(rawVersion);
  const v = Number.isSafeInteger(n) && n >= 1 ? await getVersion(ctx.store, name, n) : undefined;
  if (!v) return html(frame(`<p class="message error">No version ${esc(rawVersion)} of ${esc(name)}.</p>`), 404);
  const [tree, status, aliases] = await Promise.all([
    lineageTree(ctx.store, v),
    versionStatus(ctx.store, name, n),
    listAliases(ctx.store, name).then((all) => all.filter((a) => a.version === n).map((a) => a.alias)),
  ]);
  const wid = v.lineage.workflowId;
  const report = await readRunReport(ctx.store, wid).catch(() => undefined);
  const facts: [string, string][] = [
    [
      'status',
      `${statusBadge('st', status?.status)} ${status?.record ? `<span class="muted">${esc(recordClause(status.record))}</span>` : ''}`,
    ],
    ['aliases', esc(aliases.join(', ') || '(none)')],
    [
      'accuracy',
      esc(
        `${pct(v.metrics.accuracy)} (${v.metrics.correct}/${v.metrics.total}); majority baseline ${pct(v.metrics.majorityBaseline)}`
      ),
    ],
    [
      'training',
      esc(`${v.lineage.training.method} on ${v.lineage.training.backend}, ${v.lineage.training.steps} steps`),
    ],
    ['run', `${link(['runs', wid], wid)}${report ? ` · ${link(['runs', wid, 'report'], 'report')}` : ''}`],
  ];
  const body =
    `<h1>${link(['models', name], name)} v${n}: lineage</h1>` +
    `<table class="facts"><tbody>${facts.map(([k, val]) => `<tr><th>${esc(k)}</th><td>${val}</td></tr>`).join('')}</tbody></table>` +
    `<h2>Where it came from</h2><ul class="tree" id="lineage">${lineageNode(tree)}</ul>`;
  return html(frame(body));
}

function lineageNode(node: LineageNode): string {
  const extra = [
    node.hash && !node.label.includes(node.hash) ? `sha256 ${node.hash}` : '',
    node.uri ? `${node.role ? `${node.role} ` : ''}${node.uri}` : '',
  ].filter(Boolean);
  const details = node.details
    ? `<details><summary class="muted">details</summary><pre class="mono">${esc(JSON.stringify(redact(node.details), null, 2))}</pre></details>`
    : '';
  return (
    `<li data-kind="${esc(node.kind)}"><span class="kind">${esc(node.kind)}</span> ${esc(node.label)}` +
    extra.map((x) => `<div class="mono muted">${esc(x)}</div>`).join('') +
    details +
    (node.children.length ? `<ul>${node.children.map(lineageNode).join('')}</ul>` : '') +
    '</li>'
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Messages

/** The page an action answers with, or a refusal. */
export function messagePage(
  ctx: UiContext,
  nonce: string,
  opts: { title: string; message: string; error?: boolean; back?: string; status?: number }
): Rendered {
  const back = opts.back ? `<p><a href="${esc(opts.back)}" data-testid="back">back</a></p>` : '';
  const body = `<h1>${esc(opts.title)}</h1><p class="message${opts.error ? ' error' : ''}" id="message">${esc(opts.message)}</p>${back}`;
  return html(page({ title: opts.title, body, nonce, actions: ctx.actions, footer: ctx.footer }), opts.status ?? 200);
}
