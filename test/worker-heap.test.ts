/**
 * A worker bounds its heap's growth past what the last full collection kept (workers/heap.ts): the setting is
 * checked, and applied to the running process it changes how far the old generation grows under churn that V8 on
 * its own lets run to several times the live set.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';

import { InputError } from '../lib/errors';
import { DEFAULT_HEAP_GROWTH_PERCENT, HEAP_GROWTH_ENV, heapGrowthPercent } from '../workers/heap';

const ROOT = join(__dirname, '..');

test('the growth setting: default, 0 for V8’s own, a whole percent; anything else refused naming the variable', (t) => {
  t.is(heapGrowthPercent(undefined), DEFAULT_HEAP_GROWTH_PERCENT);
  t.is(heapGrowthPercent(''), DEFAULT_HEAP_GROWTH_PERCENT);
  t.is(heapGrowthPercent('0'), 0);
  t.is(heapGrowthPercent('75'), 75);
  for (const bad of ['abc', '-1', '12.5', '301', '1e9']) {
    const err = t.throws(() => heapGrowthPercent(bad), { instanceOf: InputError });
    t.is(err.field, HEAP_GROWTH_ENV);
    t.true(err.message.includes(`${HEAP_GROWTH_ENV} is ${JSON.stringify(bad)}`), err.message);
  }
});

/**
 * A live set of ~115 MiB, then a stream of objects each kept long enough to be promoted (a ring of 20k, as calls in
 * flight are), in a child process that applies `percent` as a worker does. Reports the old space's largest size.
 */
const CHURN = `
const v8 = require('node:v8');
require(${JSON.stringify(join(ROOT, 'workers', 'heap.ts'))}).limitHeapGrowth(Number(process.argv[1]));
const live = [];
for (let i = 0; i < 400000; i++) live.push({ i, s: ('live-' + i + '-').padEnd(64, 'x') });
const ring = new Array(20000);
const oldSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space').space_size;
let peak = 0;
for (let i = 0; i < 1500000; i++) {
  ring[i % ring.length] = { i, body: ('call-' + i + '-').padEnd(400, 'y'), parts: [i, i + 1, i + 2] };
  if (i % 2000 === 0) peak = Math.max(peak, oldSpace());
}
globalThis.gc();
console.log(JSON.stringify({ peak, live: v8.getHeapStatistics().used_heap_size, kept: live.length }));
`;

function churn(percent: number): Promise<{ peak: number; live: number }> {
  return new Promise((resolve, reject) =>
    execFile(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', '-e', CHURN, String(percent)],
      { cwd: ROOT, maxBuffer: 1 << 20 },
      (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout.trim().split('\n').pop()!)))
    )
  );
}

test('applied, the old generation stays within the growth of the live set; V8 on its own lets it run far past', async (t) => {
  // One after the other: on two busy cores, concurrent marking that falls behind lets more be promoted meanwhile.
  const bounded = await churn(DEFAULT_HEAP_GROWTH_PERCENT);
  const own = await churn(0);
  const mib = (b: number) => Math.round(b / 1048576);
  t.log(
    `live ${mib(bounded.live)} MiB; old space at most ${mib(bounded.peak)} MiB bounded, ${mib(own.peak)} on V8's own`
  );
  // The old space holds the live set plus 30% of it, and a margin for what is promoted while a collection's marking
  // runs (more when the cores are busy: 249 MiB over a 126 MiB live set, against 201 on a quiet machine).
  const bound = bounded.live * (1 + DEFAULT_HEAP_GROWTH_PERCENT / 100) + 128 * 1048576;
  t.true(bounded.peak <= bound, `bounded old space ${mib(bounded.peak)} MiB > ${mib(bound)} MiB`);
  // The workload is one the bound matters to: left to itself, V8 grows the old space well past it.
  t.true(own.peak > bound, `V8's own old space ${mib(own.peak)} MiB: the workload does not tell the two apart`);
});

test('a worker given a bad heap growth exits at once, naming the variable', async (t) => {
  const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolve) =>
    execFile(
      process.execPath,
      [join(ROOT, 'bin', 'stepwise.js'), 'worker', '--queue', 'cpu'],
      { env: { ...process.env, TEMPORAL_ADDRESS: '127.0.0.1:1', [HEAP_GROWTH_ENV]: 'lots' } },
      (err, _stdout, stderr) => resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stderr })
    )
  );
  t.is(code, 1);
  t.regex(stderr, /STEPWISE_WORKER_HEAP_GROWTH_PERCENT is "lots": expected a whole percent/);
});
