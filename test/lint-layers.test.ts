/**
 * The layer rules in eslint.config.mjs catch what they claim to: each probe is a real file in the folder whose rule
 * it breaks, linted with the project's own configuration, and a lawful twin shows the rule is not simply blanket.
 */
import test from 'ava';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ESLint } from 'eslint';

const ROOT = join(__dirname, '..');
const tag = `lint-probe-${process.pid}`;

interface Probe {
  file: string;
  source: string;
}

/** Writes the probes, lints them with the repository's config, and returns each file's rule ids. */
async function lint(probes: Probe[]): Promise<Map<string, string[]>> {
  const paths = probes.map((p) => join(ROOT, p.file));
  try {
    await Promise.all(probes.map((p, i) => writeFile(paths[i], p.source)));
    const results = await new ESLint({ cwd: ROOT }).lintFiles(paths);
    return new Map(
      results.map((r) => [r.filePath.slice(ROOT.length + 1), r.messages.map((m) => m.ruleId ?? m.message)])
    );
  } finally {
    await Promise.all(paths.map((p) => rm(p, { force: true })));
  }
}

test('lint rejects imports against the layers and accepts the lawful ones', async (t) => {
  const found = await lint([
    { file: `lib/${tag}-temporal.ts`, source: "export { Context } from '@temporalio/activity';\n" },
    { file: `lib/${tag}-up.ts`, source: "export type { Activities } from '../contract';\n" },
    { file: `lib/${tag}-ok.ts`, source: "export type { ArtifactRef } from './store/artifact-store';\n" },
    { file: `activities/${tag}-up.ts`, source: "export { distillationPipeline } from '../workflows';\n" },
    { file: `activities/${tag}-ok.ts`, source: "export type { Activities } from '../contract';\n" },
    { file: `workflows/${tag}-io.ts`, source: "export { readFileSync } from 'node:fs';\n" },
    { file: `workflows/${tag}-lib.ts`, source: "export { openStore } from '../lib/store';\n" },
    { file: `workflows/${tag}-acts.ts`, source: "export type { ActivityDeps } from '../activities';\n" },
    {
      file: `workflows/${tag}-ok.ts`,
      source:
        "export { proxyActivities } from '@temporalio/workflow';\nexport { parseSpec } from '../lib/pipeline/spec';\n" +
        "export { progressQuery } from '../contract';\n",
    },
  ]);
  const rules = (file: string) => found.get(file) ?? [];
  for (const file of [
    `lib/${tag}-temporal.ts`,
    `lib/${tag}-up.ts`,
    `activities/${tag}-up.ts`,
    `workflows/${tag}-io.ts`,
    `workflows/${tag}-lib.ts`,
    `workflows/${tag}-acts.ts`,
  ]) {
    t.true(rules(file).includes('no-restricted-imports'), `${file}: ${rules(file).join(', ') || 'no errors'}`);
  }
  for (const file of [`lib/${tag}-ok.ts`, `activities/${tag}-ok.ts`, `workflows/${tag}-ok.ts`]) {
    t.deepEqual(rules(file), [], file);
  }
});

test('lint rejects an import cycle', async (t) => {
  const found = await lint([
    { file: `lib/${tag}-a.ts`, source: `import { b } from './${tag}-b';\nexport const a = () => b;\n` },
    { file: `lib/${tag}-b.ts`, source: `import { a } from './${tag}-a';\nexport const b = () => a;\n` },
  ]);
  t.true(found.get(`lib/${tag}-a.ts`)?.includes('import-x/no-cycle'), JSON.stringify([...found]));
});
