/**
 * `stepwise ui` in a real headless Chromium (Debian's, infra/chromium.ts, driven by playwright-core), against the real
 * Temporal dev server, versitygw and pipeline workers: a run that waits at its gate is found in the runs list, its
 * page shows the stages and the wait, approve is clicked with the token, the alias moves on the model page, and the
 * version's lineage and the run's report open. A second test shows that actions are refused without
 * `--allow-actions` (the real command, as a child process) and without or with a wrong token, and that no button
 * renders when actions are off. Screenshots and the pages' render times land in test-results/ui/.
 */
import { request } from 'node:http';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import test from 'ava';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { WorkflowHandle } from '@temporalio/client';
import { CPU_TASK_QUEUE, progressQuery } from '../contract';
import type { distillationPipeline } from '../workflows';
import { startPipelineRun } from '../workers/search-attributes';
import { ensureChromium } from '../infra/chromium';
import { parseSpec, type PipelineSpecInput } from '../lib/pipeline/spec';
import { getAlias, modelHistory } from '../lib/registry/audit';
import { newActionToken, startUiServer, type UiServer } from '../cli/ui/server';
import { startUi as startUiProcess } from './helpers/cli';
import { servicesForFile } from './helpers/services';

const services = servicesForFile();
const OUT = resolve(__dirname, '..', 'test-results', 'ui');
const MODEL = 'ui-demo';

/** Tiny: the same data for both runs, so the candidate is compared on the champion's own test split. */
const spec = (gate: PipelineSpecInput['gate']): PipelineSpecInput => ({
  name: MODEL,
  data: { kind: 'demo', size: 120, seed: 4 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 20, batchSize: 16 },
  gate,
});

let browser: Browser;
let first: string;
let waiting: WorkflowHandle<typeof distillationPipeline>;
/** Each page's server render time (its Server-Timing header), for the figures. */
const timings: { page: string; ms: number }[] = [];

/**
 * The browser, a registered champion (v1) and a second run waiting at its gate (v2): made once, by the first test
 * that asks (ava runs `before` hooks concurrently, so the services' own hook may not have finished in another).
 */
let prepared: Promise<void> | undefined;
const prepare = () => (prepared ??= prepareOnce());

async function prepareOnce(): Promise<void> {
  const [executablePath] = await Promise.all([ensureChromium(), mkdir(OUT, { recursive: true })]);
  // Root in a container has no user namespaces for Chromium's sandbox; the pages it opens are our own.
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  const { client } = services();
  // As `stepwise run` starts it: with its search attributes, which the runs list filters on.
  const start = (gate: PipelineSpecInput['gate'], n: number) =>
    startPipelineRun(
      client,
      parseSpec(spec(gate)),
      { taskQueue: CPU_TASK_QUEUE, workflowId: `ui-${n}-${Date.now()}` },
      () => undefined
    );
  const champion = await start({ firstVersion: 'always' }, 1);
  await champion.result();
  first = champion.workflowId;
  waiting = await start({ minImprovement: -1, approval: { timeoutSeconds: 600 } }, 2);
  for (let i = 0; ; i++) {
    const p = await waiting.query(progressQuery).catch(() => undefined);
    if (p?.awaitingApproval) break;
    if (i > 600) throw new Error('the second run never came to await approval');
    await new Promise((r) => setTimeout(r, 250));
  }
}

test.after.always(async () => {
  await browser?.close();
  if (timings.length) await writeFile(join(OUT, 'timings.json'), JSON.stringify(timings, null, 2));
});

/** Opens a page and records its render time. */
async function open(page: Page, url: string, name: string): Promise<void> {
  const res = await page.goto(url);
  const ms = Number(/render;dur=([\d.]+)/.exec((await res?.allHeaders())?.['server-timing'] ?? '')?.[1]);
  timings.push({ page: name, ms });
}

function startUi(actionToken?: string): Promise<UiServer> {
  const s = services();
  return startUiServer({
    temporal: { client: s.client, namespace: s.temporal.namespace, queryProgress: true },
    store: s.store,
    temporalUiUrl: 'http://127.0.0.1:8233',
    footer: `store ${s.storeLocation}`,
    port: 0,
    actionToken,
  });
}

/** A POST as a script (not a browser) sends it, with the headers given. */
function post(url: string, path: string, body: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolvePost, reject) => {
    const req = request(
      new URL(path, url),
      { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolvePost({ status: res.statusCode ?? 0, body: text }));
      }
    );
    req.on('error', reject);
    req.end(body);
  });
}

test.serial(
  'without --allow-actions, or without the right token, actions are refused and no button renders',
  async (t) => {
    await prepare();
    const s = services();
    // The real command, as a user starts it, pointed at the test's Temporal and store.
    const cli = await startUiProcess(['--port', '0'], {
      TEMPORAL_ADDRESS: s.temporal.address,
      TEMPORAL_NAMESPACE: s.temporal.namespace,
      STEPWISE_STORE: s.storeLocation,
    });
    const { url } = cli;
    try {
      const refused = await post(url, `/models/${MODEL}/1/promote`, 'alias=staging&token=anything');
      t.is(refused.status, 403);
      t.regex(refused.body, /actions are off/);

      const page = await browser.newPage();
      await open(page, `${url}models/${MODEL}`, 'model (actions off)');
      t.is(await page.locator('#versions tr[data-version]').count(), 2);
      t.is(await page.locator('form[method=post], button[type=submit]').count(), 0, 'no action buttons');
      await open(page, `${url}runs/${waiting.workflowId}`, 'run awaiting approval (actions off)');
      await page.locator('#awaiting-approval').waitFor();
      t.is(await page.locator('form[method=post]').count(), 0);
      t.regex(await page.locator('#awaiting-approval').innerText(), /stepwise models approve ui-demo@2/);
      await page.close();
    } finally {
      await cli.stop();
    }

    // With actions on: no token, a wrong one, another site's form, or another Host are all refused; the right one acts.
    const token = newActionToken();
    const ui = await startUi(token);
    try {
      const path = `/models/${MODEL}/1/promote`;
      for (const [body, headers, why] of [
        ['alias=staging', {}, /missing token/],
        ['alias=staging&token=wrong', {}, /wrong token/],
        ['alias=staging', { 'x-stepwise-token': `${token}x` }, /wrong token/],
        [`alias=staging&token=${token}`, { origin: 'http://evil.example' }, /cannot act here/],
        [`alias=staging&token=${token}`, { host: 'evil.example' }, /no loopback/],
      ] as const) {
        const r = await post(ui.url, path, body, headers);
        t.is(r.status, 403, body);
        t.regex(r.body, why);
      }
      t.is(await getAlias(s.store, MODEL, 'staging'), undefined, 'nothing was written');
      const ok = await post(ui.url, path, 'alias=staging', { 'x-stepwise-token': token });
      t.is(ok.status, 200, ok.body);
      t.regex(ok.body, /staging: \(none\) → v1/);
      t.is((await getAlias(s.store, MODEL, 'staging'))?.version, 1);
    } finally {
      await ui.close();
    }
  }
);

test.serial(
  'a run waiting at its gate is approved in the browser; the alias moves; lineage and report open',
  async (t) => {
    await prepare();
    const s = services();
    const token = newActionToken();
    const ui = await startUi(token);
    const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
    try {
      // The URL as `stepwise ui --allow-actions` prints it: the token in the fragment, which never reaches the server.
      await open(page, `${ui.url}#token=${token}`, 'runs');
      t.is(new URL(page.url()).hash, '', 'the script took the token out of the address bar');
      t.is(await page.locator(`#runs tr[data-workflow-id="${first}"]`).count(), 1);
      const row = page.locator(`#runs tr[data-workflow-id="${waiting.workflowId}"]`);
      t.regex(
        await row.innerText(),
        /awaiting approval[\s\S]*ui-demo[\s\S]*awaiting-approval/,
        'stage, model, outcome'
      );
      await page.screenshot({ path: join(OUT, 'runs.png') });
      await open(page, `${ui.url}?outcome=awaiting-approval`, 'runs (filtered)');
      t.is(await page.locator('#runs tr[data-workflow-id]').count(), 1, 'filtered by the StepwiseOutcome attribute');

      await open(page, `${ui.url}runs/${waiting.workflowId}`, 'run awaiting approval');
      await page.locator('#awaiting-approval').waitFor();
      t.regex(await page.locator('#stages tr[data-stage="trainStudent"]').innerText(), /done/);
      t.regex(await page.locator('#stages tr[data-stage="gate"]').innerText(), /running/);
      t.regex(
        (await page.locator('a', { hasText: 'open in the Temporal UI' }).getAttribute('href')) ?? '',
        new RegExp(`/namespaces/${s.temporal.namespace}/workflows/${waiting.workflowId}/`)
      );
      const raw = await (await fetch(`${ui.url}runs/${waiting.workflowId}`)).text();
      t.false(raw.includes(token), 'the page never holds the token');
      t.false(raw.includes(process.env.AWS_SECRET_ACCESS_KEY!), 'nor the store’s secret key');
      await page.locator('#awaiting-approval input[name=comment]').first().fill('looked at the errors');
      await page.screenshot({ path: join(OUT, 'run-waiting.png') });

      // A second tab on the run page: its script polls the progress endpoint and reloads as the run moves on.
      const watcher = await browser.newPage();
      await watcher.goto(`${ui.url}runs/${waiting.workflowId}`);
      t.regex(await watcher.locator('#progress-gate').innerText(), /awaiting approval/);

      await page.locator('#awaiting-approval [data-testid=approve]').click();
      // The page answers once the run has taken the Update and promoted: on two busy cores, well past Playwright's 30 s.
      await page.locator('#message').waitFor({ timeout: 120_000 });
      t.regex(await page.locator('#message').innerText(), /approved by .* in run .*: promoted; champion: v1 → v2/);
      await waiting.result();
      await watcher.locator('.status-completed').first().waitFor({ timeout: 30_000 });
      t.is(await watcher.locator('#awaiting-approval').count(), 0, 'the watching tab reloaded by itself');
      await watcher.close();
      t.is((await getAlias(s.store, MODEL, 'champion'))?.version, 2);
      t.like(
        (await modelHistory(s.store, MODEL)).find((r) => r.action === 'approve'),
        {
          version: 2,
          why: 'looked at the errors',
        }
      );

      await open(page, `${ui.url}models/${MODEL}`, 'model');
      t.regex(await page.locator('#aliases tr[data-alias="champion"]').innerText(), /v2/);
      t.regex(await page.locator('#history').innerText(), /approve[\s\S]*looked at the errors/);
      await page.screenshot({ path: join(OUT, 'model.png'), fullPage: true });
      await open(page, `${ui.url}models`, 'models');

      await open(page, `${ui.url}models/${MODEL}/2/lineage`, 'lineage');
      t.true((await page.locator('#lineage li[data-kind]').count()) > 5);
      t.is(await page.locator('#lineage li[data-kind="approval"]').count(), 1);
      await page.screenshot({ path: join(OUT, 'lineage.png') });

      await open(page, `${ui.url}runs/${waiting.workflowId}`, 'run done (report framed)');
      t.is(await page.locator('iframe.report').count(), 1);
      await open(page, `${ui.url}runs/${waiting.workflowId}/report`, 'report');
      t.regex(await page.locator('body').innerText(), /ui-demo/);
      await page.screenshot({ path: join(OUT, 'report.png') });
      t.log(timings.map((x) => `${x.page}: ${x.ms.toFixed(1)} ms`).join('\n'));
    } finally {
      await page.close();
      await ui.close();
    }
  }
);
