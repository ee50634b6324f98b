/**
 * The `fetch` the teacher's OpenAI client sends chat completions with: `node:http`/`node:https` over keep-alive
 * sockets, the answer buffered whole and handed back as a `Response`. Node's own fetch (undici) wraps every request
 * and body in web streams, abort signals and transferables: measured at 64 calls in flight against our local server,
 * it cost about 1 ms more CPU per call than this (1.44 against 0.40 ms, client and server together), and at the
 * teacher stage's benchmark (paired runs) the worker's CPU per call fell from 3.4–4.7 to 2.5–3.1 ms. A worker that runs hundreds
 * of calls a second on two cores spends that time where the next answer waits.
 *
 * Only what chat completions need takes this path: a POST whose body is a string or bytes, to an http(s) URL.
 * Anything else (file uploads, downloads that should stream, other methods) goes to the global fetch unchanged, as
 * does a redirect (fetch follows it). What callers see matches fetch where `classifyError` looks:
 * - no response (refused, reset before the headers, DNS): a `TypeError('fetch failed')` with the socket error as its
 *   `cause`, so the error code is found down the cause chain as with undici;
 * - a body cut short after the headers: the `Response` is still resolved, and reading it fails with
 *   `TypeError('terminated')` as undici's does (the status and headers did arrive);
 * - an abort: the signal's reason (an `AbortError` DOMException unless the caller gave another).
 * Compressed answers are decoded (gzip, deflate, br), as fetch does: `accept-encoding` is sent unless set.
 */
import http from 'node:http';
import https from 'node:https';
import { promisify } from 'node:util';
import zlib from 'node:zlib';

/** Statuses whose response has no body: `new Response` refuses one for them. */
const NULL_BODY = new Set([101, 204, 205, 304]);
const REDIRECT = new Set([301, 302, 303, 307, 308]);
/**
 * Idle sockets are closed after this long: shorter than the 5 s most servers keep an idle connection (Node's own
 * default), so a request is rarely sent on a socket the server is closing. undici uses 4 s too.
 */
export const IDLE_MS = 4000;

const DECODERS: Record<string, (buf: Buffer) => Promise<Buffer>> = {
  gzip: promisify(zlib.gunzip),
  'x-gzip': promisify(zlib.gunzip),
  deflate: promisify(zlib.inflate),
  br: promisify(zlib.brotliDecompress),
};

export interface HttpFetch {
  fetch: typeof fetch;
  /** Closes the idle sockets; requests in flight finish. */
  close(): void;
}

let shared: HttpFetch | undefined;

/**
 * The process's one fetch for teacher clients: their sockets pooled per host as undici's global dispatcher pools
 * them, where a fetch per client would leave each finished shard's idle sockets open for {@link IDLE_MS}.
 */
export function sharedHttpFetch(): typeof fetch {
  shared ??= createHttpFetch();
  return shared.fetch;
}

/** A fetch with keep-alive agents of its own. */
export function createHttpFetch(): HttpFetch {
  const agents = {
    'http:': new http.Agent({ keepAlive: true, timeout: IDLE_MS, scheduling: 'lifo' }),
    'https:': new https.Agent({ keepAlive: true, timeout: IDLE_MS, scheduling: 'lifo' }),
  };
  const fetchFn = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = typeof input === 'string' ? new URL(input) : input instanceof URL ? input : undefined;
    const body = bytesOf(init?.body);
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || init?.method !== 'POST' || !body) {
      return globalThis.fetch(input, init);
    }
    return send(url, init, body, agents[url.protocol]).then((res) => res ?? globalThis.fetch(input, init));
  };
  return {
    fetch: fetchFn as typeof fetch,
    close() {
      agents['http:'].destroy();
      agents['https:'].destroy();
    },
  };
}

/** The body as bytes, or undefined when it is of a kind this path leaves to fetch. */
function bytesOf(body: RequestInit['body']): Buffer | undefined {
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  return undefined;
}

/** One request; resolves undefined for a redirect, which the caller hands to fetch to follow. */
function send(url: URL, init: RequestInit, body: Buffer, agent: http.Agent): Promise<Response | undefined> {
  const signal = init.signal ?? undefined;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const headers: Record<string, string> = {};
    // The SDK hands over a Headers already: read it as it is rather than copying it into another first.
    (init.headers instanceof Headers ? init.headers : new Headers(init.headers)).forEach((value, name) => {
      headers[name] = value;
    });
    headers['content-length'] = String(body.length);
    headers['accept-encoding'] ??= 'gzip, deflate, br';
    const transport = url.protocol === 'https:' ? https : http;
    let settled = false;
    const req = transport.request(url, { method: 'POST', agent, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      // A connection dropped mid-body is reported by 'close' with `complete` false, below; unheard, it would throw.
      res.on('error', () => undefined);
      // 'aborted' precedes 'close' when the connection drops before the body's end; `complete` says which it was.
      res.once('close', () => {
        signal?.removeEventListener('abort', onAbort);
        if (settled) return;
        settled = true;
        if (signal?.aborted) return reject(abortReason(signal));
        const status = res.statusCode ?? 0;
        if (REDIRECT.has(status) && res.headers.location) return resolve(undefined);
        if (status < 200 || status > 599) return reject(new TypeError('fetch failed', { cause: badStatus(status) }));
        const responseHeaders = new Headers();
        for (let i = 0; i < res.rawHeaders.length; i += 2) {
          responseHeaders.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
        }
        const init = { status, statusText: res.statusMessage ?? '', headers: responseHeaders };
        if (NULL_BODY.has(status)) return resolve(new Response(null, init));
        const raw = Buffer.concat(chunks);
        if (!res.complete) return resolve(new Response(truncated(raw), init));
        const encoding = res.headers['content-encoding'];
        // Most answers are not compressed: those are handed back at once, without a trip through a promise.
        if (!encoding) return resolve(new BufferedResponse(raw, init));
        decode(raw, encoding).then(
          (decoded) => resolve(new BufferedResponse(decoded, init)),
          (err: unknown) => resolve(new Response(failing(new TypeError('terminated', { cause: err })), init))
        );
      });
    });
    const onAbort = () => {
      if (settled) return;
      settled = true;
      req.destroy();
      reject(abortReason(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', (err) => {
      signal?.removeEventListener('abort', onAbort);
      if (settled) return;
      settled = true;
      reject(new TypeError('fetch failed', { cause: err }));
    });
    req.end(body);
  });
}

/**
 * A Response whose whole body is already in memory. undici's own copies the bytes into a web stream and reads them
 * back through it: `new Response(bytes).json()` on a 1 KB chat completion took 80-100 us against 10 for this, on the
 * thread where the next answer is waiting. It reads as a Response does: `json()`, `text()`, `arrayBuffer()` and
 * `blob()` once (a second read is refused as fetch refuses it), `body` a stream of the same bytes, made when first
 * asked for, and a body whose stream a reader has taken can no longer be read whole.
 */
class BufferedResponse extends Response {
  readonly #bytes: Buffer;
  #stream: ReadableStream<Uint8Array> | undefined;
  /** The body was read, whole or through its stream. */
  #read = false;

  constructor(bytes: Buffer, init: ResponseInit) {
    // No body for undici to wrap: the bytes are served by the members below.
    super(null, init);
    this.#bytes = bytes;
  }

  /** As fetch's: read already, or locked to a reader that may not have read it yet. */
  get #unusable(): boolean {
    return this.#read || this.#stream?.locked === true;
  }

  /**
   * The bytes, once: what `fetch` refuses on a second read, or while a reader holds the body's stream, is refused.
   */
  #take(): Buffer {
    if (this.#unusable) throw new TypeError('Body is unusable: Body has already been read');
    this.#read = true;
    return this.#bytes;
  }

  static {
    // On the prototype, where Response has them: TypeScript's declarations make them instance properties, which a
    // subclass may not override with methods or accessors.
    Object.defineProperties(BufferedResponse.prototype, {
      text: {
        value: async function (this: BufferedResponse) {
          return this.#take().toString('utf8');
        },
      },
      json: {
        value: async function (this: BufferedResponse) {
          return JSON.parse(this.#take().toString('utf8')) as unknown;
        },
      },
      arrayBuffer: {
        value: async function (this: BufferedResponse) {
          return new Uint8Array(this.#take()).buffer;
        },
      },
      blob: {
        value: async function (this: BufferedResponse) {
          return new Blob([this.#take()], { type: this.headers.get('content-type') ?? '' });
        },
      },
      clone: {
        value: function (this: BufferedResponse) {
          if (this.#unusable) throw new TypeError('Response.clone: Body has already been consumed.');
          const { status, statusText, headers } = this;
          return new BufferedResponse(this.#bytes, { status, statusText, headers: new Headers(headers) });
        },
      },
      body: {
        get(this: BufferedResponse) {
          // Pulled only when read (no high-water mark to fill ahead), and a read is what uses a body up, as in fetch.
          this.#stream ??= new ReadableStream<Uint8Array>(
            {
              pull: (controller) => {
                if (this.#read) return controller.error(new TypeError('Body is unusable: Body has already been read'));
                this.#read = true;
                if (this.#bytes.length > 0) controller.enqueue(new Uint8Array(this.#bytes));
                controller.close();
              },
            },
            { highWaterMark: 0 }
          );
          return this.#stream;
        },
      },
      bodyUsed: {
        get(this: BufferedResponse) {
          return this.#read;
        },
      },
    });
  }
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

function badStatus(status: number): Error {
  return Object.assign(new Error(`invalid response status ${status}`), { code: 'UND_ERR_INVALID_STATUS' });
}

/** Decodes a compressed body; an encoding fetch does not decode either is passed through as it came. */
async function decode(raw: Buffer, encoding: string): Promise<Buffer> {
  // Several codings apply in the order listed, so they are undone last first.
  let out = raw;
  for (const coding of encoding
    .split(',')
    .map((c) => c.trim().toLowerCase())
    .reverse()) {
    if (coding === 'identity' || coding === '') continue;
    const decoder = DECODERS[coding];
    if (!decoder) return raw;
    out = await decoder(out);
  }
  return out;
}

/** A body that yields what arrived and then fails as undici's does when the connection drops mid-body. */
function truncated(received: Buffer): ReadableStream<Uint8Array> {
  return failing(new TypeError('terminated', { cause: new Error('other side closed') }), received);
}

function failing(error: Error, received?: Buffer): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      if (received?.length) controller.enqueue(new Uint8Array(received));
      controller.error(error);
    },
  });
}
