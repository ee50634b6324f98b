/**
 * The fault suite's figures. Runs ava on every fault test (test/faults/*, the bad-input and registry tests, and any
 * test file that calls `recordFigures`, found at run time) with `STEPWISE_FAULT_FIGURES` pointing at a scratch folder,
 * then adds up what the tests recorded there (test/helpers/figures.ts).
 *
 *   npm run bench:faults              every variant (`STEPWISE_FAULTS=full`: 30 s outages, larger loads)
 *   npm run bench:faults -- --quick   the quick subset `npm test` runs
 *
 * Test files named after the flags run instead of the whole suite; any other argument (e.g. `--match '*outage*'`)
 * goes to ava. Last line: one JSON object with faultsTried, faultsSurvived, examplesLost, teacherCallsRepeated,
 * registryDuplicates, badInputsTried, badInputsRejectedCleanly and secretsFound (plus mode, durationS, files, records,
 * testsPassed). Exits non-zero when any test failed, after printing the figures: a failed fault test's figures are
 * partial, and the exit status says so.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { FIGURE_NAMES, type FaultFigures } from '../test/helpers/figures';

const root = join(__dirname, '..');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
/** Test files named on the command line replace the discovered list (to get one fault's figures). */
const named = args.filter((a) => a.endsWith('.test.ts'));
const avaArgs = args.filter((a) => a !== '--quick' && !a.endsWith('.test.ts'));
const mode = quick ? 'quick' : 'full';

/** Fault tests by place and name, and every other test file that records figures. */
async function faultTestFiles(): Promise<string[]> {
  const files = new Set<string>();
  const testDir = join(root, 'test');
  for (const entry of await readdir(testDir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.test.ts')) continue;
    const path = join(entry.parentPath, entry.name);
    const rel = relative(root, path);
    if (rel.startsWith(join('test', 'faults')) || (await readFile(path, 'utf8')).includes('recordFigures(')) {
      files.add(rel);
    }
  }
  for (const named of ['test/bad-input.test.ts', 'test/registry.test.ts']) {
    if (existsSync(join(root, named))) files.add(named);
  }
  return [...files].sort();
}

function runAva(files: string[], figuresDir: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ava = spawn(join(root, 'node_modules', '.bin', 'ava'), [...files, ...avaArgs], {
      cwd: root,
      // ava's report goes to stderr, so stdout carries the figures alone and the JSON line is last either way.
      stdio: ['ignore', process.stderr, process.stderr],
      env: { ...process.env, STEPWISE_FAULT_FIGURES: figuresDir, STEPWISE_FAULTS: mode },
    });
    ava.once('error', reject);
    ava.once('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

/** Every record the tests wrote, summed per figure (absent figures count 0). */
async function sumFigures(dir: string): Promise<{ totals: Required<FaultFigures>; records: number; byName: string[] }> {
  const totals = Object.fromEntries(FIGURE_NAMES.map((n) => [n, 0])) as Required<FaultFigures>;
  const byName: string[] = [];
  const names = existsSync(dir) ? (await readdir(dir)).filter((f) => f.endsWith('.json')).sort() : [];
  for (const file of names) {
    const record = JSON.parse(await readFile(join(dir, file), 'utf8')) as FaultFigures & { name: string };
    const seen: string[] = [];
    for (const name of FIGURE_NAMES) {
      const value = record[name];
      if (typeof value !== 'number' || !Number.isFinite(value)) continue;
      totals[name] += value;
      seen.push(`${name}=${value}`);
    }
    byName.push(`${record.name}: ${seen.join(' ')}`);
  }
  return { totals, records: names.length, byName };
}

async function main(): Promise<void> {
  const files = named.length ? named : await faultTestFiles();
  const figuresDir = await mkdtemp(join(tmpdir(), 'stepwise-fault-figures-'));
  const started = Date.now();
  console.error(`bench:faults (${mode}): ${files.length} test files\n  ${files.join('\n  ')}`);
  let code: number;
  try {
    code = await runAva(files, figuresDir);
    const { totals, records, byName } = await sumFigures(figuresDir);
    console.error(`\nfigures by fault:\n  ${byName.join('\n  ') || '(none recorded)'}\n`);
    const durationS = Math.round((Date.now() - started) / 100) / 10;
    console.log(JSON.stringify({ ...totals, mode, durationS, files: files.length, records, testsPassed: code === 0 }));
  } finally {
    await rm(figuresDir, { recursive: true, force: true });
  }
  process.exitCode = code === 0 ? 0 : 1;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
