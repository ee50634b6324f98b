import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import OpenAI, { toFile } from 'openai';

import { generateDemoTask, solveDemo } from '../lib/data/demo-task';
import { parseCompletion } from '../lib/data/parse';
import { InputError } from '../lib/errors';
import {
  ArrivalLog,
  scriptedDemoTeacher,
  SlidingWindowLimiter,
  startLocalTeacherServer,
  UNKNOWN_ANSWER,
  type RequestSampling,
} from '../lib/teacher/local-server';
import { buildPrompt } from '../lib/teacher/templates';
import { promptHash, type ChatMessage } from '../lib/teacher/types';

const examples = generateDemoTask({ n: 100, seed: 21 });

async function post(url: string, body: unknown): Promise<{ status: number; headers: Headers; json: any }> {
  const res = await fetch(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: await res.json() };
}

test('the server answers a chat completion in the OpenAI shape and counts it by prompt hash', async (t) => {
  const server = await startLocalTeacherServer({ model: 'm' });
  t.teardown(() => server.close());
  const messages = buildPrompt('demo', examples[0].input);
  const { status, json } = await post(server.url, { model: 'm', messages, temperature: 0, max_tokens: 256 });
  t.is(status, 200);
  t.is(json.object, 'chat.completion');
  t.is(json.model, 'm');
  t.is(json.choices[0].message.role, 'assistant');
  t.is(json.choices[0].finish_reason, 'stop');
  t.true(
    json.usage.prompt_tokens > 0 && json.usage.total_tokens === json.usage.prompt_tokens + json.usage.completion_tokens
  );
  const parsed = parseCompletion('demo', json.choices[0].message.content);
  t.true(parsed.ok);
  t.deepEqual(server.stats().byPromptHash, {
    [promptHash({ model: 'm', messages, temperature: 0, maxTokens: 256 })]: 1,
  });

  const models = (await (await fetch(`${server.url}/models`)).json()) as { data: { id: string }[] };
  t.deepEqual(
    models.data.map((m) => m.id),
    ['m']
  );
});

test('malformed requests get a 400 with an OpenAI-style error naming the parameter', async (t) => {
  const server = await startLocalTeacherServer({ model: 'm' });
  t.teardown(() => server.close());
  const user = [{ role: 'user', content: 'Q: hi\nA:' }];
  const cases: [unknown, string | null][] = [
    ['{not json', null],
    [{ model: 'm' }, 'messages'],
    [{ model: 'm', messages: [] }, 'messages'],
    [{ model: 'm', messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
    [{ model: 'm', messages: [{ role: 'user', content: 7 }] }, 'messages[0].content'],
    [{ model: 'm', messages: user, stream: true }, 'stream'],
    [{ model: 'm', messages: user, temperature: 9 }, 'temperature'],
    [{ model: 'm', messages: user, max_tokens: 0 }, 'max_tokens'],
    [{ messages: user }, 'model'],
  ];
  for (const [body, param] of cases) {
    const { status, json } = await post(server.url, body);
    t.is(status, 400, JSON.stringify(body));
    t.is(json.error.type, 'invalid_request_error');
    t.is(json.error.param, param);
    t.is(typeof json.error.message, 'string');
  }
  const unknownModel = await post(server.url, { model: 'other', messages: user });
  t.is(unknownModel.status, 404);
  t.is(unknownModel.json.error.code, 'model_not_found');
  t.is((await fetch(`${server.url}/chat/completions`)).status, 405);
  t.is((await fetch(`${server.url}/embeddings`, { method: 'POST', body: '{}' })).status, 404);
  // None of them reached the teacher.
  t.deepEqual(server.stats().byPromptHash, {});
  // Counted: every POST to chat completions (the unknown model too), not the other routes.
  t.is(server.stats().requests, cases.length + 1);
});

test('an injected status carries retry-after and is consumed once per request', async (t) => {
  const server = await startLocalTeacherServer({ faults: { status: { code: 429, count: 2, retryAfterS: 7 } } });
  t.teardown(() => server.close());
  const body = { model: 'stepwise-scripted', messages: buildPrompt('demo', examples[1].input) };
  const first = await post(server.url, body);
  t.is(first.status, 429);
  t.is(first.headers.get('retry-after'), '7');
  t.is((await post(server.url, body)).status, 429);
  t.is((await post(server.url, body)).status, 200);
});

test('max_tokens cuts a long answer and reports finish_reason length', async (t) => {
  const server = await startLocalTeacherServer({ model: 'm', answer: () => 'word '.repeat(100) });
  t.teardown(() => server.close());
  const { json } = await post(server.url, { model: 'm', messages: [{ role: 'user', content: 'x' }], max_tokens: 5 });
  t.is(json.choices[0].finish_reason, 'length');
  t.true(json.choices[0].message.content.length <= 20);
});

test('the scripted teacher answers the last question of the prompt and is deterministic', (t) => {
  const teacher = scriptedDemoTeacher({ errorRate: 0 });
  for (const ex of examples.slice(0, 20)) {
    const solved = solveDemo(ex.input)!;
    t.is(teacher(buildPrompt('demo', ex.input)), `${solved.rationale} So the answer is ${solved.label}.`);
  }
  const again = scriptedDemoTeacher({ errorRate: 0.3, seed: 9 });
  const twice = scriptedDemoTeacher({ errorRate: 0.3, seed: 9 });
  t.deepEqual(
    examples.map((ex) => again(buildPrompt('demo', ex.input))),
    examples.map((ex) => twice(buildPrompt('demo', ex.input)))
  );
});

test('a wrong scripted answer gives the other label with a rationale that supports it', (t) => {
  const teacher = scriptedDemoTeacher({ errorRate: 1 });
  for (const ex of examples) {
    const parsed = parseCompletion('demo', teacher(buildPrompt('demo', ex.input)));
    if (!parsed.ok) return t.fail(ex.input);
    t.not(parsed.label, ex.label);
    t.not(parsed.rationale, solveDemo(ex.input)!.rationale);
    const counts = /That is (\d) positive and (\d) negative\./.exec(parsed.rationale)!;
    t.is((parsed.rationale.match(/ is positive/g) ?? []).length, Number(counts[1]));
    t.is(parsed.label, Number(counts[1]) > Number(counts[2]) ? 'positive' : 'negative');
  }
});

test('a question that is not a demo review gets an answer no parser accepts', (t) => {
  const teacher = scriptedDemoTeacher();
  const messages: ChatMessage[] = buildPrompt('cqa', 'Where do fish live?\nAnswer Choices:\n(a) sea\n(b) sky');
  const answer = teacher(messages);
  t.is(answer, UNKNOWN_ANSWER);
  t.false(parseCompletion('demo', answer).ok);
  t.false(parseCompletion('cqa', answer).ok);
  t.is(teacher([{ role: 'system', content: 'no user message' }]), UNKNOWN_ANSWER);
});

test('bad scripted teacher settings are InputErrors naming the field', (t) => {
  t.throws(() => scriptedDemoTeacher({ errorRate: 1.5 }), { instanceOf: InputError, message: /errorRate is 1.5/ });
  t.throws(() => scriptedDemoTeacher({ seed: 0.5 }), { instanceOf: InputError, message: /seed is 0.5/ });
});

// ---- The teacher test double: body faults, rate limits, windows, holding, sampling and the Batch API. ----

const MODEL = 'm';
const sdk = (server: { url: string }, maxRetries = 0) =>
  new OpenAI({ baseURL: server.url, apiKey: 'local', maxRetries });
const demoMessages = (i: number) => buildPrompt('demo', examples[i].input);

/** Polls `condition` every few ms; fails the test rather than hanging when it never holds. */
async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(5);
  }
}

test('truncated and malformed 200 bodies are errors to an SDK client without retries and are not answers', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL, faults: { truncatedBody: 1, malformedBody: 1 } });
  t.teardown(() => server.close());
  const client = sdk(server);
  const ask = () => client.chat.completions.create({ model: MODEL, messages: demoMessages(0) });
  // The body ends before its content-length: fetch reports the cut connection.
  await t.throwsAsync(ask, { message: /terminated/ });
  // A well-framed body that is not JSON.
  await t.throwsAsync(ask, { instanceOf: SyntaxError });
  const ok = await ask();
  t.true(parseCompletion('demo', ok.choices[0].message.content ?? '').ok);
  const stats = server.stats();
  t.is(stats.requests, 3);
  t.is(stats.answered, 1);
  const hash = promptHash({ model: MODEL, messages: demoMessages(0) });
  t.deepEqual(stats.byPromptHash, { [hash]: 3 });
  t.deepEqual(stats.answeredByPromptHash, { [hash]: 1 });
  t.deepEqual(server.countFor(hash), { requests: 3, answered: 1 });
  t.is(stats.repeatedAnswers, 0);
});

test('an injected status can carry retry-after-ms, which the SDK honours, and retry-after rounded up', async (t) => {
  const server = await startLocalTeacherServer({
    model: MODEL,
    faults: { status: { code: 429, count: 1, retryAfterMs: 1500 } },
  });
  t.teardown(() => server.close());
  const first = await post(server.url, { model: MODEL, messages: demoMessages(1) });
  t.is(first.status, 429);
  t.is(first.headers.get('retry-after-ms'), '1500');
  t.is(first.headers.get('retry-after'), '2');

  // The SDK reads retry-after-ms first; with retries allowed it waits and tries again.
  server.setFaults({ status: { code: 503, count: 1, retryAfterMs: 20 } });
  const answer = await sdk(server, 1).chat.completions.create({ model: MODEL, messages: demoMessages(1) });
  t.is(answer.object, 'chat.completion');
  t.like(server.counters(), { requests: 3, answered: 1 });
});

test('the server enforces a sliding request limit with 429s that say exactly when a request fits', async (t) => {
  let now = 0;
  const server = await startLocalTeacherServer({
    model: MODEL,
    rateLimit: { requests: 3, windowMs: 600 },
    clock: () => now,
  });
  t.teardown(() => server.close());
  const body = { model: MODEL, messages: demoMessages(2) };
  const at = async (time: number) => {
    now = time;
    return post(server.url, body);
  };
  t.is((await at(0)).status, 200);
  t.is((await at(200)).status, 200);
  t.is((await at(200)).status, 200);
  const refused = await at(250);
  t.is(refused.status, 429);
  t.is(refused.json.error.type, 'requests');
  t.is(refused.json.error.code, 'rate_limit_exceeded');
  // It fits when the first request leaves the window (at 600), not when a fixed bucket resets.
  t.is(refused.headers.get('retry-after-ms'), '350');
  t.is(refused.headers.get('retry-after'), '1');
  t.is((await at(599)).headers.get('retry-after-ms'), '1');
  // Refused requests do not count against the window: at 600 exactly one more fits.
  t.is((await at(600)).status, 200);
  const next = await at(601);
  t.is(next.status, 429);
  t.is(next.headers.get('retry-after-ms'), '199');
  t.like(server.counters(), { rateLimited: 3, accepted: 4, answered: 4 });
  t.is(server.maxInWindow(600, 'requests'), 3);
  t.is(server.maxInWindow(601, 'requests'), 4);
  t.is(server.maxInWindow(100, 'requests'), 2);
});

test('an SDK client that honours the 429s gets every answer without exceeding the limit in any window', async (t) => {
  const windowMs = 500;
  const server = await startLocalTeacherServer({ model: MODEL, rateLimit: { requests: 3, windowMs } });
  t.teardown(() => server.close());
  const client = sdk(server, 10);
  const answers = await Promise.all(
    examples
      .slice(0, 7)
      .map((ex) => client.chat.completions.create({ model: MODEL, messages: buildPrompt('demo', ex.input) }))
  );
  t.is(answers.length, 7);
  t.true(server.counters().rateLimited > 0);
  t.is(server.counters().answered, 7);
  t.true(server.maxInWindow(windowMs, 'requests') <= 3);
  // A window longer than the whole run sees every accepted request.
  t.is(server.maxInWindow(3_600_000, 'requests'), 7);
});

test('the token limit counts prompt tokens plus max_tokens, and a request over it alone is refused for good', async (t) => {
  let now = 0;
  const server = await startLocalTeacherServer({
    model: MODEL,
    answer: () => 'ok',
    rateLimit: { tokens: 50, windowMs: 1000 },
    clock: () => now,
  });
  t.teardown(() => server.close());
  const at = async (time: number, content: string, maxTokens: number) => {
    now = time;
    return post(server.url, { model: MODEL, messages: [{ role: 'user', content }], max_tokens: maxTokens });
  };
  // 40 characters: 10 prompt tokens, +10 of max_tokens = 20 tokens a request.
  const long = 'x'.repeat(40);
  t.is((await at(0, long, 10)).status, 200);
  t.is((await at(100, long, 10)).status, 200);
  const refused = await at(200, long, 10);
  t.is(refused.status, 429);
  t.is(refused.json.error.type, 'tokens');
  t.is(refused.json.error.code, 'rate_limit_exceeded');
  t.is(refused.headers.get('retry-after-ms'), '800');
  t.is(refused.headers.get('retry-after'), '1');
  // 2 tokens still fit beside the 40 in the window.
  t.is((await at(200, 'xxxx', 1)).status, 200);
  const tooLarge = await at(300, long, 100);
  t.is(tooLarge.status, 429);
  t.regex(tooLarge.json.error.message, /Request too large/);
  t.is(tooLarge.headers.get('retry-after'), null);
  t.is(server.maxInWindow(1000, 'tokens'), 42);
  t.is(server.counters().rateLimited, 2);
});

test('maxInWindow and the limiter share one window rule: arrivals less than the window apart', (t) => {
  const log = new ArrivalLog();
  const times = [0, 10, 20, 100, 105, 110, 115, 300];
  for (const [i, time] of times.entries()) log.add(time, i + 1);
  t.is(log.maxInWindow(20, 'requests'), 4); // 100, 105, 110, 115
  t.is(log.maxInWindow(21, 'requests'), 4);
  t.is(log.maxInWindow(10, 'requests'), 2);
  t.is(log.maxInWindow(1, 'requests'), 1);
  t.is(log.maxInWindow(20, 'tokens'), 4 + 5 + 6 + 7);
  t.is(log.maxInWindow(1000, 'requests'), times.length);

  const limiter = new SlidingWindowLimiter(100, 2, undefined);
  limiter.add(0, 1);
  limiter.add(30, 1);
  t.is(limiter.check(50, 1).waitMs, 50); // the one at 0 leaves at 100
  t.is(limiter.check(100, 1).waitMs, 0);
  const tokens = new SlidingWindowLimiter(100, undefined, 10);
  tokens.add(0, 4);
  tokens.add(20, 4);
  tokens.add(40, 2);
  t.is(tokens.check(50, 5).waitMs, 70); // needs 5: the first two must leave, the second at 120
  t.is(tokens.check(50, 11).waitMs, Infinity);

  // 100k arrivals: a few MB at most, and one pass to count.
  const big = new ArrivalLog();
  for (let i = 0; i < 100_000; i++) big.add(i, 1);
  t.is(big.length, 100_000);
  t.is(big.maxInWindow(1000, 'requests'), 1000);
});

test('holdAfter lets exactly that many answers through, holds the rest, and release lets them go on', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL, faults: { holdAfter: 2 } });
  t.teardown(() => server.close());
  const client = sdk(server);
  const calls = [0, 1, 2, 3, 4].map((i) => client.chat.completions.create({ model: MODEL, messages: demoMessages(i) }));
  await until(() => server.counters().held === 3, 'three are held');
  await sleep(50);
  t.is(server.counters().answered, 2);
  t.is(server.counters().requests, 5);
  t.is(Object.keys(server.stats().byPromptHash).length, 5);
  server.release();
  t.is((await Promise.all(calls)).length, 5);
  t.like(server.counters(), { answered: 5, held: 0, requests: 5 });
});

test('a request that passed holdAfter but was not answered frees its place for the next one', async (t) => {
  const server = await startLocalTeacherServer({
    model: MODEL,
    faults: { holdAfter: 1, status: { code: 500, count: 1 } },
  });
  t.teardown(() => server.close());
  t.is((await post(server.url, { model: MODEL, messages: demoMessages(0) })).status, 500);
  t.is((await post(server.url, { model: MODEL, messages: demoMessages(1) })).status, 200);
  const third = post(server.url, { model: MODEL, messages: demoMessages(2) });
  await until(() => server.counters().held === 1, 'the third is held');
  server.release();
  t.is((await third).status, 200);
  t.is(server.counters().answered, 2);
});

test('holdAfter after hold gives its places to the requests already held, oldest first', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => server.close());
  server.hold();
  const first = post(server.url, { model: MODEL, messages: demoMessages(0) });
  await until(() => server.counters().held === 1, 'the first is held');
  const second = post(server.url, { model: MODEL, messages: demoMessages(1) });
  await until(() => server.counters().held === 2, 'both are held');
  server.holdAfter(1);
  t.is((await first).status, 200);
  t.like(server.counters(), { answered: 1, held: 1 });
  server.release();
  t.is((await second).status, 200);
});

test('a held request whose client goes away counts as a request but never as an answer', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => server.close());
  server.hold();
  const abort = new AbortController();
  const gone = sdk(server)
    .chat.completions.create({ model: MODEL, messages: demoMessages(3) }, { signal: abort.signal })
    .catch((err: unknown) => err);
  await until(() => server.counters().held === 1, 'the request is held');
  abort.abort();
  t.truthy(await gone);
  await until(() => server.counters().held === 0 && server.counters().inFlight === 0, 'the server sees it go');
  server.release();
  const hash = promptHash({ model: MODEL, messages: demoMessages(3) });
  t.deepEqual(server.countFor(hash), { requests: 1, answered: 0 });
  t.deepEqual(server.stats().answeredByPromptHash, {});
  // The retry a resumed worker would make is the first answer for that prompt: nothing was paid twice.
  t.is((await post(server.url, { model: MODEL, messages: demoMessages(3) })).status, 200);
  t.deepEqual(server.countFor(hash), { requests: 2, answered: 1 });
  t.is(server.counters().repeatedAnswers, 0);
});

test('the seed is part of the prompt hash and reaches the answer function; a non-integer seed is a 400', async (t) => {
  const seen: RequestSampling[] = [];
  const server = await startLocalTeacherServer({
    model: MODEL,
    answer: (_messages, sampling) => {
      seen.push(sampling);
      return 'ok';
    },
  });
  t.teardown(() => server.close());
  const messages = demoMessages(4);
  await sdk(server).chat.completions.create({ model: MODEL, messages, temperature: 0.7, seed: 3 });
  await sdk(server).chat.completions.create({ model: MODEL, messages, temperature: 0.7 });
  t.deepEqual(seen, [
    { temperature: 0.7, seed: 3 },
    { temperature: 0.7, seed: undefined },
  ]);
  const withSeed = promptHash({ model: MODEL, messages, temperature: 0.7, seed: 3 });
  const without = promptHash({ model: MODEL, messages, temperature: 0.7 });
  t.not(withSeed, without);
  t.deepEqual(server.stats().byPromptHash, { [withSeed]: 1, [without]: 1 });
  for (const seed of [1.5, '3']) {
    const { status, json } = await post(server.url, { model: MODEL, messages, seed });
    t.is(status, 400);
    t.is(json.error.param, 'seed');
  }
});

test('at temperature > 0 seeds give independent draws at the error rate; at temperature 0 nothing changes', (t) => {
  const teacher = scriptedDemoTeacher({ errorRate: 0.3, seed: 5 });
  const prompts = examples.map((ex) => buildPrompt('demo', ex.input));
  const correct = (answer: string, i: number) => {
    const parsed = parseCompletion('demo', answer);
    return parsed.ok && parsed.label === examples[i].label;
  };
  // Temperature 0: the request seed is ignored and answers are exactly those of a call without sampling.
  const greedy = prompts.map((p) => teacher(p));
  for (const seed of [0, 1, 2])
    t.deepEqual(
      prompts.map((p) => teacher(p, { temperature: 0, seed })),
      greedy
    );

  const k = 5;
  const samples = Array.from({ length: k }, (_, seed) => prompts.map((p) => teacher(p, { temperature: 0.8, seed })));
  // The same seed is the same sample again.
  t.deepEqual(
    prompts.map((p) => teacher(p, { temperature: 0.8, seed: 2 })),
    samples[2]
  );
  for (const sample of samples) {
    const accuracy = sample.filter(correct).length / examples.length;
    t.true(accuracy > 0.55 && accuracy < 0.85, `each sample is wrong about 30% of the time; accuracy ${accuracy}`);
  }
  // Independent draws: samples disagree, so a majority vote is more accurate than any one sample on average.
  const votes = examples.map((_, i) => samples.filter((s) => correct(s[i], i)).length > k / 2);
  const meanAccuracy = samples.flat().filter((a, j) => correct(a, j % examples.length)).length / (k * examples.length);
  t.true(votes.filter(Boolean).length / examples.length > meanAccuracy + 0.05);
  t.true(examples.some((_, i) => new Set(samples.map((s) => s[i])).size > 1));
});

/** The JSONL input of a batch: one chat request per line. */
function batchInput(lines: { custom_id: string; body: unknown }[]): string {
  return lines.map((l) => JSON.stringify({ ...l, method: 'POST', url: '/v1/chat/completions' })).join('\n') + '\n';
}

async function uploadBatch(client: OpenAI, jsonl: string) {
  return client.files.create({ file: await toFile(Buffer.from(jsonl), 'input.jsonl'), purpose: 'batch' });
}

async function settle(client: OpenAI, id: string) {
  for (;;) {
    const batch = await client.batches.retrieve(id);
    if (!['validating', 'in_progress', 'finalizing', 'cancelling'].includes(batch.status)) return batch;
    await sleep(5);
  }
}

const jsonLines = (text: string) =>
  text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));

test('the SDK runs a batch end to end: upload, create, poll, download output and error files', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL, errorRate: 0, batchDelayMs: 30 });
  t.teardown(() => server.close());
  const client = sdk(server);
  const good = [5, 6, 7].map((i) => ({
    custom_id: examples[i].id,
    body: { model: MODEL, messages: demoMessages(i), temperature: 0, max_tokens: 256 },
  }));
  const bad = { custom_id: 'bad', body: { model: MODEL, messages: demoMessages(8), temperature: 7 } };
  const jsonl = batchInput([...good, bad]);
  const file = await uploadBatch(client, jsonl);
  t.like(file, { object: 'file', purpose: 'batch', filename: 'input.jsonl', bytes: Buffer.byteLength(jsonl) });
  t.like(await client.files.retrieve(file.id), { id: file.id, bytes: file.bytes });
  t.is(await (await client.files.content(file.id)).text(), jsonl);

  const created = await client.batches.create({
    input_file_id: file.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
    metadata: { shard: '3' },
  });
  t.like(created, { object: 'batch', status: 'validating', input_file_id: file.id, metadata: { shard: '3' } });
  // A restarted worker has a new client; the batch lives in the server.
  const batch = await settle(sdk(server), created.id);
  t.is(batch.status, 'completed');
  t.deepEqual(batch.request_counts, { total: 4, completed: 3, failed: 1 });
  t.true(batch.in_progress_at! >= batch.created_at && batch.completed_at! >= batch.in_progress_at!);

  const output = jsonLines(await (await client.files.content(batch.output_file_id!)).text());
  t.deepEqual(
    output.map((l) => l.custom_id),
    good.map((g) => g.custom_id)
  );
  for (const [j, line] of output.entries()) {
    t.is(line.error, null);
    t.is(line.response.status_code, 200);
    t.is(line.response.body.object, 'chat.completion');
    const solved = solveDemo(examples[5 + j].input)!;
    t.is(line.response.body.choices[0].message.content, `${solved.rationale} So the answer is ${solved.label}.`);
  }
  const errors = jsonLines(await (await client.files.content(batch.error_file_id!)).text());
  t.is(errors.length, 1);
  t.like(errors[0], { custom_id: 'bad', error: null, response: { status_code: 400 } });
  t.is(errors[0].response.body.error.param, 'temperature');

  // Counted like direct calls: every line is a request, the good ones are answers, per prompt hash.
  const stats = server.stats();
  t.is(stats.requests, 4);
  t.is(stats.answered, 3);
  t.deepEqual(
    stats.answeredByPromptHash,
    Object.fromEntries(
      good.map((g, j) => [
        promptHash({ model: MODEL, messages: demoMessages(5 + j), temperature: 0, maxTokens: 256 }),
        1,
      ])
    )
  );
});

test('batches are listed newest first in pages the SDK can follow', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => server.close());
  const client = sdk(server);
  const file = await uploadBatch(
    client,
    batchInput([{ custom_id: 'a', body: { model: MODEL, messages: demoMessages(0) } }])
  );
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    ids.push(
      (
        await client.batches.create({
          input_file_id: file.id,
          endpoint: '/v1/chat/completions',
          completion_window: '24h',
        })
      ).id
    );
  }
  const page = await client.batches.list({ limit: 2 });
  t.deepEqual(
    page.data.map((b) => b.id),
    [ids[4], ids[3]]
  );
  t.true(page.has_more);
  const all: string[] = [];
  for await (const batch of client.batches.list({ limit: 2 })) all.push(batch.id);
  t.deepEqual(all, [...ids].reverse());
  const raw = (await (await fetch(`${server.url}/batches?limit=3&after=${ids[3]}`)).json()) as any;
  t.like(raw, { object: 'list', first_id: ids[2], last_id: ids[0], has_more: false });
  t.is((await fetch(`${server.url}/batches?limit=0`)).status, 400);
});

test('a batch can be made to fail or expire, and one can be cancelled, each as OpenAI reports it', async (t) => {
  const server = await startLocalTeacherServer({
    model: MODEL,
    faults: { failBatches: 1, expireBatches: { count: 1, doneLines: 2 } },
  });
  t.teardown(() => server.close());
  const client = sdk(server);
  const lines = [0, 1, 2, 3].map((i) => ({ custom_id: `r${i}`, body: { model: MODEL, messages: demoMessages(i) } }));
  const file = await uploadBatch(client, batchInput(lines));
  const create = () =>
    client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });

  const failed = await settle(client, (await create()).id);
  t.is(failed.status, 'failed');
  t.truthy(failed.failed_at);
  t.is(failed.errors!.data!.length, 1);
  t.falsy(failed.output_file_id);

  const expired = await settle(client, (await create()).id);
  t.is(expired.status, 'expired');
  t.deepEqual(expired.request_counts, { total: 4, completed: 2, failed: 2 });
  const done = jsonLines(await (await client.files.content(expired.output_file_id!)).text());
  t.deepEqual(
    done.map((l) => l.custom_id),
    ['r0', 'r1']
  );
  const notDone = jsonLines(await (await client.files.content(expired.error_file_id!)).text());
  t.deepEqual(
    notDone.map((l) => [l.custom_id, l.response, l.error.code]),
    [
      ['r2', null, 'batch_expired'],
      ['r3', null, 'batch_expired'],
    ]
  );
  t.is(server.counters().answered, 2);

  // With the faults used up, batches complete; a long delay leaves time to cancel one in progress.
  const slow = await startLocalTeacherServer({ model: MODEL, batchDelayMs: 60_000 });
  t.teardown(() => slow.close());
  const slowClient = sdk(slow);
  const slowFile = await uploadBatch(slowClient, batchInput(lines));
  const pendingBatch = await slowClient.batches.create({
    input_file_id: slowFile.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  let current = await slowClient.batches.retrieve(pendingBatch.id);
  while (current.status === 'validating') current = await slowClient.batches.retrieve(pendingBatch.id);
  t.is(current.status, 'in_progress');
  t.is((await slowClient.batches.cancel(pendingBatch.id)).status, 'cancelling');
  const cancelled = await settle(slowClient, pendingBatch.id);
  t.is(cancelled.status, 'cancelled');
  t.deepEqual(cancelled.request_counts, { total: 4, completed: 0, failed: 4 });
  const cancelledLines = jsonLines(await (await slowClient.files.content(cancelled.error_file_id!)).text());
  t.true(cancelledLines.every((l) => l.error.code === 'batch_cancelled'));
  t.is(slow.counters().requests, 0);
  await t.throwsAsync(() => slowClient.batches.cancel(pendingBatch.id), { message: /409/ });
});

test('malformed batch input fails the batch at validation, naming the lines', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => server.close());
  const client = sdk(server);
  const jsonl = [
    JSON.stringify({
      custom_id: 'a',
      method: 'POST',
      url: '/v1/chat/completions',
      body: { model: MODEL, messages: demoMessages(0) },
    }),
    '{not json',
    JSON.stringify({ custom_id: 'a', method: 'POST', url: '/v1/chat/completions', body: {} }),
    JSON.stringify({ custom_id: 'c', method: 'POST', url: '/v1/embeddings', body: {} }),
  ].join('\n');
  const batch = await settle(
    client,
    (
      await client.batches.create({
        input_file_id: (await uploadBatch(client, jsonl)).id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      })
    ).id
  );
  t.is(batch.status, 'failed');
  t.deepEqual(
    batch.errors!.data!.map((e) => [e.line, e.code]),
    [
      [2, 'invalid_json_line'],
      [3, 'duplicate_custom_id'],
      [4, 'mismatched_endpoint'],
    ]
  );
  t.is(server.counters().requests, 0);
});

test('the files and batches routes refuse bad requests with OpenAI-style errors', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => server.close());
  const client = sdk(server);
  await t.throwsAsync(() => client.files.retrieve('file-nope'), { message: /404/ });
  await t.throwsAsync(() => client.batches.retrieve('batch_nope'), { message: /404/ });
  await t.throwsAsync(
    async () => client.files.create({ file: await toFile(Buffer.from('x'), 'x.jsonl'), purpose: 'fine-tune' }),
    { message: /purpose/ }
  );
  const file = await uploadBatch(
    client,
    batchInput([{ custom_id: 'a', body: { model: MODEL, messages: demoMessages(0) } }])
  );
  const create = (body: Record<string, unknown>) =>
    client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
      ...body,
    } as any);
  await t.throwsAsync(() => create({ input_file_id: 'file-nope' }), { message: /input_file_id/ });
  await t.throwsAsync(() => create({ endpoint: '/v1/embeddings' }), { message: /endpoint/ });
  await t.throwsAsync(() => create({ completion_window: '1h' }), { message: /completion_window/ });
  const notMultipart = await fetch(`${server.url}/files`, {
    method: 'POST',
    body: '{}',
    headers: { 'content-type': 'application/json' },
  });
  t.is(notMultipart.status, 400);
  const cut = await fetch(`${server.url}/files`, {
    method: 'POST',
    body: '--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch',
    headers: { 'content-type': 'multipart/form-data; boundary=b' },
  });
  t.is(cut.status, 400);
  t.regex(((await cut.json()) as any).error.message, /malformed/);
});

test('bad server options are InputErrors naming the option', async (t) => {
  await t.throwsAsync(() => startLocalTeacherServer({ rateLimit: { windowMs: 1000 } }), {
    instanceOf: InputError,
    message: /rateLimit/,
  });
  await t.throwsAsync(() => startLocalTeacherServer({ rateLimit: { requests: 0, windowMs: 1000 } }), {
    instanceOf: InputError,
    message: /rateLimit.requests is 0/,
  });
  await t.throwsAsync(() => startLocalTeacherServer({ batchDelayMs: -1 }), {
    instanceOf: InputError,
    message: /batchDelayMs/,
  });
  await t.throwsAsync(() => startLocalTeacherServer({ faults: { holdAfter: -1 } }), {
    instanceOf: InputError,
    message: /holdAfter/,
  });
});
