/**
 * Workflow histories as text to search: what a reader of the Temporal server sees, every byte field (payload data and
 * metadata included) shown as the bytes it holds, so a plaintext string anywhere in a history is found by `includes`.
 */
import type { Client } from '@temporalio/client';
import type { Payload, PayloadCodec } from '@temporalio/common';

type History = Awaited<ReturnType<ReturnType<Client['workflow']['getHandle']>['fetchHistory']>>;

const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;

/**
 * Every string and byte field of `value`, joined by newlines, bytes written as latin1 (one char per byte: ASCII stays
 * readable). A walk of the object rather than JSON.stringify: protobuf messages' own toJSON turns bytes into base64,
 * which would hide exactly the plaintext being looked for.
 */
export function bytesAsText(value: unknown, skipKeys: ReadonlySet<string> = new Set()): string {
  const parts: string[] = [];
  const seen = new Set<object>();
  const walk = (v: unknown, key: string) => {
    if (typeof v === 'string') parts.push(`${key}=${v}`);
    else if (isBytes(v)) parts.push(`${key}=${Buffer.from(v).toString('latin1')}`);
    else if (v && typeof v === 'object' && !seen.has(v)) {
      seen.add(v);
      for (const [k, child] of Object.entries(v)) if (!skipKeys.has(k)) walk(child, k);
    }
  };
  walk(value, '');
  return parts.join('\n');
}

/** Every execution the namespace holds (all runs, open or closed), with its history as fetched from the server. */
export async function allHistories(client: Client): Promise<{ workflowId: string; runId: string; history: History }[]> {
  const out: { workflowId: string; runId: string; history: History }[] = [];
  for await (const execution of client.workflow.list()) {
    const handle = client.workflow.getHandle(execution.workflowId, execution.runId);
    out.push({ workflowId: execution.workflowId, runId: execution.runId, history: await handle.fetchHistory() });
  }
  return out;
}

/** Every `Payload` object in a history (anything with a byte `data` field and a `metadata` map). */
export function payloadsIn(value: unknown, found: Payload[] = []): Payload[] {
  if (!value || typeof value !== 'object' || isBytes(value)) return found;
  const record = value as Record<string, unknown>;
  if (isBytes(record.data) && record.metadata && typeof record.metadata === 'object') {
    found.push(record as Payload);
    return found;
  }
  for (const child of Object.values(record)) payloadsIn(child, found);
  return found;
}

/** The history's payloads decoded by `codec`, as text: what a reader holding the keys sees. */
export async function decodedPayloadText(history: History, codec: PayloadCodec): Promise<string> {
  return bytesAsText(await codec.decode(payloadsIn(history)));
}
