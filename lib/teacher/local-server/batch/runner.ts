/**
 * Moves a batch through its life once created, as OpenAI's documented states let a client see it: `validating` →
 * `in_progress` → `finalizing` → `completed`, or `failed` at validation, `expired` (the lines it did not get to go to
 * the error file with `error.code: 'batch_expired'`), or `cancelled` (it stops where it is; the lines left go to the
 * error file with `error.code: 'batch_cancelled'`). Each step runs on a timer, so polls see the states in between and
 * cancelling can run the pending step at once.
 */
import { HttpError } from '../http';
import type { FileStore } from './files';
import { parseBatchInput } from './input';
import { nowS, type BatchError, type BatchObject, type BatchOutcome, type IdSequence, type InputLine } from './model';

/** Lines answered between yields to the event loop, so polls and other requests are served during a big batch. */
const LINES_PER_SLICE = 500;

export interface BatchRunnerDeps {
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
  /** Where the output and error files go. */
  files: FileStore;
  ids: IdSequence;
}

export class BatchRunner {
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Each unfinished batch's next step, so that cancelling can run it at once rather than after a delay. */
  private readonly pending = new Map<string, { timer: NodeJS.Timeout; step: () => void }>();

  constructor(private readonly deps: BatchRunnerDeps) {}

  /** Validates a new batch's input a tick after it is created (the client sees `validating` first), then runs it. */
  start(batch: BatchObject, content: Buffer): void {
    this.later(batch, 0, () => this.validate(batch, content));
  }

  /** @throws HttpError 409 when the batch is past cancelling. */
  cancel(batch: BatchObject): BatchObject {
    if (batch.status !== 'validating' && batch.status !== 'in_progress') {
      throw new HttpError(409, `Cannot cancel a batch with status '${batch.status}'.`);
    }
    batch.status = 'cancelling';
    batch.cancelling_at = nowS();
    // Run the batch's next step now: it sees 'cancelling', stops answering, files what it has and the lines left
    // (as 'batch_cancelled' errors), and ends the batch 'cancelled'.
    const next = this.pending.get(batch.id);
    if (next) {
      clearTimeout(next.timer);
      this.timers.delete(next.timer);
      this.pending.delete(batch.id);
      this.later(batch, 0, next.step);
    }
    return batch;
  }

  /** Stop the batches in progress (their timers would keep the process alive). */
  close(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private later(batch: BatchObject, ms: number, step: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.pending.delete(batch.id);
      step();
    }, ms);
    this.timers.add(timer);
    this.pending.set(batch.id, { timer, step });
  }

  private validate(batch: BatchObject, content: Buffer): void {
    if (batch.status === 'cancelling') {
      batch.status = 'cancelled';
      batch.cancelled_at = nowS();
      return;
    }
    const outcome = this.deps.takeOutcome();
    if (outcome?.status === 'failed') {
      return fail(batch, [
        { code: 'injected_failure', message: 'injected fault: batch failed', param: null, line: null },
      ]);
    }
    const { lines, errors } = parseBatchInput(content, batch.endpoint, this.deps.maxLines);
    if (errors.length > 0) return fail(batch, errors.slice(0, 100));
    batch.status = 'in_progress';
    batch.in_progress_at = nowS();
    batch.request_counts.total = lines.length;
    this.later(batch, this.deps.batchDelayMs, () => this.run(batch, lines, outcome));
  }

  /** Answers the lines a slice at a time; then files the output and error files and ends the batch. */
  private run(batch: BatchObject, lines: InputLine[], outcome: BatchOutcome | undefined): void {
    const results = new BatchResults(batch, this.deps.ids);
    let next = 0;
    const slice = () => {
      const end = Math.min(lines.length, next + LINES_PER_SLICE);
      for (; next < end && batch.status === 'in_progress'; next++) {
        this.runLine(lines[next], next, outcome, results);
      }
      if (next < lines.length && batch.status === 'in_progress') return this.later(batch, 0, slice);
      if (batch.status === 'cancelling') {
        for (; next < lines.length; next++) {
          results.unanswered(lines[next], 'batch_cancelled', 'The batch was cancelled.');
        }
      }
      this.finish(batch, results, outcome);
    };
    slice();
  }

  private runLine(line: InputLine, index: number, outcome: BatchOutcome | undefined, results: BatchResults): void {
    if (outcome?.status === 'expired' && index >= outcome.doneLines) {
      results.unanswered(
        line,
        'batch_expired',
        'This request could not be executed before the completion window expired.'
      );
      return;
    }
    const requestId = `req_local_${this.deps.ids.next()}`;
    try {
      results.answered(line, requestId, this.deps.answer(line.body));
    } catch (err) {
      results.refused(
        line,
        requestId,
        err instanceof HttpError ? err : new HttpError(500, String(err), 'server_error')
      );
    }
  }

  private finish(batch: BatchObject, results: BatchResults, outcome: BatchOutcome | undefined): void {
    const jsonl = (lines: string[]) => Buffer.from(lines.map((l) => `${l}\n`).join(''));
    const { files } = this.deps;
    if (results.output.length > 0) {
      batch.output_file_id = files.store(`${batch.id}_output.jsonl`, 'batch_output', jsonl(results.output)).id;
    }
    if (results.errors.length > 0) {
      batch.error_file_id = files.store(`${batch.id}_error.jsonl`, 'batch_output', jsonl(results.errors)).id;
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
}

function fail(batch: BatchObject, errors: BatchError[]): void {
  batch.status = 'failed';
  batch.failed_at = nowS();
  batch.errors = { object: 'list', data: errors };
}

/** The lines of one batch's output and error files as they fill up, and its request counts. */
class BatchResults {
  readonly output: string[] = [];
  readonly errors: string[] = [];

  constructor(
    private readonly batch: BatchObject,
    private readonly ids: IdSequence
  ) {}

  answered(line: InputLine, requestId: string, body: object): void {
    this.output.push(
      JSON.stringify({
        id: this.lineId(),
        custom_id: line.custom_id,
        response: { status_code: 200, request_id: requestId, body },
        error: null,
      })
    );
    this.batch.request_counts.completed++;
  }

  /** A line the API refused, answered in the error file as OpenAI answers it (`error: null`, the refusal inside). */
  refused(line: InputLine, requestId: string, e: HttpError): void {
    this.errors.push(
      JSON.stringify({
        id: this.lineId(),
        custom_id: line.custom_id,
        response: { status_code: e.status, request_id: requestId, body: { error: e.toJSON() } },
        error: null,
      })
    );
    this.batch.request_counts.failed++;
  }

  /** A line the batch never ran (expired or cancelled). */
  unanswered(line: InputLine, code: string, message: string): void {
    this.errors.push(
      JSON.stringify({ id: this.lineId(), custom_id: line.custom_id, response: null, error: { code, message } })
    );
    this.batch.request_counts.failed++;
  }

  private lineId(): string {
    return `batch_req_local_${this.ids.next()}`;
  }
}
