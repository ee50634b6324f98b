import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIUserAbortError } from 'openai';

import { sharedHttpFetch } from '../lib/teacher/http-fetch';
import { backoffMs, classifyError, MAX_RETRY_AFTER_MS, retryAfterMs, retryReasonOf } from '../lib/teacher/retry';

/**
 * Both fetches a teacher client may use: Node's (the SDK's default, and what file uploads and downloads go through)
 * and ours for chat completions (lib/teacher/http-fetch.ts). Each SDK test below runs on both: the policy must read
 * their failures alike.
 */
const FETCHES = { fetch: globalThis.fetch, 'http-fetch': sharedHttpFetch() } as const;
type FetchName = keyof typeof FETCHES;
const FETCH_NAMES = Object.keys(FETCHES) as FetchName[];

const COMPLETION = JSON.stringify({
  id: 'chatcmpl-1',
  object: 'chat.completion',
  created: 0,
  model: 'm',
  choices: [{ index: 0, message: { role: 'assistant', content: 'because… so (a)' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 },
});

/**
 * One local server for every fault: the first path segment picks it, so each test points an SDK client at
 * `/<fault>/v1`. `status-<code>` answers that status with an OpenAI-style error body; the query string adds headers.
 */
let server: Server;
let root: string;

test.before(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://localhost');
    const fault = url.pathname.split('/')[1];
    const extra = Object.fromEntries(url.searchParams);
    req.resume();
    req.on('end', () => {
      const json = { 'content-type': 'application/json', ...extra };
      if (fault.startsWith('status-')) {
        const status = Number(fault.slice('status-'.length));
        res.writeHead(status, json);
        res.end(JSON.stringify({ error: { message: `fault ${status}`, type: 'test', code: extra['x-code'] ?? null } }));
        return;
      }
      switch (fault) {
        case 'html-500':
          res.writeHead(500, { 'content-type': 'text/html' });
          res.end('<html>\n<h1>Internal Server Error</h1>\n</html>');
          return;
        case 'drop':
          req.socket.destroy();
          return;
        case 'hang':
          return; // never answers: the SDK's timeout must end the call
        case 'stall-body':
          res.writeHead(200, json);
          res.write(COMPLETION.slice(0, 30)); // headers and a little body, then nothing
          return;
        case 'truncated':
          res.writeHead(200, { ...json, 'content-length': String(COMPLETION.length) });
          res.write(COMPLETION.slice(0, 40));
          setTimeout(() => req.socket.destroy(), 10); // short of Content-Length, then the connection drops
          return;
        case 'cut-short':
          res.writeHead(200, json);
          res.end(COMPLETION.slice(0, 40)); // ends cleanly, but mid-JSON
          return;
        case 'not-json':
          res.writeHead(200, json);
          res.end('<html>upstream proxy error</html>');
          return;
        default:
          res.writeHead(200, json);
          res.end(COMPLETION);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  root = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

test.after.always(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

/** What the real SDK throws for one call against a fault, with its own retries off. */
async function sdkError(
  fault: string,
  opts: { headers?: Record<string, string>; timeout?: number; signal?: AbortSignal; via?: FetchName } = {}
): Promise<unknown> {
  const send = FETCHES[opts.via ?? 'fetch'];
  const query = new URLSearchParams(opts.headers ?? {}).toString();
  const client = new OpenAI({
    baseURL: `${root}/${fault}/v1`,
    apiKey: 'unused',
    maxRetries: 0,
    timeout: opts.timeout ?? 10_000,
    // Headers travel to the server in the query string; the SDK would drop a query in baseURL, so add it here.
    fetch: (input, init) => send(query ? `${String(input)}?${query}` : input, init),
  });
  try {
    await client.chat.completions.create(
      { model: 'm', messages: [{ role: 'user', content: 'q' }] },
      { signal: opts.signal }
    );
  } catch (err) {
    return err;
  }
  throw new Error(`the call against ${fault} succeeded`);
}

test('retryAfterMs prefers retry-after-ms, then reads retry-after as seconds or as an HTTP date', (t) => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  t.is(retryAfterMs(new Headers({ 'retry-after-ms': '150', 'retry-after': '9' }), now), 150);
  t.is(retryAfterMs(new Headers({ 'Retry-After': '2' }), now), 2000);
  t.is(retryAfterMs(new Headers({ 'retry-after': '0.5' }), now), 500);
  t.is(retryAfterMs({ 'Retry-After': 'Thu, 01 Jan 2026 00:00:07 GMT' }, now), 7000);
  t.is(retryAfterMs({ 'retry-after': ['3', '4'] }, now), 3000);
  // A date already past means "now", not a negative wait.
  t.is(retryAfterMs({ 'retry-after': 'Wed, 31 Dec 2025 23:59:00 GMT' }, now), 0);
  // Garbage in retry-after-ms falls back to retry-after.
  t.is(retryAfterMs({ 'retry-after-ms': 'soon', 'retry-after': '1' }, now), 1000);
});

test('retryAfterMs is undefined when the headers say nothing usable, and caps long waits', (t) => {
  for (const value of ['', 'soon', '-5', '10s', '1e3', '12 34', 'NaN']) {
    t.is(retryAfterMs({ 'retry-after': value }), undefined, JSON.stringify(value));
  }
  t.is(retryAfterMs(undefined), undefined);
  t.is(retryAfterMs(new Headers()), undefined);
  t.is(retryAfterMs({ 'retry-after': null, 'x-other': '5' }), undefined);
  t.is(retryAfterMs({ 'retry-after': '86400' }), MAX_RETRY_AFTER_MS);
  t.is(retryAfterMs({ 'retry-after-ms': '5000' }, Date.now(), 1000), 1000);
});

test('backoffMs draws from [0, min(max, base·2^attempt)] with full jitter', (t) => {
  const top = (attempt: number, opts = {}) => backoffMs(attempt, { ...opts, random: () => 1 });
  t.deepEqual(
    [0, 1, 2, 3, 6, 7, 50, 5000].map((a) => top(a)),
    [500, 1000, 2000, 4000, 32_000, 60_000, 60_000, 60_000]
  );
  t.is(top(3, { baseMs: 100, maxMs: 500 }), 500);
  t.is(backoffMs(4, { random: () => 0 }), 0);
  t.is(backoffMs(2, { random: () => 0.25 }), 500);
  t.is(top(5000, { baseMs: 0 }), 0);
  const draws = Array.from({ length: 2000 }, () => backoffMs(3));
  t.true(draws.every((ms) => ms >= 0 && ms <= 4000));
  t.true(new Set(draws).size > 1000, 'jittered, not a fixed delay');
  t.throws(() => backoffMs(-1), { instanceOf: RangeError });
  t.throws(() => backoffMs(1.5), { instanceOf: RangeError });
});

for (const via of FETCH_NAMES) {
  test(`${via}: a 429 from the SDK is retryable and rate limited, with the wait the server asked for`, async (t) => {
    const inMs = classifyError(await sdkError('status-429', { headers: { 'retry-after-ms': '150' }, via }));
    // A refusal: the endpoint did no work, so nothing was billed.
    t.deepEqual(inMs, {
      retryable: true,
      rateLimited: true,
      kind: 'client_error',
      reason: 'HTTP 429: fault 429',
      retryAfterMs: 150,
      notProcessed: true,
    });
    t.is(retryReasonOf(inMs), 'rate_limited');
    const inSeconds = classifyError(await sdkError('status-429', { headers: { 'retry-after': '2' }, via }));
    t.is(inSeconds.retryAfterMs, 2000);
    const unsaid = classifyError(await sdkError('status-429', { via }));
    t.true(unsaid.retryable && unsaid.rateLimited);
    t.is(unsaid.retryAfterMs, undefined);
  });

  test(`${via}: a 429 for an exhausted quota is not retryable: waiting does not refill an account`, async (t) => {
    const c = classifyError(await sdkError('status-429', { headers: { 'x-code': 'insufficient_quota' }, via }));
    t.false(c.retryable);
    t.false(c.rateLimited);
    t.is(c.reason, 'HTTP 429: fault 429');
    t.is(retryReasonOf(c), 'client_error');
  });

  test(`${via}: server errors, request timeouts and conflicts from the SDK are retryable`, async (t) => {
    for (const status of [500, 502, 503, 408, 409]) {
      const c = classifyError(await sdkError(`status-${status}`, { headers: { 'retry-after': '1' }, via }));
      t.true(c.retryable, String(status));
      t.false(c.rateLimited);
      t.is(c.reason, `HTTP ${status}: fault ${status}`);
      t.is(c.retryAfterMs, 1000);
      t.is(retryReasonOf(c), status >= 500 ? 'server_error' : 'client_error', String(status));
      // A 5xx may come after the endpoint did (and billed) the work; a 408 or 409 is a refusal before any.
      t.is(c.notProcessed, status < 500 ? true : undefined, String(status));
    }
    const html = classifyError(await sdkError('html-500', { via }));
    t.true(html.retryable);
    t.is(html.reason, 'HTTP 500: <html> <h1>Internal Server Error</h1> </html>', 'one line');
  });

  test(`${via}: client errors from the SDK are not retryable`, async (t) => {
    for (const status of [400, 401, 403, 404, 422]) {
      const c = classifyError(await sdkError(`status-${status}`, { via }));
      t.deepEqual(c, {
        retryable: false,
        rateLimited: false,
        kind: 'client_error',
        reason: `HTTP ${status}: fault ${status}`,
        notProcessed: true,
      });
    }
  });

  test(`${via}: an x-should-retry header overrides the status, as in the SDK`, async (t) => {
    t.false(classifyError(await sdkError('status-503', { headers: { 'x-should-retry': 'false' }, via })).retryable);
    t.true(classifyError(await sdkError('status-400', { headers: { 'x-should-retry': 'true' }, via })).retryable);
  });

  test(`${via}: a dropped connection is a retryable connection error saying what happened`, async (t) => {
    const err = await sdkError('drop', { via });
    t.true(err instanceof APIConnectionError);
    const c = classifyError(err);
    t.true(c.retryable);
    t.is(retryReasonOf(c), 'connection');
    // undici and node:http name the same event in their own words.
    t.regex(c.reason, via === 'fetch' ? /^connection error: other side closed/ : /^connection error: socket hang up/);
    // The request went out before the connection dropped: the endpoint may have done (and billed) the work.
    t.is(c.notProcessed, undefined);
  });

  test(`${via}: a server that never answers is a retryable timeout naming the timeout`, async (t) => {
    const err = await sdkError('hang', { timeout: 200, via });
    t.true(err instanceof APIConnectionTimeoutError);
    t.deepEqual(classifyError(err, { timeoutMs: 200 }), {
      retryable: true,
      rateLimited: false,
      kind: 'timeout',
      reason: 'timeout after 200 ms',
    });
    t.is(classifyError(err).reason, 'timeout: Request timed out.');
    t.is(retryReasonOf(classifyError(err)), 'timeout');
  });

  test(`${via}: a stall after the headers is a retryable timeout, by the SDK's timeout or else the caller's deadline`, async (t) => {
    // (Both leave the headers, which come at once, ample time on a busy machine: a 100 ms SDK timeout could fire
    // before them.)
    const deadline = AbortSignal.timeout(3000);
    const started = Date.now();
    const err = await sdkError('stall-body', { timeout: 1000, signal: deadline, via });
    if (via === 'http-fetch') {
      // Ours reads the whole body before the SDK sees the response, so the SDK's timeout covers the stall.
      t.true(err instanceof APIConnectionTimeoutError);
      t.true(Date.now() - started < 2900, 'ended by the 1 s SDK timeout, before the 3 s deadline');
      t.deepEqual(classifyError(err, { timeoutMs: 1000 }), {
        retryable: true,
        rateLimited: false,
        kind: 'timeout',
        reason: 'timeout after 1000 ms',
      });
      return;
    }
    // Node's fetch hands the SDK the response at the headers, and the SDK's timeout stops there: only the deadline
    // ends this call, mid-body.
    t.false(err instanceof APIConnectionTimeoutError);
    t.is((err as Error).name, 'AbortError');
    t.deepEqual(classifyError(err, { timeoutMs: 3000, timeoutSignal: deadline }), {
      retryable: true,
      rateLimited: false,
      kind: 'timeout',
      reason: 'timeout after 3000 ms',
    });
    // Without the deadline there is no telling it from the caller giving up.
    t.is(classifyError(err).reason, 'aborted');
  });

  test(`${via}: a call the caller aborts is not retryable`, async (t) => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('shard cancelled')), 50);
    const err = await sdkError('hang', { signal: controller.signal, via });
    t.true(err instanceof APIUserAbortError);
    t.deepEqual(classifyError(err, { timeoutMs: 30_000, timeoutSignal: AbortSignal.timeout(30_000) }), {
      retryable: false,
      rateLimited: false,
      kind: 'aborted',
      reason: 'aborted',
    });
  });

  test(`${via}: a body cut short by a dropped connection is a retryable malformed response`, async (t) => {
    const err = await sdkError('truncated', { via });
    const c = classifyError(err);
    t.true(c.retryable);
    t.regex(c.reason, /^malformed response: body truncated \(other side closed/);
    t.is(retryReasonOf(c), 'malformed');
  });

  test(`${via}: a body that is not JSON, or ends mid-JSON, is a retryable malformed response`, async (t) => {
    for (const fault of ['not-json', 'cut-short']) {
      const err = await sdkError(fault, { via });
      t.true(err instanceof SyntaxError, fault);
      const c = classifyError(err);
      t.true(c.retryable, fault);
      t.is(retryReasonOf(c), 'malformed', fault);
      t.regex(c.reason, /^malformed response: /);
    }
  });
}

test('plain fetch failures, timeouts and unknown errors are classified too', async (t) => {
  // A port nothing listens on: fetch fails with ECONNREFUSED under 'fetch failed'.
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  for (const via of FETCH_NAMES) {
    const refused = await FETCHES[via](`http://127.0.0.1:${port}/`, { method: 'POST', body: '{}' }).catch(
      (err: unknown) => err
    );
    const c = classifyError(refused);
    t.true(c.retryable, via);
    t.regex(c.reason, /^connection error: .*ECONNREFUSED/, via);
    t.true(c.notProcessed, `${via}: a refused connection never reached the endpoint: nothing billed`);
  }

  const timedOut = classifyError(new DOMException('The operation was aborted due to timeout', 'TimeoutError'));
  t.true(timedOut.retryable);
  t.regex(timedOut.reason, /^timeout/);

  const bug = classifyError(new TypeError("Cannot read properties of undefined (reading 'choices')"));
  t.false(bug.retryable);
  t.is(bug.reason, "error: TypeError: Cannot read properties of undefined (reading 'choices')");
  t.is(classifyError('a string').reason, 'error: string: a string');
  const long = classifyError(new Error('x'.repeat(1000))).reason;
  t.true(long.length < 220 && long.endsWith('…'), 'a long message is cut to keep the reason one short line');
});
