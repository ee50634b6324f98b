/**
 * The chat-completions wire format as this server speaks it: the request checked as strictly as OpenAI checks it,
 * and the response in OpenAI's shape. Shared by the direct route and batch lines, which must agree byte for byte.
 */
import type { ChatMessage } from '../types';
import { badParam, HttpError } from './http';
import type { RequestSampling } from './types';

const ROLES = ['system', 'user', 'assistant', 'developer', 'tool'];

/** A rough token count (OpenAI's rule of thumb); good enough for usage figures and the `max_tokens` cut. */
const CHARS_PER_TOKEN = 4;
function approxTokens(text: string): number {
  return Math.ceil(text.length / CHARS_PER_TOKEN);
}

/** The prompt tokens reported in `usage` and counted by the rate limit. */
export function promptTokensOf(messages: readonly ChatMessage[]): number {
  return approxTokens(messages.map((m) => m.content).join('\n'));
}

export interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  temperature?: number;
  maxTokens?: number;
  seed?: number;
}

/** The subset of the chat-completions request this server understands, checked as strictly as OpenAI does. */
export function validateChatRequest(body: unknown): ChatRequest {
  const bad = badParam;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'the request body must be a JSON object');
  }
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '')
    throw bad('model', `got ${JSON.stringify(b.model)}; expected a model name`);
  if (b.stream === true)
    throw bad('stream', 'streaming is not supported by this server; expected stream to be false or absent');
  if (b.n !== undefined && b.n !== null && b.n !== 1) throw bad('n', `got ${JSON.stringify(b.n)}; expected 1`);
  if (!Array.isArray(b.messages) || b.messages.length === 0) {
    throw bad('messages', 'expected a non-empty array of messages');
  }
  const messages = b.messages.map((m: unknown, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (typeof m !== 'object' || m === null) throw bad(param, 'expected an object with role and content');
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.includes(role)) {
      throw bad(`${param}.role`, `got ${JSON.stringify(role)}; expected one of ${ROLES.join(', ')}`);
    }
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content) && content.every((p) => p?.type === 'text' && typeof p.text === 'string')) {
      text = content.map((p: { text: string }) => p.text).join('');
    } else throw bad(`${param}.content`, 'expected a string or an array of text parts');
    return { role: role as ChatMessage['role'], content: text };
  });
  const temperature = b.temperature ?? undefined;
  if (temperature !== undefined && !(typeof temperature === 'number' && temperature >= 0 && temperature <= 2)) {
    throw bad('temperature', `got ${JSON.stringify(temperature)}; expected a number from 0 to 2`);
  }
  const maxTokensField = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = b[maxTokensField] ?? undefined;
  if (maxTokens !== undefined && !(Number.isSafeInteger(maxTokens) && (maxTokens as number) >= 1)) {
    throw bad(maxTokensField, `got ${JSON.stringify(maxTokens)}; expected an integer >= 1`);
  }
  const seed = b.seed ?? undefined;
  if (seed !== undefined && !Number.isSafeInteger(seed)) {
    throw bad('seed', `got ${JSON.stringify(seed)}; expected an integer`);
  }
  return {
    model: b.model,
    messages,
    temperature: temperature as number | undefined,
    maxTokens: maxTokens as number | undefined,
    seed: seed as number | undefined,
  };
}

/** A request naming another model gets a 404 `model_not_found`, as OpenAI answers. */
export function checkModel(request: ChatRequest, model: string): void {
  if (request.model !== model) {
    throw new HttpError(
      404,
      `The model '${request.model}' does not exist`,
      'invalid_request_error',
      'model',
      'model_not_found'
    );
  }
}

export const samplingOf = (request: ChatRequest): RequestSampling => ({
  temperature: request.temperature,
  seed: request.seed,
});

/**
 * The response to a request whose answer is `content`, in OpenAI's shape, after the `max_tokens` cut; `id` is the
 * completion's id, `model` the server's.
 */
export function completionFor(request: ChatRequest, content: string, model: string, id: string): object {
  let finishReason = 'stop';
  if (request.maxTokens !== undefined && approxTokens(content) > request.maxTokens) {
    content = content.slice(0, request.maxTokens * CHARS_PER_TOKEN);
    finishReason = 'length';
  }
  const { promptTokens, completionTokens } = usageFor(request, content);
  return {
    id,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content, refusal: null },
        logprobs: null,
        finish_reason: finishReason,
      },
    ],
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    },
  };
}

/** The usage a response to `request` with the answer `content` reports (and the server bills), after the cut. */
export function usageFor(request: ChatRequest, content: string): { promptTokens: number; completionTokens: number } {
  const completion = approxTokens(content);
  return {
    promptTokens: promptTokensOf(request.messages),
    completionTokens: request.maxTokens === undefined ? completion : Math.min(completion, request.maxTokens),
  };
}
