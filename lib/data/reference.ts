/**
 * Loaders for the paper's benchmarks in the layout of its released `datasets.zip`
 * (google-research/distilling-step-by-step): `<dir>/<task>/<task>_<split>.json` as JSON lines, and the teacher's
 * raw completions as `<dir>/<task>/llm/<split>_CoT_<i>.json`, JSON arrays of strings in batches.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors';
import { describe, JsonLine, parseJsonLines, readTextFile, stringField } from './read';
import { BenchmarkTask, Example, isBenchmarkTask, isSplit, Split } from './types';

/** NLI label ids as the Hugging Face `esnli` and `anli` datasets store them; the reference maps them to words. */
export const NLI_LABELS = ['entailment', 'neutral', 'contradiction'] as const;

/** Path of one split's examples, `<dir>/<task>/<task>_<split>.json`. */
export function referenceSplitPath(dataDir: string, task: BenchmarkTask, split: Split): string {
  return join(dataDir, task, `${task}_${split}.json`);
}

/** Path of the i-th batch of recorded teacher completions, `<dir>/<task>/llm/<split>_CoT_<i>.json`. */
export function referenceCompletionsPath(dataDir: string, task: BenchmarkTask, split: Split, batch: number): string {
  return join(dataDir, task, 'llm', `${split}_CoT_${batch}.json`);
}

/**
 * CQA's input as the paper writes it: the question, then the choices lettered (a), (b), ... on their own lines.
 * The teacher's answer sentence refers to these letters, which is what the CQA parser relies on.
 */
export function formatCqaInput(question: string, choices: readonly string[]): string {
  const lines = choices.map((choice, i) => `(${String.fromCharCode(97 + i)}) ${choice}`);
  return `${question}\nAnswer Choices:\n${lines.join('\n')}`;
}

/**
 * NLI input. The reference joins premise and hypothesis with T5's `</s>` token, which only means something to
 * T5's own tokenizer; our student has its own vocabulary, so the two parts are named in plain text instead.
 */
export function formatNliInput(premise: string, hypothesis: string): string {
  return `Premise: ${premise}\nHypothesis: ${hypothesis}`;
}

/**
 * Loads one split of a benchmark as examples with the paper's input text and gold label.
 * Ids are `<task>-<split>-<row>` with 0-based rows, the same rows the recorded completions are indexed by.
 * @throws InputError when the file is missing, a line is not a JSON object or a field is missing or mistyped
 *   (the message names file:line and the field).
 */
export async function loadReferenceSplit(dataDir: string, task: BenchmarkTask, split: Split): Promise<Example[]> {
  checkTaskAndSplit(task, split);
  const path = referenceSplitPath(dataDir, task, split);
  const entries = parseJsonLines(path, await readTextFile(path, `${task} ${split} split`));
  if (entries.length === 0) throw new InputError(`${path} holds no examples; expected JSON lines`, 'path');
  return entries.map((entry) => {
    const { input, label } = toInputAndLabel(task, path, entry);
    return { id: `${task}-${split}-${entry.row}`, input, label, source: { split, row: entry.row } };
  });
}

/** Whether a benchmark ships this split (CQA and SVAMP have no `valid` split; the reference carves one from train). */
export async function referenceSplitExists(dataDir: string, task: BenchmarkTask, split: Split): Promise<boolean> {
  checkTaskAndSplit(task, split);
  return isFile(referenceSplitPath(dataDir, task, split));
}

/**
 * The teacher's raw completions for a split, one per example row, by concatenating `<split>_CoT_0.json`,
 * `<split>_CoT_1.json`, ... until the next file is absent. Row k is element `k mod batch` of file `floor(k / batch)`,
 * so every file but the last must be full; a short one in the middle would shift every later row onto the wrong
 * example, and is rejected.
 * @throws InputError when the first file is missing, a file is not a JSON array of strings, or batches are uneven.
 */
export async function loadReferenceCompletions(dataDir: string, task: BenchmarkTask, split: Split): Promise<string[]> {
  checkTaskAndSplit(task, split);
  const batches: { path: string; items: string[] }[] = [];
  for (let i = 0; ; i++) {
    const path = referenceCompletionsPath(dataDir, task, split, i);
    // The first batch must exist (reading it reports a missing one); after that, the first gap ends the split.
    if (i > 0 && !(await isFile(path))) break;
    batches.push({ path, items: parseCompletionBatch(path, await readTextFile(path, `${task} ${split} completions`)) });
  }
  const batchSize = batches[0].items.length;
  for (const batch of batches.slice(0, -1)) {
    if (batch.items.length !== batchSize) {
      throw new InputError(
        `${batch.path} holds ${batch.items.length} completions; expected ${batchSize} like the first batch, ` +
          'since only the last batch may be short',
        'path'
      );
    }
  }
  return batches.flatMap((batch) => batch.items);
}

/**
 * One batch file of recorded completions: a JSON array of strings.
 * @throws InputError (field `path`) naming the file and what it held instead.
 */
export function parseCompletionBatch(path: string, text: string): string[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InputError(
      `${path}: not valid JSON (${(err as Error).message}); expected a JSON array of strings`,
      'path'
    );
  }
  if (!Array.isArray(value)) {
    throw new InputError(`${path}: got ${describe(value)}; expected a JSON array of strings`, 'path');
  }
  value.forEach((item, i) => {
    if (typeof item !== 'string') {
      throw new InputError(
        `${path}: element ${i} is ${describe(item)}; expected a string (a teacher completion)`,
        'path'
      );
    }
  });
  return value as string[];
}

function toInputAndLabel(task: BenchmarkTask, path: string, entry: JsonLine): { input: string; label: string } {
  switch (task) {
    case 'cqa': {
      const question = stringField(path, entry, 'question');
      const choices = entry.value.choices;
      if (!Array.isArray(choices) || choices.length < 2 || choices.length > 26 || !choices.every(isString)) {
        throw new InputError(
          `${path}:${entry.line}: field "choices" is ${describe(choices)}; expected an array of 2 to 26 strings`,
          'choices'
        );
      }
      return { input: formatCqaInput(question, choices), label: stringField(path, entry, 'answer') };
    }
    case 'svamp':
      return { input: stringField(path, entry, 'input'), label: stringField(path, entry, 'label') };
    case 'esnli':
    case 'anli1': {
      const premise = stringField(path, entry, 'premise');
      const hypothesis = stringField(path, entry, 'hypothesis');
      return { input: formatNliInput(premise, hypothesis), label: nliLabel(path, entry) };
    }
  }
}

/** Hugging Face stores NLI labels as ids 0/1/2; a file already converted to words is accepted too. */
function nliLabel(path: string, entry: JsonLine): string {
  const value = entry.value.label;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < NLI_LABELS.length) {
    return NLI_LABELS[value];
  }
  if (typeof value === 'string' && (NLI_LABELS as readonly string[]).includes(value)) return value;
  throw new InputError(
    `${path}:${entry.line}: field "label" is ${describe(value)}; expected 0, 1 or 2 (or ${NLI_LABELS.join(', ')})`,
    'label'
  );
}

function checkTaskAndSplit(task: unknown, split: unknown): void {
  if (!isBenchmarkTask(task)) {
    throw new InputError(`task is ${JSON.stringify(task)}; expected one of cqa, svamp, esnli, anli1`, 'task');
  }
  if (!isSplit(split)) {
    throw new InputError(`split is ${JSON.stringify(split)}; expected one of train, valid, test`, 'split');
  }
}

function isString(value: unknown): value is string {
  return typeof value === 'string';
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
