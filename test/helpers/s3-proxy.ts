/**
 * A TCP proxy in front of the S3 gateway for store tests: it records the head of every HTTP request and response
 * that passes (what the store really sends on the wire, headers included), and can cut a chosen request or response
 * midway through its body, handing the test the moment to kill the gateway while bytes are in flight.
 *
 * It forwards bytes untouched; it parses just enough HTTP/1.1 (heads and Content-Length bodies) to know where each
 * message starts. A body of unknown length (chunked) ends the parsing of that connection, which is then forwarded
 * blind: the AWS SDK sends Content-Length on every request this store makes.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface HttpHead {
  /** Requests: method and path (with query). Responses: status, and the method and path of the request answered. */
  method: string;
  path?: string;
  status?: number;
  /** Header names lower-cased; repeated headers joined with ', '. */
  headers: Record<string, string>;
}

/** Whether to cut a message: forward its head and half its body, then stop, and call `onCut`. */
export type CutRule = (head: HttpHead) => boolean;

export interface S3Proxy {
  endpoint: string;
  requests: HttpHead[];
  responses: HttpHead[];
  /** Set to cut the next matching request (or response); cleared when it fires. */
  cutRequest?: CutRule;
  cutResponse?: CutRule;
  /** Called once per cut, after the partial bytes went through: typically kills the gateway. */
  onCut?: (head: HttpHead) => Promise<void> | void;
  close(): Promise<void>;
}

const HEAD_END = Buffer.from('\r\n\r\n');

/** Splits one direction of a connection into messages; `feed` says how many bytes to forward before a cut. */
class MessageSplitter {
  private head = Buffer.alloc(0);
  private bodyLeft = 0;
  private opaque = false;
  /** Body bytes still to forward before cutting the current message (undefined: no cut pending). */
  private cutAfter?: number;
  /** The head of the message being forwarded. */
  current?: HttpHead;

  constructor(
    private readonly parse: (raw: string) => { head: HttpHead; bodyLength: number | undefined },
    private readonly shouldCut: (head: HttpHead) => boolean
  ) {}

  /** The number of bytes of `chunk` to forward, and whether to cut after them. */
  feed(chunk: Buffer): { forward: number; cut: boolean } {
    let p = 0;
    while (p < chunk.length && !this.opaque) {
      if (this.bodyLeft > 0) {
        const n = Math.min(this.bodyLeft, chunk.length - p);
        if (this.cutAfter !== undefined) {
          if (n >= this.cutAfter) return { forward: p + this.cutAfter, cut: true };
          this.cutAfter -= n;
        }
        this.bodyLeft -= n;
        p += n;
        continue;
      }
      const before = this.head.length;
      this.head = Buffer.concat([this.head, chunk.subarray(p)]);
      const end = this.head.indexOf(HEAD_END);
      if (end === -1) return { forward: chunk.length, cut: false };
      p += end + HEAD_END.length - before;
      const { head, bodyLength } = this.parse(this.head.subarray(0, end).toString('latin1'));
      this.head = Buffer.alloc(0);
      this.current = head;
      if (bodyLength === undefined) this.opaque = true;
      else this.bodyLeft = bodyLength;
      if (this.shouldCut(head)) {
        this.cutAfter = Math.floor((bodyLength ?? 0) / 2);
        if (this.cutAfter === 0) return { forward: p, cut: true };
      }
    }
    return { forward: chunk.length, cut: false };
  }
}

function headersOf(lines: string[]): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return headers;
}

function bodyLengthOf(headers: Record<string, string>): number | undefined {
  if (headers['transfer-encoding']) return undefined;
  return Number(headers['content-length'] ?? 0);
}

/** Start a proxy on a free loopback port forwarding to `upstreamPort`. */
export async function startS3Proxy(upstreamPort: number): Promise<S3Proxy> {
  const sockets = new Set<Socket>();
  const proxy: S3Proxy = {
    endpoint: '',
    requests: [],
    responses: [],
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  const cut = (head: HttpHead, client: Socket, upstream: Socket) => {
    // Freeze both sides: nothing more passes, as if the gateway had stopped reading and writing.
    client.pause();
    upstream.pause();
    void Promise.resolve(proxy.onCut?.(head)).finally(() => {
      upstream.destroy();
      client.destroy();
    });
  };
  const server: Server = createServer((client) => {
    sockets.add(client);
    const asked: HttpHead[] = [];
    const upstream = connect(upstreamPort, '127.0.0.1');
    sockets.add(upstream);
    let cutting = false;
    const requests = new MessageSplitter(
      (raw) => {
        const [line, ...rest] = raw.split('\r\n');
        const [method, path] = line.split(' ');
        const head: HttpHead = { method, path, headers: headersOf(rest) };
        asked.push(head);
        proxy.requests.push(head);
        return { head, bodyLength: bodyLengthOf(head.headers) };
      },
      (head) => {
        if (!proxy.cutRequest?.(head)) return false;
        proxy.cutRequest = undefined;
        return true;
      }
    );
    const responses = new MessageSplitter(
      (raw) => {
        const [line, ...rest] = raw.split('\r\n');
        const status = Number(line.split(' ')[1]);
        // 1xx (100 Continue) answers no request yet; HEAD, 204 and 304 answers have no body.
        const request = status < 200 ? asked[0] : asked.shift();
        const method = request?.method ?? '';
        const head: HttpHead = { method, path: request?.path, status, headers: headersOf(rest) };
        proxy.responses.push(head);
        const bodiless = status < 200 || status === 204 || status === 304 || method === 'HEAD';
        return { head, bodyLength: bodiless ? 0 : bodyLengthOf(head.headers) };
      },
      (head) => {
        if (!proxy.cutResponse?.(head)) return false;
        proxy.cutResponse = undefined;
        return true;
      }
    );
    const pipe = (from: Socket, to: Socket, splitter: MessageSplitter) => {
      from.on('data', (chunk: Buffer) => {
        if (cutting) return;
        const { forward, cut: cutNow } = splitter.feed(chunk);
        if (forward > 0) to.write(chunk.subarray(0, forward));
        if (cutNow) {
          cutting = true;
          cut(splitter.current!, client, upstream);
        }
      });
    };
    pipe(client, upstream, requests);
    pipe(upstream, client, responses);
    // A gateway that is down or dies mid-message: the client sees its connection reset, as it would without us.
    const closeBoth = () => {
      if (cutting) return;
      client.destroy();
      upstream.destroy();
    };
    upstream.on('error', closeBoth);
    upstream.on('close', closeBoth);
    client.on('error', closeBoth);
    client.on('close', closeBoth);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  proxy.endpoint = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  const close = proxy.close;
  proxy.close = async () => {
    for (const socket of sockets) socket.destroy();
    await close();
  };
  return proxy;
}
