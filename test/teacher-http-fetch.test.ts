import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import test from 'ava';

import { createHttpFetch, IDLE_MS } from '../lib/teacher/http-fetch';

// The failures the retry policy reads (refused, dropped, truncated, stalled, aborted) are checked on both fetches in
// teacher-retry.test.ts; this file checks what a successful call must look like, and what is left to Node's fetch.

const BODY = JSON.stringify({ id: 'chatcmpl-1', choices: [{ message: { content: 'é ✓ '.repeat(50) } }] });
const ENCODERS: Record<string, (b: Buffer) => Buffer> = {
  gzip: (b) => gzipSync(b),
  deflate: (b) => deflateSync(b),
  br: (b) => brotliCompressSync(b),
};

let server: Server;
let root: string;
/** Remote ports of the connections each path was asked on, in order. */
const ports: Record<string, number[]> = {};
const seen: { method: string; body: string; headers: Record<string, unknown> }[] = [];

test.before(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://localhost');
    (ports[url.pathname] ??= []).push(req.socket.remotePort!);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method!, body: Buffer.concat(chunks).toString(), headers: req.headers });
      const encoding = url.searchParams.get('encoding');
      if (url.pathname === '/redirect') {
        res.writeHead(307, { location: '/plain' });
        res.end();
      } else if (url.pathname === '/no-content') {
        res.writeHead(204, { 'x-kind': 'empty' });
        res.end();
      } else if (encoding) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': encoding });
        res.end(ENCODERS[encoding](Buffer.from(BODY)));
      } else {
        res.writeHead(201, 'Made', { 'content-type': 'application/json', 'x-request-id': 'req-1' });
        res.end(BODY);
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

const post = (body: string, init: RequestInit = {}): RequestInit => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
  body,
  ...init,
});

test.serial('a POST gets the status, headers and body fetch gives, and sends its body and headers', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  const ours = await httpFetch(`${root}/plain`, post('{"q":"é"}'));
  const node = await fetch(`${root}/plain`, post('{"q":"é"}'));
  t.is(ours.status, 201);
  t.is(ours.statusText, 'Made');
  t.true(ours.ok);
  t.is(ours.headers.get('x-request-id'), 'req-1');
  t.is(ours.headers.get('content-type'), node.headers.get('content-type'));
  t.deepEqual(await ours.json(), await node.json());
  const [mine] = seen.slice(-2);
  t.is(mine.method, 'POST');
  t.is(mine.body, '{"q":"é"}', 'the body is sent as UTF-8, whole');
  t.is(mine.headers.authorization, 'Bearer k');
  t.is(mine.headers['content-length'], String(Buffer.byteLength('{"q":"é"}')));
});

test.serial('the body reads as fetch reads it: once, whole or as a stream, and a clone before reading', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  const both = async () => [await httpFetch(`${root}/plain`, post('{}')), await fetch(`${root}/plain`, post('{}'))];
  for (const res of await both()) {
    t.false(res.bodyUsed);
    const copy = res.clone();
    t.deepEqual(JSON.parse(await res.text()), JSON.parse(BODY));
    t.true(res.bodyUsed);
    await t.throwsAsync(res.json(), { instanceOf: TypeError }, 'a second read is refused');
    t.throws(() => res.clone(), { instanceOf: TypeError }, 'a read body cannot be cloned');
    t.is(Buffer.from(await copy.arrayBuffer()).toString('utf8'), BODY, 'the clone reads the same bytes');
  }
  for (const res of await both()) {
    const chunks: Buffer[] = [];
    for await (const chunk of res.body!) chunks.push(Buffer.from(chunk));
    t.is(Buffer.concat(chunks).toString('utf8'), BODY, 'the stream gives the bytes');
    t.true(res.bodyUsed);
    await t.throwsAsync(res.text(), { instanceOf: TypeError }, 'a streamed body cannot be read whole again');
  }
  for (const res of await both()) {
    // A reader holds the body before reading it: the body is not used yet, but it can no longer be read or cloned.
    const reader = res.body!.getReader();
    t.false(res.bodyUsed);
    t.throws(() => res.clone(), { instanceOf: TypeError }, 'a body locked to a reader cannot be cloned');
    await t.throwsAsync(res.text(), { instanceOf: TypeError }, 'nor read whole');
    const chunks: Buffer[] = [];
    for (let r = await reader.read(); !r.done; r = await reader.read()) chunks.push(Buffer.from(r.value));
    t.is(Buffer.concat(chunks).toString('utf8'), BODY, 'the reader still gets the bytes');
  }
  for (const res of await both()) {
    const blob = await res.blob();
    t.is(blob.type, 'application/json');
    t.is(await blob.text(), BODY);
  }
});

test.serial('compressed answers are decoded as fetch decodes them', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  for (const encoding of Object.keys(ENCODERS)) {
    const res = await httpFetch(`${root}/enc?encoding=${encoding}`, post('{}'));
    t.is(await res.text(), BODY, encoding);
  }
  t.is(seen.at(-1)!.headers['accept-encoding'], 'gzip, deflate, br', 'asks for compression, as fetch does');
});

test.serial('calls one after another share one keep-alive connection', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  for (let i = 0; i < 20; i++) await (await httpFetch(`${root}/reuse`, post('{}'))).text();
  t.is(ports['/reuse'].length, 20);
  t.is(new Set(ports['/reuse']).size, 1);
});

test.serial('a redirect is followed, as fetch follows it', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  const res = await httpFetch(`${root}/redirect`, post('{"again":1}'));
  t.is(res.status, 201);
  t.is(await res.text(), BODY);
  t.is(seen.at(-1)!.body, '{"again":1}', 'a 307 sends the same body again');
});

test.serial('a status without a body gives a Response without one', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  const res = await httpFetch(`${root}/no-content`, post('{}'));
  t.is(res.status, 204);
  t.is(res.headers.get('x-kind'), 'empty');
  t.is(res.body, null);
});

test.serial('an abort, before the call or during it, rejects with the signal’s reason', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  const early = new AbortController();
  early.abort(new Error('gave up first'));
  await t.throwsAsync(httpFetch(`${root}/plain`, post('{}', { signal: early.signal })), {
    message: 'gave up first',
  });
  const hang = createServer(() => undefined);
  await new Promise<void>((resolve) => hang.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    hang.closeAllConnections();
    hang.close();
  });
  const late = new AbortController();
  setTimeout(() => late.abort(), 50);
  const err: unknown = await httpFetch(
    `http://127.0.0.1:${(hang.address() as AddressInfo).port}/`,
    post('{}', { signal: late.signal })
  ).catch((e: unknown) => e);
  // fetch's own reason for a bare abort(): a DOMException, which is not an Error here.
  t.true(err instanceof DOMException);
  t.is((err as DOMException).name, 'AbortError');
});

test.serial('what it does not handle goes to fetch: other methods and bodies that are not text or bytes', async (t) => {
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(close);
  const before = ports['/delegated']?.length ?? 0;
  const got = await httpFetch(`${root}/delegated`);
  t.is(await got.text(), BODY);
  const form = new FormData();
  form.append('purpose', 'batch');
  const posted = await httpFetch(`${root}/delegated`, { method: 'POST', body: form });
  t.is(posted.status, 201);
  t.is(ports['/delegated'].length, before + 2);
  t.regex(String(seen.at(-1)!.headers['content-type']), /^multipart\/form-data/, 'the form went as fetch sends one');
  t.is(seen.at(-2)!.method, 'GET');
});

test('a call that outlasts the idle-socket timeout is not cut: only idle sockets are closed', async (t) => {
  const slow = createServer((req, res) => {
    req.resume();
    req.on('end', () => setTimeout(() => res.end('late'), IDLE_MS + 1000));
  });
  await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve));
  const { fetch: httpFetch, close } = createHttpFetch();
  t.teardown(() => {
    close();
    slow.closeAllConnections();
    slow.close();
  });
  const res = await httpFetch(`http://127.0.0.1:${(slow.address() as AddressInfo).port}/`, post('{}'));
  t.is(await res.text(), 'late');
});
