// @ts-check
import tseslint from 'typescript-eslint';
import { importX } from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

const NODE_BUILTINS = [
  'fs',
  'path',
  'crypto',
  'child_process',
  'http',
  'https',
  'net',
  'os',
  'stream',
  'url',
  'worker_threads',
  'zlib',
];

/**
 * The layers, top first: cli → workers → workflows → activities → contract → lib → infra. Each folder may import
 * only downward (everyone may import contract/, except lib/ and infra/ below it). ARCHITECTURE.md explains why; these
 * rules are what keeps it true. A relative import is matched by the folder it names, wherever the importer sits.
 */
const folder = (name) => `^(\\.\\./)+${name}(/|$)`;
const forbid = (names, why) => names.map((name) => ({ regex: folder(name), message: why }));

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', '.stepwise/**', 'test/fixtures/*.json'] },
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-require-imports': 'off',
    },
  },
  {
    // The CommonJS launcher registers the TypeScript loader with require(): that is its whole job.
    files: ['bin/*.js'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // Import cycles make load order matter and hide which module is the lower one: none in production code.
    files: ['{contract,workflows,activities,workers,infra,lib,cli}/**/*.ts'],
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [createTypeScriptImportResolver()],
      // The rule follows only files it may parse: ours are TypeScript.
      'import-x/extensions': ['.ts'],
      'import-x/parsers': { '@typescript-eslint/parser': ['.ts'] },
    },
    rules: { 'import-x/no-cycle': ['error', { ignoreExternal: true }] },
  },
  {
    // Domain libraries run the same in a test, a bench and a worker: they know nothing of Temporal or of the layers
    // that orchestrate them.
    files: ['lib/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['@temporalio/*'], message: 'lib/ knows nothing of Temporal: put Temporal code in activities/' },
            ...forbid(
              ['activities', 'workflows', 'workers', 'cli', 'contract'],
              'lib/ is below every other layer: pass what it needs in as arguments'
            ),
          ],
        },
      ],
    },
  },
  {
    // Stage types live in contract/, so nothing here needs the workflows (or the processes that host them).
    files: ['activities/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        { patterns: forbid(['workflows', 'workers', 'cli'], 'activities/ import the contract, never workflows/') },
      ],
    },
  },
  {
    // The contract sits under everything that orchestrates: declarations and lib types only.
    files: ['contract/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: forbid(
            ['activities', 'workflows', 'workers', 'cli', 'infra'],
            'contract/ is imported by every layer and imports none of them'
          ),
        },
      ],
    },
  },
  {
    // Workflow code is replayed deterministically in a sandbox: no I/O, no Node built-ins, and nothing but the
    // contract, the Temporal workflow API and the spec (which the workflow validates before any stage runs).
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '^(?!\\.|@temporalio/workflow$)',
              message: 'workflows/ import only @temporalio/workflow among packages (no Node built-ins, no I/O)',
            },
            {
              regex: '^\\.\\./(?!contract$|lib/pipeline/spec(-rules)?$)',
              message: 'workflows/ import only the contract and lib/pipeline/spec(-rules) from other folders',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['test/fixtures/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: NODE_BUILTINS.flatMap((m) => [m, `node:${m}`]).map((name) => ({
            name,
            message: 'no Node built-ins in workflow code',
          })),
        },
      ],
    },
  }
);
