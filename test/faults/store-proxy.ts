/**
 * A slow store: an HTTP proxy in front of the S3 server that can hold every request for a while before forwarding it.
 * The cheap stages (sample, validate, register) finish in milliseconds on a local store; with their worker's store
 * requests slowed down they are in flight long enough for a test to see them running and kill their worker mid-stage,
 * which is the fault being tested (a worker dying with its stage half done), not a slow store.
 *
 * Requests are forwarded byte for byte with their original headers: S3 signatures cover the Host header, which stays
 * the proxy's address that the client signed.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StoreProxy {
  /** `http://127.0.0.1:<port>`: the endpoint to give a worker (`AWS_ENDPOINT_URL_S3`). */
  endpoint: string;
  /** Hold each request this long before forwarding it (0: forward at once). */
  setDelay(ms: number): void;
  /** Requests forwarded so far. */
  forwarded(): number;
  close(): Promise<void>;
}

/**
 * `hold`, when given, decides each request's hold instead of {@link StoreProxy.setDelay} (and may watch the request
 * and its response): milliseconds, or a promise to forward it once settled (say, once another writer is done).
 */
export async function startStoreProxy(
  target: string,
  opts: { hold?: (req: IncomingMessage, res: ServerResponse) => number | Promise<unknown> } = {}
): Promise<StoreProxy> {
  const upstream = new URL(target);
  let delayMs = 0;
  let forwarded = 0;

  function forward(req: IncomingMessage, res: ServerResponse): void {
    // A client that went away while its request was held (its worker was killed) gets nothing sent on its behalf.
    if (req.destroyed || res.destroyed) return;
    forwarded += 1;
    const out = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      }
    );
    out.on('error', () => res.destroy());
    // The writer died mid-request: abort the upstream request too, as a dropped connection would.
    res.on('close', () => {
      if (!res.writableFinished) out.destroy();
    });
    req.pipe(out);
  }

  const server = createServer((req, res) => {
    const holdMs = opts.hold ? opts.hold(req, res) : delayMs;
    if (typeof holdMs !== 'number') void holdMs.finally(() => forward(req, res));
    else if (holdMs > 0) setTimeout(() => forward(req, res), holdMs);
    else forward(req, res);
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    setDelay: (ms) => {
      delayMs = ms;
    },
    forwarded: () => forwarded,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
