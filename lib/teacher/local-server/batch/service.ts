/**
 * OpenAI's Batch API for the local teacher server: the `/v1/files` and `/v1/batches` routes, enough for the official
 * `openai` SDK to upload a JSONL file of chat-completion requests, create a batch, poll, list and cancel it, and
 * download its output and error files. It follows OpenAI's documented behaviour where a batch client can tell the
 * difference; a line whose request the API refuses (bad parameters, unknown model) is answered in the error file as
 * `{ response: { status_code: 400, body: { error } }, error: null }` and counts as failed. Everything lives in memory,
 * in the server process: a test restarts its worker, not the server.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

import { badParam, HttpError, readJsonBody, sendJson } from '../http';
import { fileJson, FileStore } from './files';
import { IdSequence, newBatch, type BatchObject } from './model';
import { BatchRunner, type BatchRunnerDeps } from './runner';

export type BatchServiceDeps = Omit<BatchRunnerDeps, 'files' | 'ids'> & {
  /** Whether the batch just created loses its answer (a fault): the connection is dropped instead. */
  loseCreateAnswer(): boolean;
};

/** The body of `POST /v1/batches` is a small JSON object. */
const MAX_JSON_BYTES = 1024 * 1024;

export class BatchService {
  private readonly ids = new IdSequence();
  private readonly files = new FileStore(this.ids);
  private readonly batches = new Map<string, BatchObject>();
  /** Batch ids oldest first; listing walks it backwards. */
  private readonly order: string[] = [];
  private readonly runner: BatchRunner;

  constructor(private readonly deps: BatchServiceDeps) {
    this.runner = new BatchRunner({ ...deps, files: this.files, ids: this.ids });
  }

  /**
   * Serves the request when its path is one of the files or batches routes; false when it is not.
   * @throws HttpError for a request the API refuses.
   */
  async route(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): Promise<boolean> {
    const method = req.method ?? 'GET';
    const allow = (...methods: string[]) => {
      if (!methods.includes(method)) {
        throw new HttpError(405, `${method} is not allowed here; expected ${methods.join(' or ')}`);
      }
    };
    let m: RegExpExecArray | null;
    if (path === '/v1/files') {
      allow('POST');
      sendJson(res, 200, await this.files.upload(req));
    } else if ((m = /^\/v1\/files\/([^/]+)$/.exec(path))) {
      allow('GET', 'DELETE');
      const file = this.files.get(decodeURIComponent(m[1]));
      if (method === 'DELETE') this.files.delete(file.id);
      sendJson(res, 200, method === 'DELETE' ? { id: file.id, object: 'file', deleted: true } : fileJson(file));
    } else if ((m = /^\/v1\/files\/([^/]+)\/content$/.exec(path))) {
      allow('GET');
      const file = this.files.get(decodeURIComponent(m[1]));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': file.content.length });
      res.end(file.content);
    } else if (path === '/v1/batches') {
      allow('GET', 'POST');
      if (method === 'GET') {
        sendJson(res, 200, this.list(query));
      } else {
        const batch = await this.create(req);
        // The batch exists and runs either way; only its answer is lost.
        if (this.deps.loseCreateAnswer()) req.socket.destroy();
        else sendJson(res, 200, batch);
      }
    } else if ((m = /^\/v1\/batches\/([^/]+)$/.exec(path))) {
      allow('GET');
      sendJson(res, 200, this.get(decodeURIComponent(m[1])));
    } else if ((m = /^\/v1\/batches\/([^/]+)\/cancel$/.exec(path))) {
      allow('POST');
      sendJson(res, 200, this.runner.cancel(this.get(decodeURIComponent(m[1]))));
    } else {
      return false;
    }
    return true;
  }

  /** Stop the batches in progress (their timers would keep the process alive). */
  close(): void {
    this.runner.close();
  }

  private async create(req: IncomingMessage): Promise<BatchObject> {
    const body = await readJsonBody(req, MAX_JSON_BYTES);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new HttpError(400, 'the request body must be a JSON object');
    }
    const b = body as Record<string, unknown>;
    if (typeof b.input_file_id !== 'string') {
      throw badParam('input_file_id', `got ${JSON.stringify(b.input_file_id)}; expected a file id`);
    }
    const input = this.files.find(b.input_file_id);
    if (!input) throw badParam('input_file_id', `no file ${JSON.stringify(b.input_file_id)} was uploaded here`);
    if (input.purpose !== 'batch') {
      throw badParam('input_file_id', `file ${input.id} has purpose '${input.purpose}'; expected 'batch'`);
    }
    if (b.endpoint !== '/v1/chat/completions') {
      throw badParam('endpoint', `got ${JSON.stringify(b.endpoint)}; this server batches '/v1/chat/completions'`);
    }
    if (b.completion_window !== '24h') {
      throw badParam('completion_window', `got ${JSON.stringify(b.completion_window)}; expected '24h'`);
    }
    const metadata = b.metadata ?? null;
    if (
      metadata !== null &&
      (typeof metadata !== 'object' ||
        Array.isArray(metadata) ||
        Object.keys(metadata).length > 16 ||
        !Object.values(metadata).every((v) => typeof v === 'string' && v.length <= 512))
    ) {
      throw badParam('metadata', 'expected at most 16 string values of up to 512 characters');
    }
    const batch = newBatch(`batch_local_${this.ids.next()}`, input.id, metadata as Record<string, string> | null);
    this.batches.set(batch.id, batch);
    this.order.push(batch.id);
    this.runner.start(batch, input.content);
    return batch;
  }

  /** @throws HttpError 404 when there is no such batch. */
  private get(id: string): BatchObject {
    const batch = this.batches.get(id);
    if (!batch) throw new HttpError(404, `No batch found with id '${id}'.`, 'invalid_request_error', 'id');
    return batch;
  }

  /** `GET /v1/batches`: newest first, `limit` at a time, from after the batch `after`. */
  private list(query: URLSearchParams): object {
    const limitText = query.get('limit');
    const limit = limitText === null ? 20 : Number(limitText);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 100) {
      throw badParam('limit', `got ${JSON.stringify(limitText)}; expected an integer from 1 to 100`);
    }
    const after = query.get('after');
    let start = this.order.length - 1;
    if (after !== null) {
      const at = this.order.lastIndexOf(after);
      if (at === -1) throw badParam('after', `no batch ${JSON.stringify(after)}`);
      start = at - 1;
    }
    const data: BatchObject[] = [];
    for (let i = start; i >= 0 && data.length < limit; i--) data.push(this.batches.get(this.order[i])!);
    return {
      object: 'list',
      data,
      first_id: data[0]?.id ?? null,
      last_id: data.at(-1)?.id ?? null,
      has_more: start - data.length >= 0,
    };
  }
}
