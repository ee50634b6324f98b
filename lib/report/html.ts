/**
 * The few HTML pieces the run report is written with: escaping, tables, and the one stylesheet, inline. No script
 * and no external asset: the page is read as a file, offline, years later.
 */

/** Text as HTML: the five characters that could open markup or end an attribute, escaped. */
export function esc(value: unknown): string {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** Raw HTML that must not be escaped again (built by these helpers or a trusted renderer). */
export interface Html {
  html: string;
}
export const raw = (html: string): Html => ({ html });
const cell = (v: unknown) => (v !== null && typeof v === 'object' && 'html' in v ? (v as Html).html : esc(v));

/** A table; `numeric` columns are right-aligned. A cell is text (escaped) or {@link raw} HTML. */
export function table(head: string[], rows: unknown[][], opts: { numeric?: number[]; id?: string } = {}): string {
  const align = (i: number) => (opts.numeric?.includes(i) ? ' class="num"' : '');
  return (
    `<table${opts.id ? ` id="${esc(opts.id)}"` : ''}><thead><tr>${head.map((h, i) => `<th${align(i)}>${esc(h)}</th>`).join('')}</tr></thead>` +
    `<tbody>${rows.map((r) => `<tr>${r.map((v, i) => `<td${align(i)}>${cell(v)}</td>`).join('')}</tr>`).join('')}</tbody></table>`
  );
}

/** A two-column table of figures: name, value. */
export function facts(rows: [string, unknown][]): string {
  return `<table class="facts"><tbody>${rows
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${cell(v)}</td></tr>`)
    .join('')}</tbody></table>`;
}

export const pct = (x: number | undefined | null) => (x === undefined || x === null ? '—' : `${(100 * x).toFixed(1)}%`);
export const num = (x: number | undefined | null, digits = 4) =>
  x === undefined || x === null || !Number.isFinite(x) ? '—' : Number(x.toFixed(digits)).toString();
export const seconds = (ms: number | undefined) =>
  ms === undefined ? '—' : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;

/** The page's only style, inline: readable on screen and in print, no web fonts. */
export const STYLE = `
body{font:14px/1.45 Helvetica,Arial,sans-serif;color:#1d232b;margin:0;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px}
header{background:#1d2a3a;color:#fff;padding:20px 24px}
header h1{margin:0 0 4px;font-size:22px}header p{margin:2px 0;color:#c9d3df}
nav{margin-top:10px}nav a{color:#9cc4f2;margin-right:14px;text-decoration:none}
section{background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:16px 20px;margin:18px 0}
h2{margin:0 0 12px;font-size:18px}h3{font-size:15px;margin:16px 0 8px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #e6e9ed;padding:4px 10px 4px 0;text-align:left;vertical-align:top}
thead th{border-bottom:2px solid #c5ccd4}td.num,th.num{text-align:right}
table.facts th{font-weight:normal;color:#5b6673;padding-right:18px}
code,pre{font:12px/1.4 Menlo,Consolas,monospace;background:#f1f3f5;border-radius:3px}
code{padding:1px 4px}pre{padding:8px;overflow:auto;white-space:pre-wrap}
figure{margin:12px 0}figcaption{color:#5b6673;font-size:12px}
.ok{color:#1c7a3a}.bad{color:#b3261e}.muted{color:#6b7682}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#e6e9ed}
.status.done,.status.promoted,.status.registered,.status.completed{background:#d6f0dd}
.status.failed,.status.rejected{background:#f7d7d4}
.error{border-color:#e2a29c;background:#fff5f4}
ul.tree{list-style:none;padding-left:18px;margin:4px 0}ul.tree li{margin:3px 0}
ul.tree .kind{display:inline-block;min-width:110px;color:#2f6db5;font-weight:bold}
td.text{max-width:420px;white-space:pre-wrap}
`;
