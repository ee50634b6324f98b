/**
 * The Batch API's objects in OpenAI's shape, exactly as they are served, shared by the routes that serve them
 * (`service.ts`) and the runner that moves batches along (`runner.ts`).
 */

/** How the next batch ends, when a test wants it to end badly. */
export type BatchOutcome = { status: 'failed' } | { status: 'expired'; doneLines: number };

export interface StoredFile {
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

export type BatchStatus =
  'validating' | 'failed' | 'in_progress' | 'finalizing' | 'completed' | 'expired' | 'cancelling' | 'cancelled';

export interface BatchError {
  code: string;
  message: string;
  param: string | null;
  line: number | null;
}

/** A batch in OpenAI's shape, exactly as it is served. */
export interface BatchObject {
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

/** One request of a batch's input file, once validated. */
export interface InputLine {
  custom_id: string;
  body: unknown;
}

export const nowS = () => Math.floor(Date.now() / 1000);

/**
 * Numbers files, batches, result lines and their request ids from one sequence, so ids never collide across kinds
 * and a run's ids come out the same every time.
 */
export class IdSequence {
  private last = 0;

  next(): number {
    return ++this.last;
  }
}

/** A new batch, `validating`, over the input file `inputFileId`. */
export function newBatch(id: string, inputFileId: string, metadata: Record<string, string> | null): BatchObject {
  const created = nowS();
  return {
    id,
    object: 'batch',
    endpoint: '/v1/chat/completions',
    errors: null,
    input_file_id: inputFileId,
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
    metadata,
  };
}
