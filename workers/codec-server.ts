/**
 * A remote codec endpoint for the Temporal UI and CLI (`--codec-endpoint`): they POST `{ payloads: [...] }` with
 * base64 `metadata` values and `data` (the proto3 JSON form of `Payload`) to `/decode` to show encrypted payloads, and
 * to `/encode` to send them (a signal typed in the UI), with the namespace in `X-Namespace`. The browser calls it
 * directly from the UI's page, so CORS decides which page may use it: exactly one origin, the UI's.
 *
 * Whoever can reach this server can decrypt what it is given: it listens on loopback unless told otherwise, and
 * should sit where only the UI's users can reach it.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { InputError } from '../lib/errors';
import { PayloadCodecError } from './codec';

/** Temporal's gRPC messages top out at 4 MiB; a batch of payloads as base64 JSON fits well within this. */
const MAX_BODY_BYTES = 16 * 1024 * 1024;

export interface CodecServerOptions {
  codec: PayloadCodec;
  /** The one origin (scheme://host[:port]) whose pages may call the server: the Temporal UI's. */
  origin: string;
  /** Default 127.0.0.1: decryption is for the machine's own users unless deliberately exposed. */
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** Told each failed request (no payload content), for the operator's log. */
  log?: (line: string) => void;
}

export interface CodecServer {
  url: string;
  close(): Promise<void>;
}

/** JSON `Payload` as the UI sends it: every bytes field base64. */
interface JsonPayload {
  metadata?: Record<string, string> | null;
  data?: string | null;
}

/**
 * The origin as browsers send it in `Origin`: scheme, host and a port only when not the scheme's default.
 * @throws InputError naming `--origin` for anything else (a path, a wildcard, a non-http scheme).
 */
export function normalizeOrigin(origin: string): string {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    throw new InputError(
      `--origin ${JSON.stringify(origin)} is not a URL; expected e.g. https://temporal.example`,
      'origin'
    );
  }
  if (!['http:', 'https:'].includes(url.protocol) || url.origin !== origin.replace(/\/$/, '')) {
    throw new InputError(
      `--origin ${JSON.stringify(origin)} is not an origin; expected scheme://host[:port] with no path, e.g. ${url.origin}`,
      'origin'
    );
  }
  return url.origin;
}

/** Starts the server and resolves once it listens. */
export async function startCodecServer(opts: CodecServerOptions): Promise<CodecServer> {
  const origin = normalizeOrigin(opts.origin);
  const server = createServer((req, res) => {
    serve(req, res, opts.codec, origin).catch((err: unknown) => {
      const status =
        err instanceof HttpError
          ? err.status
          : err instanceof PayloadCodecError || err instanceof SyntaxError
            ? 400
            : 500;
      opts.log?.(`codec-server: ${req.method} ${req.url} ${status}: ${(err as Error).message}`);
      if (!res.headersSent) reply(res, status, { message: (err as Error).message }, corsHeaders(req, origin));
    });
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/**
 * CORS headers for a request from the allowed origin; none for any other, so a browser on another page gets no
 * answer it may read. Credentials are allowed because the UI may be set to send its cookies or access token.
 */
function corsHeaders(req: IncomingMessage, origin: string): Record<string, string> {
  if (req.headers.origin !== origin) return { Vary: 'Origin' };
  return {
    'Access-Control-Allow-Origin': origin,
    'Access-Control-Allow-Credentials': 'true',
    Vary: 'Origin',
  };
}

async function serve(req: IncomingMessage, res: ServerResponse, codec: PayloadCodec, origin: string): Promise<void> {
  const cors = corsHeaders(req, origin);
  const path = new URL(req.url ?? '/', 'http://codec').pathname.replace(/\/+$/, '');
  const action = path.endsWith('/encode') ? 'encode' : path.endsWith('/decode') ? 'decode' : undefined;
  if (!action) throw new HttpError(404, `no route ${path || '/'}; this server serves POST /encode and POST /decode`);
  if (req.method === 'OPTIONS') {
    // A preflight from another origin is refused outright: its page is not to call this server at all.
    if (!cors['Access-Control-Allow-Origin']) throw new HttpError(403, `origin ${req.headers.origin} is not allowed`);
    res.writeHead(204, {
      ...cors,
      'Access-Control-Allow-Methods': 'POST, OPTIONS',
      'Access-Control-Allow-Headers': 'Content-Type, X-Namespace, Authorization',
      'Access-Control-Max-Age': '600',
    });
    res.end();
    return;
  }
  if (req.method !== 'POST') throw new HttpError(405, `${req.method} is not allowed here; expected POST`);
  const payloads = payloadsOf(JSON.parse((await readBody(req)).toString('utf8') || 'null'));
  const result = action === 'encode' ? await codec.encode(payloads) : await codec.decode(payloads);
  reply(res, 200, { payloads: result.map(toJson) }, cors);
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string>): void {
  res.writeHead(status, { ...headers, 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** @throws HttpError 400 naming the field that is not what the protocol sends. */
function payloadsOf(body: unknown): Payload[] {
  const list = (body as { payloads?: unknown } | null)?.payloads;
  if (!Array.isArray(list)) throw new HttpError(400, 'payloads: expected an array of payloads');
  return list.map((p: unknown, i) => {
    const { metadata, data } = (p ?? {}) as JsonPayload;
    if (typeof p !== 'object' || p === null) throw new HttpError(400, `payloads[${i}]: expected an object`);
    if (data != null && (typeof data !== 'string' || !BASE64.test(data))) {
      throw new HttpError(400, `payloads[${i}].data: expected a base64 string`);
    }
    const entries = Object.entries(metadata ?? {});
    for (const [k, v] of entries) {
      if (typeof v !== 'string' || !BASE64.test(v)) {
        throw new HttpError(400, `payloads[${i}].metadata.${k}: expected a base64 string`);
      }
    }
    return {
      metadata: Object.fromEntries(entries.map(([k, v]) => [k, Buffer.from(v, 'base64')])),
      data: Buffer.from(data ?? '', 'base64'),
    };
  });
}

function toJson(payload: Payload): JsonPayload {
  return {
    metadata: Object.fromEntries(
      Object.entries(payload.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])
    ),
    data: Buffer.from(payload.data ?? []).toString('base64'),
  };
}
