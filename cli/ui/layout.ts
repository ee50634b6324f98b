/**
 * The frame every page of `stepwise ui` shares: the head, the navigation, one inline stylesheet and one inline
 * script (allowed by its per-response nonce), and the action forms. Every value is escaped with the run report's
 * `esc` (lib/report/html.ts); the only unescaped strings are the ones these helpers build.
 */
import { esc } from '../../lib/report/html';

export { esc };

/** Where the token travels when a page is opened with the URL `stepwise ui` prints: the fragment, never sent. */
export const TOKEN_STORAGE_KEY = 'stepwise-ui-token';

export interface PageOptions {
  title: string;
  body: string;
  /** The CSP nonce of this response: the one inline script runs only with it. */
  nonce: string;
  /** Actions are on: the script fills the token fields from the tab's storage. */
  actions: boolean;
  /** Seconds until the page reloads itself without a script (a running run, a list with running runs). */
  refreshSeconds?: number;
  /** A run page: the JSON endpoint its script polls, and the state it was rendered in (a change reloads). */
  poll?: { url: string; signature: string };
  /** Where the data came from, for the footer (never with credentials). */
  footer: string;
}

const STYLE = `
:root { color-scheme: light; --fg: #1d2430; --muted: #5b6577; --line: #d9dee7; --accent: #2456c7; --ok: #1f7a3a;
  --warn: #9a6100; --bad: #b3261e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); margin: 0; background: #f7f8fa; }
header { background: #1d2430; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #fff; text-decoration: none; } header strong { font-size: 16px; }
main { padding: 16px 24px; max-width: 1200px; }
h1 { font-size: 20px; margin: 8px 0 12px; } h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 12px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; } td.mono { white-space: nowrap; }
a { color: var(--accent); } .muted { color: var(--muted); }
.status-running, .stage-running { color: var(--accent); font-weight: 600; }
.status-completed, .stage-done, .st-approved { color: var(--ok); }
.status-failed, .status-terminated, .stage-failed, .st-rejected { color: var(--bad); }
.status-cancelled, .stage-skipped, .st-archived { color: var(--muted); } .st-candidate { color: var(--warn); }
.box { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
.waiting { border-color: var(--warn); background: #fff8e6; }
.bar { display: inline-block; width: 160px; height: 10px; background: #e4e8ef; border-radius: 5px; overflow: hidden;
  vertical-align: middle; } .bar > span { display: block; height: 100%; background: var(--accent); }
form.inline { display: inline-flex; gap: 6px; align-items: center; margin: 2px 8px 2px 0; }
input, select, button { font: inherit; padding: 3px 6px; }
button { cursor: pointer; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
button.approve { background: var(--ok); color: #fff; border-color: var(--ok); }
button.reject { background: var(--bad); color: #fff; border-color: var(--bad); }
.filters { display: flex; gap: 8px; flex-wrap: wrap; align-items: end; margin-bottom: 8px; }
.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
ul.tree, ul.tree ul { list-style: none; padding-left: 18px; margin: 0; border-left: 1px dotted var(--line); }
ul.tree > li { margin: 0; } .kind { display: inline-block; min-width: 88px; font-weight: 600; }
iframe.report { width: 100%; height: 900px; border: 1px solid var(--line); background: #fff; }
footer { padding: 12px 24px; color: var(--muted); font-size: 12px; }
.message { padding: 10px 14px; border-radius: 6px; background: #fff; border: 1px solid var(--line); }
.message.error { border-color: var(--bad); }
`;

/**
 * The one script: take the token from the fragment of the URL `stepwise ui` printed into this tab's storage (the
 * fragment never reaches the server, and the page never contains the token), fill the forms' token fields with it,
 * and, on a run page, poll the progress endpoint, updating the bars and reloading when the run's state changes.
 */
const script = (actions: boolean, poll?: { url: string; signature: string }) => `
(() => {
  ${
    actions
      ? `const KEY = ${JSON.stringify(TOKEN_STORAGE_KEY)};
  if (location.hash.startsWith('#token=')) {
    sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
    history.replaceState(null, '', location.pathname + location.search);
  }
  const token = sessionStorage.getItem(KEY);
  if (token) for (const input of document.querySelectorAll('input[name=token]')) {
    input.value = token;
    input.closest('label')?.setAttribute('hidden', '');
  }`
      : ''
  }
  ${
    poll
      ? `// A submitted form waits on the server (an approval answers only once the run took its Update and promoted);
  // a reload meanwhile would cancel that navigation and lose its answer, so polling stops at the first submit.
  let submitted = false;
  document.addEventListener('submit', () => { submitted = true; });
  const tick = async () => {
    if (submitted) return;
    try {
      const res = await fetch(${JSON.stringify(poll.url)}, { headers: { accept: 'application/json' } });
      const state = await res.json();
      if (submitted) return;
      if (state.signature !== ${JSON.stringify(poll.signature)}) return location.reload();
      for (const s of state.stages ?? []) {
        const cell = document.getElementById('progress-' + s.name);
        if (cell) cell.textContent = s.progress ?? '';
        const bar = document.getElementById('bar-' + s.name);
        if (bar) bar.style.width = (s.fraction ?? 0) * 100 + '%';
      }
    } catch {}
    setTimeout(tick, 1500);
  };
  setTimeout(tick, 1500);`
      : ''
  }
})();`;

/** A whole page. */
export function page(opts: PageOptions): string {
  const refresh =
    opts.refreshSeconds === undefined
      ? ''
      : // Without a script the page reloads itself; with one, the poller does better.
        `<noscript><meta http-equiv="refresh" content="${opts.refreshSeconds}"></noscript>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(opts.title)} · stepwise</title>${refresh}<style>${STYLE}</style></head>
<body><header><strong><a href="/">stepwise</a></strong><a href="/">runs</a><a href="/models">models</a>${
    opts.actions ? '<span class="muted">actions on</span>' : ''
  }</header>
<main>${opts.body}</main>
<footer>${esc(opts.footer)}</footer>
${opts.actions || opts.poll ? `<script nonce="${esc(opts.nonce)}">${script(opts.actions, opts.poll)}</script>` : ''}
</body></html>`;
}

/**
 * A form that POSTs an action. Its token field is a password input the script fills (and hides) when the tab holds
 * the token; without a script the user pastes it. `fields` are hidden inputs; `inputs` is visible markup.
 */
export function actionForm(opts: {
  action: string;
  label: string;
  fields?: Record<string, string | number>;
  inputs?: string;
  buttonClass?: string;
  testId?: string;
}): string {
  const hidden = Object.entries(opts.fields ?? {})
    .map(([name, value]) => `<input type="hidden" name="${esc(name)}" value="${esc(value)}">`)
    .join('');
  return (
    `<form class="inline" method="post" action="${esc(opts.action)}">${hidden}` +
    `<label>token <input type="password" name="token" autocomplete="off" required size="10"></label>` +
    (opts.inputs ?? '') +
    `<button type="submit"${opts.buttonClass ? ` class="${esc(opts.buttonClass)}"` : ''}` +
    `${opts.testId ? ` data-testid="${esc(opts.testId)}"` : ''}>${esc(opts.label)}</button></form>`
  );
}

/** A link whose path segments are encoded, so an id cannot turn into another path or a script. */
export const link = (segments: (string | number)[], text: string, query?: Record<string, string>): string =>
  `<a href="${esc(href(segments, query))}">${esc(text)}</a>`;

export function href(segments: (string | number)[], query?: Record<string, string>): string {
  const path = '/' + segments.map((s) => encodeURIComponent(String(s))).join('/');
  const q = query && Object.keys(query).length ? `?${new URLSearchParams(query).toString()}` : '';
  return path + q;
}

/** A status word with its colour class. */
export const statusBadge = (prefix: 'status' | 'stage' | 'st', status: string | undefined): string =>
  status === undefined
    ? '<span class="muted">-</span>'
    : `<span class="${prefix}-${esc(status)}">${esc(status)}</span>`;
