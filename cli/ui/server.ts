/**
 * The HTTP side of `stepwise ui`: routing, the security headers, and the actions. Reading is open to whoever reaches
 * the (loopback) port, as the Temporal UI's dev server is; changing anything is a POST that needs `--allow-actions`
 * and the token printed at start (a form field or the `X-Stepwise-Token` header), so another local user or a web page
 * posting to localhost cannot approve a model. The registry changes are the `stepwise models` ones
 * (cli/shared/registry-actions.ts).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { InputError } from '../../lib/errors';
import { RegistryConflictError } from '../../lib/registry/audit';
import { versionLabel } from '../shared/models-format';
import { archiveVersion, decideVersion, promoteToAlias } from '../shared/registry-actions';
import {
  lineagePage,
  messagePage,
  modelPage,
  modelsPage,
  runPage,
  runProgressJson,
  runReport,
  runsPage,
  type Rendered,
  type UiContext,
} from './pages';

export interface UiServerOptions extends Omit<UiContext, 'actions'> {
  /** 127.0.0.1 unless told: the pages are for this machine. */
  host?: string;
  /** 0: a free port. */
  port: number;
  /** Set with `--allow-actions`: the token every action must carry. */
  actionToken?: string;
  /** One line per request with its render time. */
  log?: (line: string) => void;
}

export interface UiServer {
  /** `http://host:port/`. */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** A token for `--allow-actions`: 192 random bits, URL-safe so it fits in the printed URL's fragment. */
export const newActionToken = (): string => randomBytes(24).toString('base64url');

/** Form bodies are a few short fields: anything larger is refused before it is buffered. */
const MAX_BODY_BYTES = 16 * 1024;

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

export async function startUiServer(opts: UiServerOptions): Promise<UiServer> {
  const ctx: UiContext = { ...opts, actions: opts.actionToken !== undefined };
  const host = opts.host ?? '127.0.0.1';
  const server = createServer((req, res) => {
    handle(ctx, opts, req, res).catch((err: unknown) => {
      // A page that failed to render says why; the message is escaped, and no page holds a secret to leak.
      opts.log?.(
        `stepwise ui: ${req.method} ${req.url}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`
      );
      if (!res.headersSent) {
        const nonce = newNonce();
        const message = err instanceof Error ? err.message : String(err);
        send(res, messagePage(ctx, nonce, { title: 'error', message, error: true, status: 500 }), { nonce });
      } else res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${port}/`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

type Route = (params: string[], query: URLSearchParams, nonce: string) => Promise<Rendered>;

async function handle(ctx: UiContext, opts: UiServerOptions, req: IncomingMessage, res: ServerResponse) {
  const started = performance.now();
  const nonce = newNonce();
  const url = new URL(req.url ?? '/', 'http://ui.invalid');
  const loopbackOnly = LOOPBACK.has(opts.host ?? '127.0.0.1');
  // A page on another site that resolves its own name to 127.0.0.1 (DNS rebinding) would send its own Host: refused.
  if (loopbackOnly && !LOOPBACK.has(hostName(req.headers.host))) {
    return send(res, { status: 403, body: 'refused: the Host header names no loopback address' }, { nonce });
  }
  const segments = url.pathname
    .split('/')
    .filter(Boolean)
    .map((s) => decodeURIComponent(s));
  const what = `${req.method} ${url.pathname}`;
  const timing = { nonce, started, log: opts.log, what };
  if (req.method === 'POST') return send(res, await action(ctx, opts, req, segments, nonce), timing);
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return send(res, { status: 405, body: 'only GET and POST' }, timing);
  }
  const reportRoute: Route = ([id]) => runReport(ctx, id);
  const routes: [RegExp, Route][] = [
    [/^$/, (_, q, n) => runsPage(ctx, q, n)],
    [/^runs$/, (_, q, n) => runsPage(ctx, q, n)],
    [/^runs\/([^/]+)\/progress\.json$/, ([id]) => runProgressJson(ctx, id)],
    [/^runs\/([^/]+)\/report$/, reportRoute],
    [/^runs\/([^/]+)$/, ([id], _, n) => runPage(ctx, id, n)],
    [/^models$/, (_, __, n) => modelsPage(ctx, n)],
    [/^models\/([^/]+)$/, ([name], _, n) => modelPage(ctx, name, n)],
    [/^models\/([^/]+)\/([^/]+)\/lineage$/, ([name, version], _, n) => lineagePage(ctx, name, version, n)],
  ];
  // Matched on the decoded segments joined again, so an id holding an encoded "/" stays one segment.
  const joined = segments.map((s) => s.replace(/\//g, '\u0000')).join('/');
  for (const [pattern, route] of routes) {
    const m = pattern.exec(joined);
    if (m) {
      const params = m.slice(1).map((p) => p.replace(/\u0000/g, '/'));
      const rendered = await route(params, url.searchParams, nonce);
      return send(res, rendered, { ...timing, report: route === reportRoute });
    }
  }
  const missing = messagePage(ctx, nonce, { title: 'not found', message: 'No such page.', error: true, status: 404 });
  return send(res, missing, timing);
}

/** `POST /models/<name>/<version>/<approve|reject|promote|archive>`. */
async function action(
  ctx: UiContext,
  opts: UiServerOptions,
  req: IncomingMessage,
  segments: string[],
  nonce: string
): Promise<Rendered> {
  const refuse = (message: string, status = 403) =>
    messagePage(ctx, nonce, { title: 'refused', message, error: true, status });
  if (opts.actionToken === undefined) {
    return refuse('actions are off: start `stepwise ui --allow-actions` to approve, reject, promote or archive here');
  }
  // Browsers send Origin with every POST: one from another site is refused before the token is even looked at.
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `http://${req.headers.host ?? ''}`) {
    return refuse(`refused: a form from ${origin} cannot act here`);
  }
  let form: URLSearchParams;
  try {
    form = await readForm(req);
  } catch (err) {
    return refuse(err instanceof Error ? err.message : String(err), 400);
  }
  const given = headerValue(req.headers['x-stepwise-token']) ?? form.get('token') ?? '';
  if (!sameToken(given, opts.actionToken)) {
    return refuse(
      given ? 'refused: wrong token' : 'refused: missing token (the one `stepwise ui --allow-actions` printed)'
    );
  }
  const [first, name, version, kind] = segments;
  if (segments.length !== 4 || first !== 'models' || !['approve', 'reject', 'promote', 'archive'].includes(kind)) {
    return refuse('no such action', 404);
  }
  const ref = `${name}@${version}`;
  const back = safeBack(form.get('back')) ?? `/models/${encodeURIComponent(name)}`;
  const who = form.get('identity')?.trim() || undefined;
  const done = (message: string) => messagePage(ctx, nonce, { title: `${kind} ${ref}`, message, back });
  try {
    if (kind === 'approve' || kind === 'reject') {
      const temporal = ctx.temporal;
      const decision = await decideVersion(ctx.store, ref, kind, {
        comment: form.get('comment') ?? undefined,
        identity: who,
        connect: async () => {
          if (!temporal)
            throw new InputError(
              'ref: the run waiting for this decision is on no Temporal service this UI reaches',
              'ref'
            );
          // The UI's own connection: it outlives the action, so letting go of it is a no-op.
          return { client: temporal.client, where: `namespace ${temporal.namespace}`, stop: async () => undefined };
        },
      });
      if (decision.by === 'run') {
        const o = decision.outcome;
        return done(
          `${ref}: ${kind === 'approve' ? 'approved' : 'rejected'} by ${decision.who} in run ${decision.workflowId}: ${o.outcome}` +
            (o.outcome === 'promoted' ? `; ${o.alias}: ${versionLabel(o.previous)} → v${o.version}` : '')
        );
      }
      return done(`${ref}: ${String(decision.record.from)} → ${String(decision.record.to)}`);
    }
    if (kind === 'promote') {
      const p = await promoteToAlias(ctx.store, ref, {
        alias: form.get('alias') ?? '',
        why: form.get('why') ?? undefined,
        identity: who,
        aliasField: 'alias',
      });
      return done(
        p.record
          ? `${p.alias}: ${versionLabel(p.before)} → v${p.version.version}`
          : `${p.alias}: already v${p.version.version}; nothing written`
      );
    }
    const record = await archiveVersion(ctx.store, ref, { why: form.get('why') ?? undefined, identity: who });
    return done(`${ref}: ${String(record.from)} → ${String(record.to)}`);
  } catch (err) {
    if (err instanceof InputError || err instanceof RegistryConflictError) {
      return messagePage(ctx, nonce, {
        title: `${kind} ${ref}: not done`,
        message: err.message,
        error: true,
        back,
        status: err instanceof RegistryConflictError ? 409 : 400,
      });
    }
    throw err;
  }
}

/** How a response is sent: its CSP nonce, when its handling started, and whether it is a stored report. */
interface SendOptions {
  nonce: string;
  started?: number;
  log?: (line: string) => void;
  what?: string;
  report?: boolean;
}

function send(res: ServerResponse, r: Rendered, opts: SendOptions) {
  const ms = performance.now() - (opts.started ?? performance.now());
  const type = r.contentType ?? 'text/html; charset=utf-8';
  const { nonce } = opts;
  res.statusCode = r.status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  // Not `no-referrer`: under it a browser sends `Origin: null` with a form's POST, which the action check refuses.
  res.setHeader('Referrer-Policy', 'same-origin');
  // What the page took to build (reads of Temporal and the store included): shown in the browser's network panel.
  res.setHeader('Server-Timing', `render;dur=${ms.toFixed(1)}`);
  res.setHeader(
    'Content-Security-Policy',
    // The stored report runs no script and is framed by the run page; the UI's own pages run only their nonce'd one.
    opts.report
      ? "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; sandbox"
      : `default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-${nonce}'; connect-src 'self'; ` +
          "img-src 'self' data:; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
  );
  res.end(r.body);
  opts.log?.(`stepwise ui: ${opts.what ?? ''} ${r.status} ${ms.toFixed(1)} ms`);
}

const newNonce = () => randomBytes(16).toString('base64');

function hostName(host: string | undefined): string {
  if (!host) return '';
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  return host.replace(/:\d+$/, '');
}

const headerValue = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

/** Compared as digests, so the comparison takes the same time whatever the length or the first wrong character. */
function sameToken(given: string, expected: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return given.length > 0 && timingSafeEqual(digest(given), digest(expected));
}

/** Only a path on this server: `//evil.example` or `https://…` would turn the back link into a redirect elsewhere. */
function safeBack(back: string | null): string | undefined {
  return back && /^\/(?![/\\])/.test(back) ? back : undefined;
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const type = req.headers['content-type'] ?? '';
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new Error(`refused: a form body is at most ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  if (size > 0 && !type.startsWith('application/x-www-form-urlencoded')) {
    throw new Error('refused: send the form as application/x-www-form-urlencoded');
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
