import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import test from 'ava';
import { demoSpec, parseSpec } from '../lib/pipeline/spec';
import { runWorkflowId } from '../lib/pipeline/run-identity';
import { buildProgram } from '../cli/program';
import { stepwise } from './helpers/cli';
import { tempDir } from './helpers/temp';

const DATASETS = resolve(__dirname, '..', '..', 'shared', 'datasets');

const lastJsonLine = (stdout: string) => JSON.parse(stdout.trim().split('\n').at(-1)!);

test('validate reproduces the paper teacher accuracy on CQA test: 943/1221', async (t) => {
  const r = await stepwise(['validate', '--data-dir', DATASETS, '--task', 'cqa', '--split', 'test', '--json']);
  t.is(r.code, 0, r.stderr);
  const result = lastJsonLine(r.stdout);
  t.like(result, { task: 'cqa', split: 'test', total: 1221, correct: 943 });
  t.true(Math.abs(result.accuracy - 943 / 1221) < 1e-12);
  t.is(typeof result.unparsable, 'number');
});

test('validate reproduces the paper teacher accuracy on SVAMP test: 148/200', async (t) => {
  const r = await stepwise(['validate', '--data-dir', DATASETS, '--task', 'svamp', '--split', 'test', '--json']);
  t.is(r.code, 0, r.stderr);
  t.like(lastJsonLine(r.stdout), { task: 'svamp', split: 'test', total: 200, correct: 148, accuracy: 0.74 });
});

test('every command has --help', async (t) => {
  const expected = [
    'run',
    'sweep',
    'resume',
    'worker',
    'dev',
    'validate',
    'models',
    'runs',
    'lineage',
    'verify',
    'cancel',
    'setup',
    'import-t5',
    'export-t5',
    'codec-server',
    'schedule',
    'deploy',
    'replay',
    'report',
    'ui',
  ];
  // Every command's help from the program itself (one process: a spawn per command cost a minute of CPU)...
  const program = buildProgram();
  t.deepEqual(program.commands.map((c) => c.name()).sort(), [...expected].sort());
  for (const command of program.commands) {
    t.regex(command.helpInformation(), new RegExp(`Usage: stepwise ${command.name()}`), command.name());
  }
  // ...and through the binary a user runs: its list, and one command's help.
  const top = await stepwise(['--help']);
  t.is(top.code, 0);
  for (const command of expected) t.regex(top.stdout, new RegExp(`^\\s+${command}\\b`, 'm'), command);
  const one = await stepwise(['schedule', '--help']);
  t.is(one.code, 0);
  t.regex(one.stdout, /Usage: stepwise schedule/);
});

test('run with a bad spec file exits with the field, the value and what was expected, starting nothing', async (t) => {
  const dir = await tempDir(t, 'stepwise-cli-');
  const file = join(dir, 'spec.json');
  await writeFile(
    file,
    JSON.stringify({ name: 'x1', data: { kind: 'demo' }, teacher: { kind: 'scripted' }, student: { steps: -3 } })
  );
  const r = await stepwise(['run', file], { STEPWISE_HOME: join(dir, 'state') });
  t.is(r.code, 2);
  t.regex(r.stderr, /spec\.student\.steps: got -3/);
  t.notRegex(r.stderr, /Temporal dev server/);
});

test('sweep refuses a bad grid before anything starts, naming the list and the value', async (t) => {
  const dir = await tempDir(t, 'stepwise-cli-');
  const env = { STEPWISE_HOME: join(dir, 'state') };
  for (const [args, message] of [
    [['--methods', 'standard-finetune,distil'], /methods has "distil"; expected distill-step-by-step\|/],
    [['--fractions', '0.5,1.5'], /fractions has 1\.5; expected a number in \(0, 1\]/],
    [['--seeds', '0,x'], /seeds has 'x'; expected a number/],
    [['--seeds', '0,0'], /seeds repeats a value/],
  ] as const) {
    const r = await stepwise(['sweep', '--demo', ...args], env);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message);
    t.notRegex(r.stderr, /Temporal dev server/);
  }
  const bad = await stepwise(['sweep', '--demo', '--name', 'x'.repeat(60)], env);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /too long for a sweep/);
});

test('validate names a missing dataset folder', async (t) => {
  const r = await stepwise(['validate', '--data-dir', '/no/such/dir', '--task', 'cqa']);
  t.not(r.code, 0);
  t.regex(r.stderr, /\/no\/such\/dir/);
});

test('teacher flags land in the spec and are validated like it: a budget without a price is refused', async (t) => {
  const dir = await tempDir(t, 'stepwise-cli-');
  const state = { STEPWISE_HOME: join(dir, 'state') };
  const base = ['run', '--teacher-url', 'http://127.0.0.1:9/v1', '--teacher-model', 'big-model', '--name', 'x2'];
  const noPrice = await stepwise([...base, '--max-cost', '5'], state);
  t.is(noPrice.code, 2);
  t.regex(noPrice.stderr, /spec\.teacher\.price: .*needs teacher\.price/);

  const prices = join(dir, 'prices.json');
  await writeFile(prices, JSON.stringify({ 'other-model': { inputPerMillionTokens: 1, outputPerMillionTokens: 2 } }));
  const unlisted = await stepwise([...base, '--max-cost', '5', '--prices', prices], state);
  t.is(unlisted.code, 2);
  t.regex(unlisted.stderr, /--prices .* has no entry for the teacher model "big-model"; it lists other-model/);

  const selfConsistent = await stepwise([...base, '--samples', '3'], state);
  t.is(selfConsistent.code, 2);
  t.regex(selfConsistent.stderr, /spec\.teacher\.temperature: .*self-consistency/);
  t.notRegex(selfConsistent.stderr, /Temporal dev server/);
});

test('a run id is derived from the spec and the content of its data: same spec, same id; changed data, new id', async (t) => {
  const dir = await tempDir(t, 'stepwise-cli-');
  const train = join(dir, 'train.jsonl');
  const testFile = join(dir, 'test.jsonl');
  await writeFile(train, '{"input":"a","label":"x"}\n');
  await writeFile(testFile, '{"input":"b","label":"y"}\n');
  const spec = (fields: object) =>
    parseSpec({
      name: 'ids',
      data: { kind: 'jsonl', train, test: testFile },
      teacher: { kind: 'replay', dir },
      ...fields,
    });
  const id = await runWorkflowId(spec({}));
  t.regex(id, /^stepwise-ids-[0-9a-f]{12}$/);
  // Field order and spelled-out defaults do not matter: the spec is compared after validation, canonically.
  const reordered = parseSpec({
    student: { steps: 400 },
    teacher: { dir, kind: 'replay' },
    data: { test: testFile, train, kind: 'jsonl' },
    name: 'ids',
  });
  t.is(await runWorkflowId(reordered), id);
  t.not(await runWorkflowId(spec({ student: { steps: 401 } })), id);
  t.not(await runWorkflowId(spec({ gate: { minImprovement: 0.02 } })), id, 'a gate of its own is part of the run');
  // The default gate is not: the demo spec has the id it had before the gate existed (computed at commit acc3062),
  // so `stepwise run` after an upgrade still finds the run it started before.
  t.is(await runWorkflowId(parseSpec(demoSpec())), 'stepwise-demo-reviews-ee64a92ec534');
  await writeFile(train, '{"input":"a","label":"z"}\n');
  t.not(await runWorkflowId(spec({})), id, 'the same paths with other content are another run');
});

test('resume with no interrupted run in the state says so and exits 2', async (t) => {
  const dir = await tempDir(t, 'stepwise-cli-');
  const r = await stepwise(['resume'], { STEPWISE_HOME: join(dir, 'state'), TEMPORAL_ADDRESS: '' });
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, new RegExp(`no interrupted run in the state folder ${join(dir, 'state')}`));
  const named = await stepwise(['resume', 'stepwise-nope-000000000000'], {
    STEPWISE_HOME: join(dir, 'state'),
    TEMPORAL_ADDRESS: '',
  });
  t.is(named.code, 2, named.stderr);
  t.regex(named.stderr, /no run stepwise-nope-000000000000 in the state folder/);
});
