/**
 * Bad input, rejected cleanly: each case is started as a real run (a client starting `distillationPipeline` against
 * the real Temporal dev server, versitygw and in-process workers) or through the `stepwise` CLI, and must fail with a
 * message naming the field and the problem, non-retryably (the failing activity ran exactly once), before anything
 * past its stage ran, with nothing registered and no stored object overwritten.
 *
 * The workers' data roots are one temp folder (set before the workers start, as `STEPWISE_DATA_ROOTS` is read from
 * their settings); the cases' files live there, and the paths that escape it are the data-roots cases.
 * Cron schedules and aliases do not exist yet (later issues), so their cases are not here.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, realpathSync } from 'node:fs';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { CPU_TASK_QUEUE } from '../contract';
import { distillationPipeline } from '../workflows';
import { listModels } from '../lib/registry/registry';
import { sha256Hex } from '../lib/store/artifact-store';
import { demoSpec } from '../lib/pipeline/spec';
import { preflightTeacher } from '../lib/teacher/stage/preflight';
import { InputError } from '../lib/errors';
import { servicesForFile } from './helpers/services';
import { faultMode, recordFigures } from './helpers/figures';

const ROOT = realpathSync(mkdtempSync(join(tmpdir(), 'stepwise-roots-')));
const OUTSIDE = realpathSync(mkdtempSync(join(tmpdir(), 'stepwise-outside-')));
mkdirSync(join(ROOT, 'data'));
// Read by the in-process workers' settings when servicesForFile starts them (test/helpers/services.ts keeps it).
process.env.STEPWISE_DATA_ROOTS = ROOT;

// A folder store, so the per-case snapshots stay cheap; the S3 server still runs for the credential cases.
const services = servicesForFile({ s3: false });
const BIN = resolve(__dirname, '..', 'bin', 'stepwise.js');
const at = (...parts: string[]) => join(ROOT, 'data', ...parts);

let tried = 0;
let rejectedCleanly = 0;
let teacher: Server;
let teacherUrl = '';
let closedPortUrl = '';

const rows = (n: number, extra: (i: number) => object = () => ({})) =>
  Array.from({ length: n }, (_, i) => JSON.stringify({ input: `text ${i}`, label: i % 2 ? 'yes' : 'no', ...extra(i) }));

/** A reference-layout CQA folder with `n` train and 2 test rows, and recorded completions as given. */
async function cqaFolder(name: string, n: number, completions?: string) {
  const dir = at(name);
  await mkdir(join(dir, 'cqa', 'llm'), { recursive: true });
  const row = (i: number) => JSON.stringify({ question: `q${i}?`, choices: ['yes', 'no'], answer: 'yes' });
  await writeFile(join(dir, 'cqa', 'cqa_train.json'), Array.from({ length: n }, (_, i) => row(i)).join('\n'));
  await writeFile(join(dir, 'cqa', 'cqa_test.json'), [row(0), row(1)].join('\n'));
  if (completions !== undefined) await writeFile(join(dir, 'cqa', 'llm', 'train_CoT_0.json'), completions);
  return dir;
}

/** A stand-in "teacher" at one URL per behaviour: a web page, a 404 API, a key-refusing API, a busy one. */
function startFakeTeachers(): Promise<Server> {
  const server = createServer((req, res) => {
    const [, kind] = (req.url ?? '').split('/');
    if (kind === 'html') res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>');
    else if (kind === 'auth') res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{}}');
    else if (kind === 'busy') res.writeHead(503).end();
    else if (kind === 'nolist') res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    else res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found"}}');
  });
  return new Promise((done) => server.listen(0, '127.0.0.1', () => done(server)));
}

test.before(async () => {
  const train = rows(12).join('\n');
  const files: Record<string, string | Buffer> = {
    'good-train.jsonl': train,
    'good-test.jsonl': rows(4).join('\n'),
    'malformed.jsonl': [rows(2)[0], rows(2)[1], '{"input": "x", "label": '].join('\n'),
    'array-line.jsonl': [rows(1)[0], '["input", "label"]'].join('\n'),
    'label-number.jsonl': rows(3, (i) => (i === 1 ? { label: 7 } : {})).join('\n'),
    'no-input.jsonl': [rows(1)[0], JSON.stringify({ text: 'x', label: 'no' })].join('\n'),
    'empty.jsonl': '\n\n',
    'dup-ids.jsonl': rows(4, (i) => ({ id: i === 3 ? 'r1' : `r${i}` })).join('\n'),
    'test-ids.jsonl': rows(2, (i) => ({ id: `t${i}` })).join('\n'),
    'latin1.jsonl': Buffer.concat([
      Buffer.from(rows(1)[0] + '\n'),
      Buffer.from('{"input": "caf\xe9", "label": "no"}', 'latin1'),
    ]),
    'huge.jsonl': [rows(1)[0], JSON.stringify({ input: 'x'.repeat(10 * 1024 * 1024), label: 'no' })].join('\n'),
    'two-rows.jsonl': rows(2).join('\n'),
    'not-a-checkpoint.safetensors': 'this is plain text, not a checkpoint',
  };
  await Promise.all(Object.entries(files).map(([name, body]) => writeFile(at(name), body)));
  await writeFile(join(OUTSIDE, 'secret.jsonl'), rows(3).join('\n'));
  await symlink(join(OUTSIDE, 'secret.jsonl'), at('link-out.jsonl'));
  await cqaFolder('cqa-no-llm', 5);
  await cqaFolder('cqa-short-llm', 5, JSON.stringify(['So the answer is (a).', 'x', 'y']));
  await cqaFolder('cqa-bad-llm', 5, '{"completions": []}');
  teacher = await startFakeTeachers();
  teacherUrl = `http://127.0.0.1:${(teacher.address() as AddressInfo).port}`;
  const closed = await startFakeTeachers();
  closedPortUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}/v1`;
  await new Promise((done) => closed.close(done));
});

test.after.always(async () => {
  recordFigures('bad-inputs', { badInputsTried: tried, badInputsRejectedCleanly: rejectedCleanly });
  teacher?.close();
  await rm(ROOT, { recursive: true, force: true });
  await rm(OUTSIDE, { recursive: true, force: true });
});

/** Every stored object's content hash: what "nothing overwritten" is checked against. */
async function snapshot(): Promise<Map<string, string>> {
  const { backend } = services().store;
  const keys = await backend.list('');
  return new Map(await Promise.all(keys.map(async (k) => [k, sha256Hex(await backend.get(k))] as [string, string])));
}

/** The InputError at the bottom of a failure chain (workflow → child → activity → application failure). */
function inputFailure(err: unknown): ApplicationFailure | undefined {
  for (let e = err as Error | undefined; e; e = (e as { cause?: Error }).cause) {
    if (e instanceof ApplicationFailure && e.type === 'InputError') return e;
  }
  return undefined;
}

async function activityStarts(handle: WorkflowHandle) {
  const events = (await handle.fetchHistory()).events ?? [];
  const typeOf = new Map(
    events.flatMap((e) => {
      const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
      return name ? [[String(e.eventId), name] as const] : [];
    })
  );
  // A failed run's report is written after the failure: it is not a stage that ran.
  const stage = (name: string | undefined) => name !== 'writeRunReport';
  const scheduled = [...typeOf.values()].filter(stage);
  const attempts = events.flatMap((e) => {
    const started = e.activityTaskStartedEventAttributes;
    return started && stage(typeOf.get(String(started.scheduledEventId))) ? [started.attempt ?? 1] : [];
  });
  return { scheduled, attempts };
}

type Stage = 'workflow' | 'sample' | 'planTeacher';

/** Asserts every promise of a clean rejection; counts the case, and counts it clean only when all of them held. */
async function expectRejected(t: ExecutionContext, spec: unknown, stage: Stage, message: RegExp, field: string) {
  tried++;
  const before = await snapshot();
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `bad-${t.title.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}-${Date.now()}`,
    args: [spec as never],
  });
  const err = await handle.result().then(
    () => undefined,
    (e: unknown) => e
  );
  const checks: boolean[] = [];
  const check = (ok: boolean, what: string) => checks.push(t.true(ok, what));
  check(err instanceof WorkflowFailedError, `the run failed (${String(err)})`);
  const failure = inputFailure(err);
  check(failure !== undefined, `an InputError failure: ${String((err as Error)?.cause ?? err)}`);
  check(failure?.nonRetryable === true, 'non-retryable');
  check(message.test(failure?.message ?? ''), `message ${JSON.stringify(failure?.message)} matches ${message}`);
  check((failure?.message ?? '').includes(field), `message names ${field}`);

  const parent = await activityStarts(handle);
  if (stage === 'workflow') check(parent.scheduled.length === 0, 'no activity was scheduled');
  if (stage === 'sample') {
    check(JSON.stringify(parent.scheduled) === '["sample"]', `only sample ran: ${parent.scheduled}`);
    check(JSON.stringify(parent.attempts) === '[1]', `sample ran once: attempts ${parent.attempts}`);
  }
  if (stage === 'planTeacher') {
    const child = await activityStarts(services().client.workflow.getHandle(`${handle.workflowId}/teacher`));
    check(JSON.stringify(child.scheduled) === '["planTeacher"]', `only planTeacher ran: ${child.scheduled}`);
    check(JSON.stringify(child.attempts) === '[1]', `planTeacher ran once: attempts ${child.attempts}`);
  }
  check((await listModels(services().store)).length === 0, 'nothing registered');
  const after = await snapshot();
  const changed = [...before].filter(([key, hash]) => after.get(key) !== hash);
  check(changed.length === 0, `no stored object overwritten or removed: ${changed.map(([k]) => k)}`);
  if (checks.every(Boolean)) rejectedCleanly++;
}

const scripted = { kind: 'scripted' } as const;
const offlineTeacher = { kind: 'openai', url: 'http://127.0.0.1:9/v1', model: 'm' } as const;
const jsonl = (train: string, test = 'good-test.jsonl', more: object = {}) => ({
  name: 'bad-jsonl',
  data: { kind: 'jsonl', train: train.startsWith('/') ? train : at(train), test: at(test), ...more },
  teacher: offlineTeacher,
});
const demoWith = (patch: Record<string, unknown>) => ({ ...demoSpec(), ...patch });

/** A case: title, spec (a thunk, for what test.before made), message, and the field the message must name. */
type Case = [string, () => unknown, RegExp, string];
const ref = (dir: string) => ({
  name: 'r',
  data: { kind: 'reference', dir, task: 'cqa' },
  teacher: { kind: 'replay' },
});
// prettier-ignore
const openaiAt = (url: () => string) => () => ({ ...jsonl('good-train.jsonl'), teacher: { kind: 'openai', url: url(), model: 'm' } });
const student = (fields: object) => () => demoWith({ student: fields });

// The spec itself: refused inside the workflow, before any activity is scheduled.
// prettier-ignore -- one case a line: the table reads as one.
const specCases: Case[] = [
  ['an unknown top-level field', () => demoWith({ extra: 1 }), /Unrecognized key: "extra"/, 'spec.extra'],
  ['an unknown student field', student({ stesp: 10 }), /"stesp"/, 'spec.student.stesp'],
  ['an unknown teacher field', () => demoWith({ teacher: { ...scripted, urll: 'x' } }), /"urll"/, 'spec.teacher.urll'],
  [
    'an unknown data field',
    () => jsonl('good-train.jsonl', 'good-test.jsonl', { trian: 'x' }),
    /"trian"/,
    'spec.data.trian',
  ],
  [
    'a string where a number goes',
    () => demoWith({ sample: { fraction: '0.5' } }),
    /expected number/,
    'spec.sample.fraction',
  ],
  ['a number where a name goes', () => demoWith({ name: 42 }), /got 42, expected string/, 'spec.name'],
  ['alpha above 1', student({ alpha: 1.5 }), /got 1\.5, .*<=1/, 'spec.student.alpha'],
  ['alpha below 0', student({ alpha: -0.1 }), /got -0\.1, .*>=0/, 'spec.student.alpha'],
  ['negative steps', student({ steps: -5 }), /got -5/, 'spec.student.steps'],
  ['an unknown preset', student({ preset: 'huge' }), /expected one of tiny, small/, 'spec.student.preset'],
  ['an unknown backend', student({ backend: 'tpu' }), /expected one of auto, tensorflow/, 'spec.student.backend'],
  ['a zero student.config.d_model', student({ config: { d_model: 0 } }), /got 0, .*>=1/, 'spec.student.config.d_model'],
  ['an unknown student.config field', student({ config: { d_modle: 8 } }), /"d_modle"/, 'spec.student.config.d_modle'],
  [
    'a rescaled untied head',
    student({ config: { tie_word_embeddings: false, scale_decoder_outputs: true } }),
    /got true, only a tied head is rescaled/,
    'spec.student.config.scale_decoder_outputs',
  ],
  [
    'a student.config beside student.init',
    student({ init: 'm@champion', config: { num_layers: 2 } }),
    /fixes the shape/,
    'spec.student.config',
  ],
  ['a student.vocabSize below the minimum', student({ vocabSize: 4 }), /got 4, .*>=16/, 'spec.student.vocabSize'],
  [
    'a warm start beside student.init',
    student({ init: 'm@champion', warmStart: 'champion' }),
    /from student.init or from a warm start, not both/,
    'spec.student.warmStart',
  ],
  [
    'a warm start that is neither champion nor a reference',
    student({ warmStart: 'best' }),
    /got "best", expected "champion" or a NAME@REF reference/,
    'spec.student.warmStart',
  ],
  [
    'warm-start steps without a warm start',
    student({ warmStartSteps: 100 }),
    /set student.warmStart too/,
    'spec.student.warmStartSteps',
  ],
  ['a teacher URL that is not a URL', openaiAt(() => 'nope'), /got "nope"/, 'spec.teacher.url'],
  ['a fraction of zero', () => demoWith({ sample: { fraction: 0 } }), /got 0/, 'spec.sample.fraction'],
  [
    'a numeric gate alias',
    () => demoWith({ gate: { alias: '7' } }),
    /got "7", an alias needs a letter/,
    'spec.gate.alias',
  ],
  [
    'a gate alias with a slash',
    () => demoWith({ gate: { alias: 'a/b' } }),
    /got "a\/b", expected a name/,
    'spec.gate.alias',
  ],
  ['a significance level of 1', () => demoWith({ gate: { mcNemarAlpha: 1 } }), /got 1, .*<1/, 'spec.gate.mcNemarAlpha'],
  [
    'an unknown timeout policy',
    () => demoWith({ gate: { approval: { onTimeout: 'maybe' } } }),
    /expected one of reject, promote/,
    'spec.gate.approval.onTimeout',
  ],
  [
    'an unknown gate field',
    () => demoWith({ gate: { minImprovment: 0.1 } }),
    /"minImprovment"/,
    'spec.gate.minImprovment',
  ],
];

// The data, and the data roots: refused by the sample stage, once, naming the spec field (and the file's line).
// prettier-ignore -- one case a line: the table reads as one.
const sampleCases: Case[] = [
  ['malformed JSONL', () => jsonl('malformed.jsonl'), /malformed\.jsonl:3: not valid JSON/, 'data.train'],
  [
    'a JSONL line that is not an object',
    () => jsonl('array-line.jsonl'),
    /:2: got an array of 2; expected a JSON object/,
    'data.train',
  ],
  [
    'a label of the wrong type',
    () => jsonl('label-number.jsonl'),
    /:2: field "label" is number 7; expected a string/,
    'data.train',
  ],
  ['a missing input field', () => jsonl('no-input.jsonl'), /:2: field "input" is missing/, 'data.train'],
  ['an empty dataset', () => jsonl('empty.jsonl'), /holds no examples/, 'data.train'],
  [
    'an empty test split',
    () => jsonl('good-train.jsonl', 'empty.jsonl'),
    /empty\.jsonl holds no examples/,
    'data.test',
  ],
  [
    'duplicate ids',
    () => jsonl('dup-ids.jsonl', 'test-ids.jsonl', { idField: 'id' }),
    /:4: field "id" is "r1", already used on line 2/,
    'data.train',
  ],
  ['bytes that are not UTF-8', () => jsonl('latin1.jsonl'), /latin1\.jsonl:2: not valid UTF-8/, 'data.train'],
  [
    'a 10 MB example',
    () => jsonl('huge.jsonl'),
    /huge\.jsonl:2: a line of 10\.5 MB; expected at most 1 MiB/,
    'data.train',
  ],
  [
    'a sample too small to split',
    () => ({ ...jsonl('two-rows.jsonl'), sample: { validFraction: 0.99 } }),
    /cannot split 2 examples with validFraction 0\.99/,
    'sample.validFraction',
  ],
  ['a missing reference folder', () => ref(at('nowhere')), /nowhere does not exist; expected a folder/, 'data.dir'],
  ['/etc/passwd as data', () => jsonl('/etc/passwd'), /\/etc\/passwd is outside the data roots/, 'data.train'],
  [
    'a ../.. path out of the roots',
    () => jsonl(`${ROOT}/data/../../${basename(OUTSIDE)}/secret.jsonl`),
    /\.\.\/\.\..*\(it resolves to .*\) is outside the data roots/,
    'data.train',
  ],
  [
    'a symlink out of the roots',
    () => jsonl('link-out.jsonl'),
    /link-out\.jsonl \(it resolves to .*secret\.jsonl\) is outside the data roots/,
    'data.train',
  ],
  ['a reference folder out of the roots', () => ref(OUTSIDE), /is outside the data roots/, 'data.dir'],
  [
    'a student.init that is not a checkpoint',
    student({ init: at('not-a-checkpoint.safetensors') }),
    /is not a Stepwise checkpoint/,
    'student.init',
  ],
  ['a student.init out of the roots', student({ init: '/etc/hostname' }), /is outside the data roots/, 'student.init'],
  ['a missing student.init', student({ init: at('none.safetensors') }), /does not exist/, 'student.init'],
  [
    'a student.init naming an alias no model has',
    student({ init: 'nobody@champion' }),
    /nobody@champion: no versions of model nobody|has no alias/,
    'student.init',
  ],
  [
    'a student.init naming version 0',
    student({ init: 'nobody@0' }),
    /names version 0; versions count from 1/,
    'student.init',
  ],
];

// The teacher: refused by the stage's preflight when it plans, before a single call.
// prettier-ignore -- one case a line: the table reads as one.
const teacherCases: Case[] = [
  ['missing llm/ files', () => ref(at('cqa-no-llm')), /train_CoT_0\.json cannot be read \(ENOENT\)/, 'data.dir'],
  [
    'completions that do not match the examples',
    () => ref(at('cqa-short-llm')),
    /cqa train has 5 examples but .* holds 3 recorded completions/,
    'data.dir',
  ],
  [
    'an llm/ file that is not an array',
    () => ref(at('cqa-bad-llm')),
    /got an object; expected a JSON array of strings/,
    'data.dir',
  ],
  ['an unreachable teacher URL', openaiAt(() => closedPortUrl), /cannot be reached \(ECONNREFUSED\)/, 'teacher.url'],
  [
    'a teacher URL serving a web page',
    openaiAt(() => `${teacherUrl}/html/v1`),
    /not an OpenAI-compatible API .*text\/html, not JSON/,
    'teacher.url',
  ],
  [
    'a teacher URL without the API',
    openaiAt(() => `${teacherUrl}/v2`),
    /is not an OpenAI-compatible API .*answered 404/,
    'teacher.url',
  ],
  [
    'a teacher that refuses the key',
    openaiAt(() => `${teacherUrl}/auth/v1`),
    /refused the request \(401\)/,
    'teacher.apiKeyEnv',
  ],
];

const cases: [Stage, Case][] = [
  ...specCases.map((c) => ['workflow', c] as [Stage, Case]),
  ...sampleCases.map((c) => ['sample', c] as [Stage, Case]),
  ...teacherCases.map((c) => ['planTeacher', c] as [Stage, Case]),
];

for (const [stage, [title, spec, message, field]] of cases) {
  test(`${title} is rejected cleanly, naming ${field}`, async (t) => {
    await expectRejected(t, spec(), stage, message, field);
  });
}

test('a busy or failing teacher is not bad input: the preflight leaves 429 and 5xx retryable', async (t) => {
  const input = { task: 'jsonl', train: {}, valid: {} } as never as Parameters<typeof preflightTeacher>[1];
  const openai = (url: string) => ({
    ...input,
    teacher: { kind: 'openai', url, model: 'm', apiKeyEnv: 'K', timeoutSeconds: 5 },
  });
  const busy = await t.throwsAsync(preflightTeacher({}, openai(`${teacherUrl}/busy/v1`) as never));
  t.false(busy instanceof InputError);
  t.regex(busy!.message, /answered 503/);
  const noList = await t.throwsAsync(preflightTeacher({}, openai(`${teacherUrl}/nolist/v1`) as never));
  t.true(noList instanceof InputError && noList.field === 'teacher.url');
});

const run = promisify(execFile);

/** The CLI as a user runs it, pointed at this file's Temporal and store. */
async function stepwise(args: string[], env: Record<string, string | undefined> = {}) {
  const s = services();
  const fullEnv = {
    ...process.env,
    TEMPORAL_ADDRESS: s.temporal.address,
    TEMPORAL_NAMESPACE: s.temporal.namespace,
    STEPWISE_STORE: s.storeLocation,
    ...env,
  };
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { env: fullEnv as NodeJS.ProcessEnv });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, out: e.stdout + e.stderr };
  }
}

const offline = ['--teacher-url', 'http://127.0.0.1:9/v1', '--teacher-model', 'm'];
// prettier-ignore -- one case a line: the table reads as one.
const cliCases: [string, () => Promise<string[]>, RegExp][] = [
  [
    'an unknown field in a spec file',
    async () => [await specFile('unknown', { ...demoSpec(), student: { stesp: 1 } })],
    /spec\.student\.stesp: .*Unrecognized key/,
  ],
  [
    'a spec file that is not JSON',
    async () => [await specFile('not-json', '{ name: ')],
    /spec file .*not-json\.json is not valid JSON/,
  ],
  ['--alpha outside [0, 1]', async () => ['--demo', '--alpha', '2'], /spec\.student\.alpha: got 2/],
  ['--steps negative', async () => ['--demo', '--steps', '-3'], /spec\.student\.steps: got -3/],
  [
    'an unknown --preset',
    async () => ['--demo', '--preset', 'huge'],
    /--preset <preset>.* Allowed choices are tiny, small, base, large/,
  ],
  [
    'an unknown --backend',
    async () => ['--demo', '--backend', 'tpu'],
    /--backend <name>.* Allowed choices are auto, tensorflow, wasm, cpu/,
  ],
  [
    '/etc/passwd as --train',
    async () => ['--train', '/etc/passwd', '--test', at('good-test.jsonl'), ...offline, '--name', 'cli-passwd'],
    /data\.train: \/etc\/passwd is outside the data roots/,
  ],
];

async function specFile(name: string, body: unknown): Promise<string> {
  const file = at(`${name}.json`);
  await writeFile(file, typeof body === 'string' ? body : JSON.stringify(body));
  return file;
}

// Each CLI case is a process of its own (seconds of start-up on a busy machine): the quick run keeps one of each kind.
const QUICK_CLI = new Set(['an unknown field in a spec file', '/etc/passwd as --train']);

for (const [title, args, message] of cliCases) {
  if (faultMode() === 'quick' && !QUICK_CLI.has(title)) continue;
  test(`stepwise run refuses ${title}, naming it`, async (t) => {
    tried++;
    const before = await snapshot();
    const r = await stepwise(['run', ...(await args())]);
    const ok = [
      t.not(r.code, 0, r.out),
      t.regex(r.out, message),
      t.notRegex(r.out, /^\s+at /m, 'no stack trace'),
      t.deepEqual(await listModels(services().store), []),
    ];
    const after = await snapshot();
    ok.push(
      t.true(
        [...before].every(([k, h]) => after.get(k) === h),
        'no stored object overwritten'
      )
    );
    if (ok.every(Boolean)) rejectedCleanly++;
  });
}

test('a bad store URI is refused naming the store and the value', async (t) => {
  tried++;
  const r = await stepwise(['models'], { STEPWISE_STORE: 'bogus://bucket/x' });
  const ok = [
    t.not(r.code, 0, r.out),
    t.regex(
      r.out,
      /store \(STEPWISE_STORE or --store\): "bogus:\/\/bucket\/x" is not a valid store location: expected a location with scheme s3/
    ),
    t.notRegex(r.out, /^\s+at /m, 'no stack trace'),
  ];
  if (ok.every(Boolean)) rejectedCleanly++;
});

const noCredentials = {
  AWS_ACCESS_KEY_ID: undefined,
  AWS_SECRET_ACCESS_KEY: undefined,
  // Nothing else may supply them: no profile files, and no instance-metadata lookup (which would take seconds).
  AWS_SHARED_CREDENTIALS_FILE: join(OUTSIDE, 'none'),
  AWS_CONFIG_FILE: join(OUTSIDE, 'none'),
  AWS_EC2_METADATA_DISABLED: 'true',
};
const credentialCases: [string, Record<string, string | undefined>, RegExp][] = [
  [
    'a wrong S3 secret key',
    { AWS_SECRET_ACCESS_KEY: 'wrong-secret' },
    /refused the S3 credentials \(SignatureDoesNotMatch: .*check AWS_SECRET_ACCESS_KEY/,
  ],
  ['an unknown S3 access key', { AWS_ACCESS_KEY_ID: 'nobody' }, /refused the S3 credentials .*check AWS_ACCESS_KEY_ID/],
  [
    'missing S3 credentials',
    noCredentials,
    /has no S3 credentials .*expected AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/,
  ],
];

for (const [title, env, message] of credentialCases) {
  if (faultMode() === 'quick' && title !== 'a wrong S3 secret key') continue;
  test(`${title} is refused with an error naming the credential`, async (t) => {
    tried++;
    const r = await stepwise(['models'], { STEPWISE_STORE: `s3://${services().bucket}/e2e`, ...env });
    const ok = [t.not(r.code, 0, r.out), t.regex(r.out, message), t.notRegex(r.out, /^\s+at /m, 'no stack trace')];
    if (ok.every(Boolean)) rejectedCleanly++;
  });
}
