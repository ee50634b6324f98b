/**
 * The provider side of batch mode: OpenAI's Batch API (`/v1/files` + `/v1/batches`), through the official SDK. A
 * shard's calls go up as one JSONL file; the provider answers within its completion window (hours), usually at a
 * lower price. Submission is idempotent: every batch carries the shard key and round in its metadata, and a
 * submission first looks for a live batch with the same ones, so a worker that died between creating a batch and
 * reporting it never makes the provider run (and bill) the same calls twice. Creates are never retried blindly:
 * a create whose answer was lost (a timeout, a dropped connection, a 5xx) may have created the batch, so the SDK's
 * own retries are off for it, and the lost answer is recovered by listing batches for the shard's metadata.
 */
import OpenAI, { APIError, toFile } from 'openai';

import type { Usage } from './budget';
import type { ChatMessage } from './types';

export interface BatchEndpoint {
  baseURL: string;
  /** The key, looked up by the caller. Default `'unused'`: local servers ignore it, but the SDK insists on one. */
  apiKey?: string;
  /** Per HTTP call. Uploads of large files take a while. Default 10 minutes. */
  timeoutMs?: number;
}

/** One call in a batch: `customId` joins the answer back to the shard's (example, sample). */
export interface BatchCall {
  customId: string;
  messages: ChatMessage[];
  seed?: number;
}

export interface BatchStatus {
  id: string;
  status: string;
  /** No further change will happen (completed, failed, expired or cancelled). */
  terminal: boolean;
  counts: { total: number; completed: number; failed: number };
  outputFileId?: string;
  errorFileId?: string;
  /** The provider's reasons when the whole batch failed (e.g. a malformed input file). */
  errors?: string[];
}

/** One answer from a batch's output or error file. */
export interface BatchAnswer {
  customId: string;
  completion?: string;
  finishReason?: string;
  usage?: Usage;
  /** Why there is no usable completion. */
  error?: string;
}

const TERMINAL = new Set(['completed', 'failed', 'expired', 'cancelled']);
/** A batch in one of these states is still going to produce answers, or already has. */
const LIVE = new Set(['validating', 'in_progress', 'finalizing', 'completed']);

/** How far back `findBatch` looks: older batches cannot be live (the longest completion window is 24 h). */
const FIND_WINDOW_S = 3 * 24 * 3600;

/** An SDK client for the endpoint's Batch API. */
export function batchClient(endpoint: BatchEndpoint): OpenAI {
  return new OpenAI({
    baseURL: endpoint.baseURL,
    apiKey: endpoint.apiKey ?? 'unused',
    timeout: endpoint.timeoutMs ?? 600_000,
    // Polling, listing and downloads are idempotent, so the SDK's own retries are safe for them; the two creates
    // (file and batch) turn them off per request (see submitBatch).
    maxRetries: 4,
  });
}

/** Per-request options for a create: no SDK retry, since a retry after a lost answer would create a second one. */
const CREATE_ONCE = { maxRetries: 0 } as const;

/**
 * Whether a failed create may nevertheless have happened at the provider: anything but a refusal the API answered
 * (a 4xx other than 408/409/429 is a validation or auth error: nothing was created).
 */
function mayHaveCreated(err: unknown): boolean {
  if (!(err instanceof APIError) || err.status === undefined) return true;
  const s = err.status;
  return s === 408 || s === 409 || s === 429 || s >= 500;
}

/** The live batch submitted for this shard and round, if a previous attempt got as far as creating it. */
export async function findBatch(client: OpenAI, shardKey: string, round: number): Promise<string | undefined> {
  const since = Date.now() / 1000 - FIND_WINDOW_S;
  for await (const batch of client.batches.list({ limit: 100 })) {
    if (batch.created_at < since) break;
    const meta = batch.metadata ?? {};
    if (meta.stepwise_shard === shardKey && meta.stepwise_round === String(round) && LIVE.has(batch.status)) {
      return batch.id;
    }
  }
  return undefined;
}

/** Upload the calls and create the batch; returns its id. */
export async function submitBatch(
  client: OpenAI,
  opts: {
    model: string;
    temperature: number;
    maxTokens: number;
    calls: readonly BatchCall[];
    shardKey: string;
    round: number;
  }
): Promise<string> {
  const lines = opts.calls.map((c) =>
    JSON.stringify({
      custom_id: c.customId,
      method: 'POST',
      url: '/v1/chat/completions',
      body: {
        model: opts.model,
        messages: c.messages,
        temperature: opts.temperature,
        max_tokens: opts.maxTokens,
        ...(c.seed === undefined ? {} : { seed: c.seed }),
      },
    })
  );
  // A lost answer to the upload leaves an orphan file at most (files are not billed as calls); the caller's retry
  // uploads again. Still no blind SDK retry: each try would leave one more orphan.
  const file = await client.files.create(
    {
      file: await toFile(Buffer.from(lines.join('\n') + '\n', 'utf8'), `stepwise-${opts.shardKey}-${opts.round}.jsonl`),
      purpose: 'batch',
    },
    CREATE_ONCE
  );
  try {
    const batch = await client.batches.create(
      {
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
        metadata: { stepwise_shard: opts.shardKey, stepwise_round: String(opts.round) },
      },
      CREATE_ONCE
    );
    return batch.id;
  } catch (err) {
    if (!mayHaveCreated(err)) throw err;
    // The provider may have created (and will bill) the batch though its answer never arrived: find it by its
    // metadata. If it is not there (yet), the error stands; the caller's retry looks again before creating.
    const created = await findBatch(client, opts.shardKey, opts.round).catch(() => undefined);
    if (created !== undefined) return created;
    throw err;
  }
}

export async function batchStatus(client: OpenAI, batchId: string): Promise<BatchStatus> {
  const b = await client.batches.retrieve(batchId);
  return {
    id: b.id,
    status: b.status,
    terminal: TERMINAL.has(b.status),
    counts: {
      total: b.request_counts?.total ?? 0,
      completed: b.request_counts?.completed ?? 0,
      failed: b.request_counts?.failed ?? 0,
    },
    ...(b.output_file_id ? { outputFileId: b.output_file_id } : {}),
    ...(b.error_file_id ? { errorFileId: b.error_file_id } : {}),
    ...(b.errors?.data?.length ? { errors: b.errors.data.map((e) => `${e.code ?? 'error'}: ${e.message ?? ''}`) } : {}),
  };
}

/** Every answer in a finished batch's output and error files. */
export async function batchAnswers(client: OpenAI, status: BatchStatus): Promise<BatchAnswer[]> {
  const answers: BatchAnswer[] = [];
  for (const fileId of [status.outputFileId, status.errorFileId]) {
    if (!fileId) continue;
    const text = await (await client.files.content(fileId)).text();
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      answers.push(parseAnswerLine(line));
    }
  }
  return answers;
}

interface OutputLine {
  custom_id?: string;
  response?: { status_code?: number; body?: OpenAI.Chat.Completions.ChatCompletion & { error?: { message?: string } } };
  error?: { code?: string; message?: string } | null;
}

function parseAnswerLine(line: string): BatchAnswer {
  let parsed: OutputLine;
  try {
    parsed = JSON.parse(line) as OutputLine;
  } catch {
    return { customId: '', error: `malformed batch output line: ${line.slice(0, 120)}` };
  }
  const customId = parsed.custom_id ?? '';
  if (parsed.error) {
    return { customId, error: `batch: ${parsed.error.code ?? 'error'}: ${parsed.error.message ?? ''}`.trim() };
  }
  const status = parsed.response?.status_code;
  const body = parsed.response?.body;
  if (status !== 200 || !body) {
    return { customId, error: `batch: HTTP ${status ?? '?'}: ${body?.error?.message ?? 'no response body'}` };
  }
  const choice = body.choices?.[0];
  const usage = body.usage
    ? { promptTokens: body.usage.prompt_tokens ?? 0, completionTokens: body.usage.completion_tokens ?? 0 }
    : undefined;
  const text = choice?.message?.content ?? '';
  const finishReason = choice?.finish_reason ?? undefined;
  if (text.trim() === '') {
    return {
      customId,
      ...(usage ? { usage } : {}),
      error: `empty completion (finish_reason ${JSON.stringify(finishReason ?? null)})`,
    };
  }
  return { customId, completion: text, ...(finishReason ? { finishReason } : {}), ...(usage ? { usage } : {}) };
}
