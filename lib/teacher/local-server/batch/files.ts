/**
 * `/v1/files` for the Batch API: uploaded batch input, and the output and error files batches write. In memory, in
 * the server process: a test restarts its worker, not the server.
 */
import type { IncomingMessage } from 'node:http';

import { badParam, HttpError, readBody } from '../http';
import { parseMultipart } from '../multipart';
import { nowS, type IdSequence, type StoredFile } from './model';

/** OpenAI's limits: 200 MB a batch input file. */
export const MAX_FILE_BYTES = 200 * 1024 * 1024;

/** A file as it is served: everything but its content. */
export const fileJson = ({ content: _content, ...meta }: StoredFile) => meta;

export class FileStore {
  private readonly files = new Map<string, StoredFile>();

  constructor(private readonly ids: IdSequence) {}

  store(filename: string, purpose: string, content: Buffer): StoredFile {
    const file: StoredFile = {
      id: `file-local-${this.ids.next()}`,
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
    this.files.set(file.id, file);
    return file;
  }

  find(id: string): StoredFile | undefined {
    return this.files.get(id);
  }

  /** @throws HttpError 404 when there is no such file. */
  get(id: string): StoredFile {
    const file = this.files.get(id);
    if (!file) throw new HttpError(404, `No such File object: ${id}`, 'invalid_request_error', 'id');
    return file;
  }

  delete(id: string): void {
    this.files.delete(id);
  }

  /** Stores the file of a multipart upload (`POST /v1/files`) and answers its metadata. */
  async upload(req: IncomingMessage): Promise<object> {
    const form = parseMultipart(await readBody(req, MAX_FILE_BYTES), req.headers['content-type']);
    const purpose = form.get('purpose')?.data.toString('utf8');
    // Only batch input is stored: nothing else in Stepwise uploads files, and refusing the rest keeps this honest.
    if (purpose !== 'batch') {
      throw badParam('purpose', `got ${JSON.stringify(purpose ?? null)}; this server stores 'batch' files only`);
    }
    const file = form.get('file');
    if (file?.filename === undefined) throw badParam('file', 'expected a file part with a filename');
    // Copy out of the request body so the rest of it can be collected.
    return fileJson(this.store(file.filename, purpose, Buffer.from(file.data)));
  }
}
