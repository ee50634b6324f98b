/**
 * The plumbing the local teacher server's routes share: OpenAI-style errors, JSON replies and bounded body reads.
 * Kept apart so the batch routes (`batch/`) and the chat route answer errors the same way.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * An error answered as OpenAI answers errors: the status, and `{ error: { message, type, param, code } }`. Thrown by
 * a route; the server's request handler turns it into the reply.
 */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {}
  ) {
    super(message);
  }

  /** The `error` member of the reply body; batch error-file lines carry the same object. */
  toJSON(): { message: string; type: string; param: string | null; code: string | null } {
    return { message: this.message, type: this.type, param: this.param, code: this.code };
  }
}

/** A 400 naming the request parameter at fault, as OpenAI words them. */
export function badParam(param: string, message: string): HttpError {
  return new HttpError(400, `${param}: ${message}`, 'invalid_request_error', param);
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** The whole request body; more than `maxBytes` is a 413, so a runaway client cannot exhaust memory. */
export async function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) throw new HttpError(413, `request body is over ${maxBytes} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

export async function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  const body = await readBody(req, maxBytes);
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, 'We could not parse the JSON body of your request; expected a JSON object.');
  }
}
