import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';

import { generateDemoTask } from '../lib/data/demo-task';
import { parseCompletion } from '../lib/data/parse';
import type { Example } from '../lib/data/types';
import { InputError } from '../lib/errors';
import { ArtifactStore, canonicalJson, sha256Hex } from '../lib/store/artifact-store';
import { FsBackend } from '../lib/store/fs-store';
import { createTeacher } from '../lib/teacher';
import { createOpenAITeacher, type OpenAITeacherConfig } from '../lib/teacher/openai-teacher';
import { startLocalTeacherServer, type LocalTeacherServerOptions } from '../lib/teacher/local-server';
import { buildPrompt } from '../lib/teacher/templates';
import { promptHash, type TeacherRequest } from '../lib/teacher/types';

const MODEL = 'stepwise-test';

const temps: string[] = [];
test.after.always(async () => {
  await Promise.all(temps.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempStore(): Promise<ArtifactStore> {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-teacher-'));
  temps.push(dir);
  return new ArtifactStore(new FsBackend(dir));
}

/** A local server for one test, closed when the test ends, and a teacher pointed at it. */
async function setup(
  t: { teardown(fn: () => Promise<void>): void },
  serverOpts: LocalTeacherServerOptions = {},
  teacherOpts: Partial<OpenAITeacherConfig> = {},
  store?: ArtifactStore
) {
  const server = await startLocalTeacherServer({ model: MODEL, ...serverOpts });
  t.teardown(() => server.close());
  const teacher = createOpenAITeacher({ baseURL: server.url, model: MODEL, ...teacherOpts }, store);
  return { server, teacher };
}

function requestsFor(examples: readonly Example[]): TeacherRequest[] {
  return examples.map((ex) => ({ id: ex.id, messages: buildPrompt('demo', ex.input) }));
}

test('the scripted teacher answers demo prompts in a parseable form and agrees with most gold labels', async (t) => {
  const { teacher } = await setup(t, { errorRate: 0.1, seed: 3 });
  const examples = generateDemoTask({ n: 200, seed: 11 });
  const responses = await teacher.complete(requestsFor(examples), { concurrency: 8 });

  t.deepEqual(
    responses.map((r) => r.id),
    examples.map((ex) => ex.id)
  );
  let agree = 0;
  for (const [i, response] of responses.entries()) {
    t.is(response.error, undefined);
    t.false(response.cached);
    t.truthy(response.usage && response.usage.completionTokens > 0);
    const parsed = parseCompletion('demo', response.completion);
    if (!parsed.ok) return t.fail(`unparseable: ${response.completion}`);
    if (parsed.label === examples[i].label) agree++;
    // Right or wrong, the rationale's own count supports the label it gives: mistakes read like reasoning.
    const [, pos, neg] = /That is (\d) positive and (\d) negative\./.exec(parsed.rationale) ?? [];
    t.is(parsed.label, Number(pos) > Number(neg) ? 'positive' : 'negative');
  }
  const agreement = agree / examples.length;
  t.true(agreement >= 0.8 && agreement < 1, `agreement ${agreement}`);
});

test('no more requests are in flight at the server than the concurrency asked for', async (t) => {
  const { server, teacher } = await setup(t, { latencyMs: 40 });
  const progress: number[] = [];
  const examples = generateDemoTask({ n: 16, seed: 2 });
  const responses = await teacher.complete(requestsFor(examples), {
    concurrency: 3,
    onProgress: (done, total) => {
      t.is(total, 16);
      progress.push(done);
    },
  });
  t.is(responses.filter((r) => r.error === undefined).length, 16);
  const stats = server.stats();
  t.is(stats.requests, 16);
  t.true(stats.maxInFlight <= 3, `max in flight ${stats.maxInFlight}`);
  t.true(stats.maxInFlight >= 2, 'requests did run in parallel');
  t.deepEqual(
    progress,
    Array.from({ length: 16 }, (_, i) => i + 1)
  );
});

test('a second run over the same store is answered from the cache without any HTTP request', async (t) => {
  const store = await tempStore();
  const { server, teacher } = await setup(t, {}, {}, store);
  const requests = requestsFor(generateDemoTask({ n: 10, seed: 5 }));

  const first = await teacher.complete(requests);
  t.is(server.stats().requests, 10);
  t.true(first.every((r) => !r.cached && r.error === undefined));
  t.is((await store.listKeys('cache/teacher/')).length, 10);

  // A fresh teacher (a new process, a retried activity) sees the same cache.
  const again = createOpenAITeacher({ baseURL: server.url, model: MODEL }, store);
  const second = await again.complete(requests);
  t.is(server.stats().requests, 10);
  t.true(second.every((r) => r.cached));
  t.deepEqual(
    second.map((r) => [r.id, r.completion, r.promptHash]),
    first.map((r) => [r.id, r.completion, r.promptHash])
  );
  // The cache key is the same hash the server computes from the request it received.
  t.deepEqual(Object.keys(server.stats().byPromptHash).sort(), first.map((r) => r.promptHash).sort());

  // Another temperature is another call.
  const warmer = createOpenAITeacher({ baseURL: server.url, model: MODEL, temperature: 0.7 }, store);
  const third = await warmer.complete(requests.slice(0, 1));
  t.false(third[0].cached);
  t.is(server.stats().requests, 11);
});

test('the prompt hash is the sha256 of the canonical JSON of the call, so caches written before still answer', (t) => {
  const calls = [
    { model: MODEL, messages: buildPrompt('demo', 'The food was great, the staff was rude and the view was lovely.') },
    {
      model: 'm',
      messages: [
        { role: 'system' as const, content: 'quote " newline \n unicode \u2028 é 🙂' },
        { role: 'user' as const, content: '' },
      ],
      temperature: 0.7,
      maxTokens: 16,
      seed: 3,
    },
    { model: 'm', messages: [], temperature: 0, maxTokens: 256, seed: 0 },
  ];
  for (const call of calls) {
    // The definition the response cache was keyed by: every field, keys sorted, undefined members dropped.
    const canonical = canonicalJson({
      model: call.model,
      messages: call.messages.map((m) => ({ role: m.role, content: m.content })),
      temperature: call.temperature,
      maxTokens: call.maxTokens,
      seed: call.seed,
    });
    t.is(promptHash(call), sha256Hex(canonical));
  }
  // Fields a caller carries along beside role and content do not change the hash.
  const extra = { ...calls[0], messages: calls[0].messages.map((m) => ({ ...m, name: 'x' })) };
  t.is(promptHash(extra), promptHash(calls[0]));
});

test('a 500 is retried by the SDK and the retry succeeds', async (t) => {
  const { server, teacher } = await setup(t, { faults: { status: { code: 500, count: 1, retryAfterS: 0 } } });
  const [response] = await teacher.complete(requestsFor(generateDemoTask({ n: 1, seed: 1 })));
  t.is(response.error, undefined);
  t.true(parseCompletion('demo', response.completion).ok);
  t.is(server.stats().requests, 2);
});

test('a status that outlasts the retries is an error on that response only', async (t) => {
  const { server, teacher } = await setup(
    t,
    { faults: { status: { code: 503, count: 2, retryAfterS: 0 } } },
    { maxRetries: 1 }
  );
  const responses = await teacher.complete(requestsFor(generateDemoTask({ n: 2, seed: 1 })), { concurrency: 1 });
  t.regex(responses[0].error ?? '', /HTTP 503/);
  t.is(responses[0].completion, '');
  t.is(responses[1].error, undefined);
  t.is(server.stats().requests, 3);
});

test('a dropped connection and a hung request are retried', async (t) => {
  // The timeout must cut the hang short yet leave a loaded machine time to answer an ordinary request.
  const { server, teacher } = await setup(t, { faults: { dropConnection: 1, hangMs: 10_000 } }, { timeoutMs: 1500 });
  const [response] = await teacher.complete(requestsFor(generateDemoTask({ n: 1, seed: 4 })));
  t.is(response.error, undefined);
  t.true(parseCompletion('demo', response.completion).ok);
  // Dropped, hung past the timeout, answered: at least three requests (a loaded machine may also let an ordinary
  // one outlive the timeout), and the one answer delivered once.
  const stats = server.stats();
  t.true(stats.requests >= 3, `${stats.requests} requests`);
  t.is(stats.answered, 1);
});

test('an empty completion is retried, then returned as an error and never cached', async (t) => {
  const store = await tempStore();
  const { server, teacher } = await setup(t, { faults: { emptyCompletion: 3 } }, { maxRetries: 2 }, store);
  const requests = requestsFor(generateDemoTask({ n: 1, seed: 6 }));
  const [failed] = await teacher.complete(requests);
  t.regex(failed.error ?? '', /empty completion/);
  t.is(failed.completion, '');
  t.is(server.stats().requests, 3);
  t.deepEqual(await store.listKeys('cache/teacher/'), []);

  server.setFaults({ emptyCompletion: 1 });
  const [recovered] = await teacher.complete(requests);
  t.is(recovered.error, undefined);
  t.false(recovered.cached);
  t.is(server.stats().requests, 5);
});

test('a request the endpoint refuses is not retried and names the status', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => server.close());
  const teacher = createTeacher({ kind: 'openai', url: server.url, model: 'no-such-model' }, {});
  const [response] = await teacher.complete(requestsFor(generateDemoTask({ n: 1, seed: 1 })));
  t.regex(response.error ?? '', /HTTP 404.*no-such-model/);
  t.is(server.stats().requests, 1);
});

test('aborting rejects promptly while calls are in flight', async (t) => {
  t.timeout(5000);
  const { server, teacher } = await setup(t, { latencyMs: 60_000 });
  const controller = new AbortController();
  const pending = teacher.complete(requestsFor(generateDemoTask({ n: 6, seed: 1 })), {
    concurrency: 2,
    signal: controller.signal,
  });
  while (server.stats().inFlight < 2) await new Promise((resolve) => setTimeout(resolve, 10));
  const reason = new Error('stage cancelled');
  controller.abort(reason);
  const err = await t.throwsAsync(pending);
  t.is(err, reason);
  // The other four were never sent.
  t.is(server.stats().requests, 2);
});

test('an already aborted signal rejects before any request is sent', async (t) => {
  const { server, teacher } = await setup(t);
  const signal = AbortSignal.abort();
  // The rejection is the signal's own reason (here a DOMException, which ava does not count as an Error).
  const outcome = await teacher.complete(requestsFor(generateDemoTask({ n: 2, seed: 1 })), { signal }).then(
    () => 'resolved',
    (err: unknown) => err
  );
  t.is(outcome, signal.reason);
  t.is(server.stats().requests, 0);
});

test('bad teacher settings are InputErrors naming the field', (t) => {
  t.throws(() => createOpenAITeacher({ baseURL: 'ftp://x', model: MODEL }), {
    instanceOf: InputError,
    message: /teacher\.url is "ftp:\/\/x"/,
  });
  t.throws(() => createOpenAITeacher({ baseURL: 'http://127.0.0.1:1/v1', model: MODEL, temperature: 3 }), {
    instanceOf: InputError,
    message: /teacher\.temperature is 3/,
  });
  t.throws(() => createTeacher({ kind: 'scripted' }), { instanceOf: InputError, message: /teacher\.kind/ });
});
