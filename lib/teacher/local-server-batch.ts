/**
 * OpenAI's Batch API for the local teacher server: file uploads (`/v1/files`) and batches (`/v1/batches`), enough
 * for the official `openai` SDK to upload a JSONL file of chat-completion requests, create a batch, poll it and
 * download its output and error files.
 *
 * It follows OpenAI's documented behaviour where a batch client can tell the difference:
 * - a batch goes `validating` → `in_progress` → `finalizing` → `completed`; a malformed input line (bad JSON, no
 *   `custom_id`, a repeated `custom_id`, another method or URL) fails the whole batch at validation, with `errors`
 *   naming the line, and so do more than `maxLines` lines;
 * - a line whose request the API refuses (bad parameters, unknown model) is answered in the error file as
 *   `{ response: { status_code: 400, body: { error } }, error: null }`, and counts as failed;
 * - an expired batch answers the lines it did not get to in the error file with `error.code: 'batch_expired'`;
 * - a cancelled batch stops where it is; the lines left go to the error file with `error.code: 'batch_cancelled'`.
 * Everything lives in memory, in the server process: a test restarts its worker, not the server.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

import { badParam, HttpError, readBody, readJsonBody, sendJson } from './local-server-http';
import { parseMultipart } from './local-server-multipart';

/** How the next batch ends, when a test wants it to end badly. */
export type BatchOutcome = { status: 'failed' } | { status: 'expired'; doneLines: number };

export interface BatchServiceDeps {
  /**
   * Answers one line's request body as a direct chat-completions call would, counting it the same way; throws an
   * {@link HttpError} for a request the API would refuse.
   */
  answer(body: unknown): object;
  /** Time a batch spends `in_progress` before its lines are answered. */
  batchDelayMs: number;
  /** Most lines in one input file (OpenAI: 50,000). */
  maxLines: number;
  /** Called when a batch leaves `validating`: a forced outcome for it, if a fault asks for one. */
  takeOutcome(): BatchOutcome | undefined;
}

/** OpenAI's limits: 200 MB a batch input file. */
export const MAX_FILE_BYTES = 200 * 1024 * 1024;
/** The body of `POST /v1/batches` is a small JSON object. */
const MAX_JSON_BYTES = 1024 * 1024;
/** Lines answered between yields to the event loop, so polls and other requests are served during a big batch. */
const LINES_PER_SLICE = 500;

interface StoredFile {
  id: string;
  object: 'file';
  bytes: number;
  created_at: number;
  filename: string;
  purpose: string;
  status: 'processed';
  status_details: null;
  expires_at: null;
  content: Buffer;
}

type BatchStatus =
  'validating' | 'failed' | 'in_progress' | 'finalizing' | 'completed' | 'expired' | 'cancelling' | 'cancelled';

interface BatchError {
  code: string;
  message: string;
  param: string | null;
  line: number | null;
}

/** A batch in OpenAI's shape, exactly as it is served. */
interface BatchObject {
  id: string;
  object: 'batch';
  endpoint: string;
  errors: { object: 'list'; data: BatchError[] } | null;
  input_file_id: string;
  completion_window: string;
  status: BatchStatus;
  output_file_id: string | null;
  error_file_id: string | null;
  created_at: number;
  in_progress_at: number | null;
  expires_at: number;
  finalizing_at: number | null;
  completed_at: number | null;
  failed_at: number | null;
  expired_at: number | null;
  cancelling_at: number | null;
  cancelled_at: number | null;
  request_counts: { total: number; completed: number; failed: number };
  metadata: Record<string, string> | null;
}

interface InputLine {
  custom_id: string;
  body: unknown;
}

const nowS = () => Math.floor(Date.now() / 1000);

/** The files and batches routes, with their state. */
export function createBatchService(deps: BatchServiceDeps) {
  const files = new Map<string, StoredFile>();
  const batches = new Map<string, BatchObject>();
  /** Batch ids oldest first; listing walks it backwards. */
  const order: string[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let ids = 0;

  /** Each unfinished batch's next step, so that cancelling can run it at once rather than after a delay. */
  const pending = new Map<string, { timer: NodeJS.Timeout; step: () => void }>();
  const later = (batch: BatchObject, ms: number, step: () => void) => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      pending.delete(batch.id);
      step();
    }, ms);
    timers.add(timer);
    pending.set(batch.id, { timer, step });
  };

  function storeFile(filename: string, purpose: string, content: Buffer): StoredFile {
    const file: StoredFile = {
      id: `file-local-${++ids}`,
      object: 'file',
      bytes: content.length,
      created_at: nowS(),
      filename,
      purpose,
      status: 'processed',
      status_details: null,
      expires_at: null,
      content,
    };
    files.set(file.id, file);
    return file;
  }

  const fileJson = ({ content: _content, ...meta }: StoredFile) => meta;

  function getFile(id: string): StoredFile {
    const file = files.get(id);
    if (!file) throw new HttpError(404, `No such File object: ${id}`, 'invalid_request_error', 'id');
    return file;
  }

  function getBatch(id: string): BatchObject {
    const batch = batches.get(id);
    if (!batch) throw new HttpError(404, `No batch found with id '${id}'.`, 'invalid_request_error', 'id');
    return batch;
  }

  async function uploadFile(req: IncomingMessage): Promise<object> {
    const form = parseMultipart(await readBody(req, MAX_FILE_BYTES), req.headers['content-type']);
    const purpose = form.get('purpose')?.data.toString('utf8');
    // Only batch input is stored: nothing else in Stepwise uploads files, and refusing the rest keeps this honest.
    if (purpose !== 'batch') {
      throw badParam('purpose', `got ${JSON.stringify(purpose ?? null)}; this server stores 'batch' files only`);
    }
    const file = form.get('file');
    if (file?.filename === undefined) throw badParam('file', 'expected a file part with a filename');
    // Copy out of the request body so the rest of it can be collected.
    return fileJson(storeFile(file.filename, purpose, Buffer.from(file.data)));
  }

  async function createBatch(req: IncomingMessage): Promise<BatchObject> {
    const body = await readJsonBody(req, MAX_JSON_BYTES);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new HttpError(400, 'the request body must be a JSON object');
    }
    const b = body as Record<string, unknown>;
    if (typeof b.input_file_id !== 'string') {
      throw badParam('input_file_id', `got ${JSON.stringify(b.input_file_id)}; expected a file id`);
    }
    const input = files.get(b.input_file_id);
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
    const created = nowS();
    const batch: BatchObject = {
      id: `batch_local_${++ids}`,
      object: 'batch',
      endpoint: '/v1/chat/completions',
      errors: null,
      input_file_id: input.id,
      completion_window: '24h',
      status: 'validating',
      output_file_id: null,
      error_file_id: null,
      created_at: created,
      in_progress_at: null,
      expires_at: created + 24 * 3600,
      finalizing_at: null,
      completed_at: null,
      failed_at: null,
      expired_at: null,
      cancelling_at: null,
      cancelled_at: null,
      request_counts: { total: 0, completed: 0, failed: 0 },
      metadata: metadata as Record<string, string> | null,
    };
    batches.set(batch.id, batch);
    order.push(batch.id);
    later(batch, 0, () => validate(batch, input.content));
    return batch;
  }

  function fail(batch: BatchObject, errors: BatchError[]): void {
    batch.status = 'failed';
    batch.failed_at = nowS();
    batch.errors = { object: 'list', data: errors };
  }

  function validate(batch: BatchObject, content: Buffer): void {
    if (batch.status === 'cancelling') {
      batch.status = 'cancelled';
      batch.cancelled_at = nowS();
      return;
    }
    const outcome = deps.takeOutcome();
    if (outcome?.status === 'failed') {
      return fail(batch, [
        { code: 'injected_failure', message: 'injected fault: batch failed', param: null, line: null },
      ]);
    }
    const lines: InputLine[] = [];
    const errors: BatchError[] = [];
    const seen = new Set<string>();
    const text = content.toString('utf8').split('\n');
    for (const [i, raw] of text.entries()) {
      if (raw.trim() === '') continue;
      const error = (code: string, message: string, param: string | null = null) =>
        errors.push({ code, message, param, line: i + 1 });
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(raw);
      } catch {
        error('invalid_json_line', 'This line is not parseable as valid JSON.');
        continue;
      }
      if (typeof line !== 'object' || line === null || Array.isArray(line)) {
        error('invalid_json_line', 'This line is not a JSON object.');
      } else if (typeof line.custom_id !== 'string' || line.custom_id === '') {
        error('missing_required_parameter', 'Missing required parameter: custom_id.', 'custom_id');
      } else if (seen.has(line.custom_id)) {
        error('duplicate_custom_id', `The custom_id '${line.custom_id}' is used more than once.`, 'custom_id');
      } else if (line.method !== 'POST') {
        error('invalid_request', `method is ${JSON.stringify(line.method)}; expected 'POST'.`, 'method');
      } else if (line.url !== batch.endpoint) {
        error('mismatched_endpoint', `url is ${JSON.stringify(line.url)}; the batch's endpoint is ${batch.endpoint}.`);
      } else if (typeof line.body !== 'object' || line.body === null) {
        error('missing_required_parameter', 'Missing required parameter: body.', 'body');
      } else {
        seen.add(line.custom_id);
        lines.push({ custom_id: line.custom_id, body: line.body });
      }
    }
    if (errors.length === 0 && lines.length === 0) {
      errors.push({ code: 'empty_file', message: 'The input file has no requests.', param: null, line: null });
    }
    if (lines.length > deps.maxLines) {
      errors.push({
        code: 'too_many_requests',
        message: `The input file has ${lines.length} requests; a batch takes at most ${deps.maxLines}.`,
        param: null,
        line: null,
      });
    }
    if (errors.length > 0) return fail(batch, errors.slice(0, 100));
    batch.status = 'in_progress';
    batch.in_progress_at = nowS();
    batch.request_counts.total = lines.length;
    later(batch, deps.batchDelayMs, () => run(batch, lines, outcome));
  }

  /** Answers the lines a slice at a time; then files the output and error files and ends the batch. */
  function run(batch: BatchObject, lines: InputLine[], outcome: BatchOutcome | undefined): void {
    const output: string[] = [];
    const errorLines: string[] = [];
    const lineId = () => `batch_req_local_${++ids}`;
    const unanswered = (line: InputLine, code: string, message: string) => {
      errorLines.push(
        JSON.stringify({ id: lineId(), custom_id: line.custom_id, response: null, error: { code, message } })
      );
      batch.request_counts.failed++;
    };
    let next = 0;
    const slice = () => {
      const end = Math.min(lines.length, next + LINES_PER_SLICE);
      for (; next < end && batch.status === 'in_progress'; next++) {
        const line = lines[next];
        if (outcome?.status === 'expired' && next >= outcome.doneLines) {
          unanswered(line, 'batch_expired', 'This request could not be executed before the completion window expired.');
          continue;
        }
        const requestId = `req_local_${++ids}`;
        try {
          const body = deps.answer(line.body);
          output.push(
            JSON.stringify({
              id: lineId(),
              custom_id: line.custom_id,
              response: { status_code: 200, request_id: requestId, body },
              error: null,
            })
          );
          batch.request_counts.completed++;
        } catch (err) {
          const e = err instanceof HttpError ? err : new HttpError(500, String(err), 'server_error');
          errorLines.push(
            JSON.stringify({
              id: lineId(),
              custom_id: line.custom_id,
              response: { status_code: e.status, request_id: requestId, body: { error: e.toJSON() } },
              error: null,
            })
          );
          batch.request_counts.failed++;
        }
      }
      if (next < lines.length && batch.status === 'in_progress') return later(batch, 0, slice);
      if (batch.status === 'cancelling') {
        for (; next < lines.length; next++) unanswered(lines[next], 'batch_cancelled', 'The batch was cancelled.');
      }
      finish(batch, output, errorLines, outcome);
    };
    slice();
  }

  function finish(batch: BatchObject, output: string[], errorLines: string[], outcome: BatchOutcome | undefined) {
    const jsonl = (lines: string[]) => Buffer.from(lines.map((l) => `${l}\n`).join(''));
    if (output.length > 0) {
      batch.output_file_id = storeFile(`${batch.id}_output.jsonl`, 'batch_output', jsonl(output)).id;
    }
    if (errorLines.length > 0) {
      batch.error_file_id = storeFile(`${batch.id}_error.jsonl`, 'batch_output', jsonl(errorLines)).id;
    }
    const at = nowS();
    if (batch.status === 'cancelling') {
      batch.status = 'cancelled';
      batch.cancelled_at = at;
    } else if (outcome?.status === 'expired') {
      batch.status = 'expired';
      batch.expired_at = at;
    } else {
      batch.status = 'completed';
      batch.finalizing_at = at;
      batch.completed_at = at;
    }
  }

  function cancel(batch: BatchObject): BatchObject {
    if (batch.status !== 'validating' && batch.status !== 'in_progress') {
      throw new HttpError(409, `Cannot cancel a batch with status '${batch.status}'.`);
    }
    batch.status = 'cancelling';
    batch.cancelling_at = nowS();
    // Run the batch's next step now: it sees 'cancelling', stops answering, files what it has and the lines left
    // (as 'batch_cancelled' errors), and ends the batch 'cancelled'.
    const next = pending.get(batch.id);
    if (next) {
      clearTimeout(next.timer);
      timers.delete(next.timer);
      pending.delete(batch.id);
      later(batch, 0, next.step);
    }
    return batch;
  }

  function list(query: URLSearchParams): object {
    const limitText = query.get('limit');
    const limit = limitText === null ? 20 : Number(limitText);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 100) {
      throw badParam('limit', `got ${JSON.stringify(limitText)}; expected an integer from 1 to 100`);
    }
    const after = query.get('after');
    let start = order.length - 1;
    if (after !== null) {
      const at = order.lastIndexOf(after);
      if (at === -1) throw badParam('after', `no batch ${JSON.stringify(after)}`);
      start = at - 1;
    }
    const data: BatchObject[] = [];
    for (let i = start; i >= 0 && data.length < limit; i--) data.push(batches.get(order[i])!);
    return {
      object: 'list',
      data,
      first_id: data[0]?.id ?? null,
      last_id: data.at(-1)?.id ?? null,
      has_more: start - data.length >= 0,
    };
  }

  return {
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
        sendJson(res, 200, await uploadFile(req));
      } else if ((m = /^\/v1\/files\/([^/]+)$/.exec(path))) {
        allow('GET', 'DELETE');
        const file = getFile(decodeURIComponent(m[1]));
        if (method === 'DELETE') files.delete(file.id);
        sendJson(res, 200, method === 'DELETE' ? { id: file.id, object: 'file', deleted: true } : fileJson(file));
      } else if ((m = /^\/v1\/files\/([^/]+)\/content$/.exec(path))) {
        allow('GET');
        const file = getFile(decodeURIComponent(m[1]));
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': file.content.length });
        res.end(file.content);
      } else if (path === '/v1/batches') {
        allow('GET', 'POST');
        sendJson(res, 200, method === 'POST' ? await createBatch(req) : list(query));
      } else if ((m = /^\/v1\/batches\/([^/]+)$/.exec(path))) {
        allow('GET');
        sendJson(res, 200, getBatch(decodeURIComponent(m[1])));
      } else if ((m = /^\/v1\/batches\/([^/]+)\/cancel$/.exec(path))) {
        allow('POST');
        sendJson(res, 200, cancel(getBatch(decodeURIComponent(m[1]))));
      } else {
        return false;
      }
      return true;
    },
    /** Stop the batches in progress (their timers would keep the process alive). */
    close(): void {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
    },
  };
}
