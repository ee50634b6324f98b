/**
 * Data roots: the folders a worker reads spec-named files under (`STEPWISE_DATA_ROOTS`, infra/config.ts). A spec is
 * untrusted input that travels through Temporal to whichever worker polls; without a bound, anyone who can start a
 * run could make a worker read `/etc/passwd` into the store (and into a model's training data, where it can leak
 * back out). Every path is compared by its real path, so neither `..` nor a symlink inside a root leads out of it.
 */
import { open, realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { InputError } from '../errors';
import { referenceSplitPath } from './reference';

import { isModelRef, type PipelineSpec } from '../pipeline/spec';

/** The sections of a spec that name paths (teacher and student may be left out by callers that have none). */
export type SpecWithPaths = Pick<PipelineSpec, 'data'> & Partial<Pick<PipelineSpec, 'teacher' | 'student'>>;

/** A path a spec names, and the spec field that named it (for the error message). */
export interface SpecPath {
  field: string;
  path: string;
  /** What must be there: a data file, a folder in the reference layout, or a student checkpoint. */
  kind: 'file' | 'dir' | 'checkpoint';
}

/**
 * The real path of `path` (resolved against the current folder), or of its deepest existing ancestor with the rest
 * appended: a file that does not exist yet is still placed by the real path of the folder it would be in, so a
 * symlinked folder pointing out of a root is caught either way.
 */
async function realPathOf(path: string): Promise<string> {
  const absolute = resolve(path);
  try {
    return await realpath(absolute);
  } catch (err) {
    const parent = dirname(absolute);
    if (parent === absolute || !isMissing(err)) return absolute;
    return join(await realPathOf(parent), basename(absolute));
  }
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!isAbsolute(rel) && rel !== '..' && !rel.startsWith(`..${sep}`));
}

/**
 * The real path of `path` when it lies under one of `roots`.
 * @throws InputError naming `field` when it does not (or when no roots are configured at all).
 */
export async function resolveInRoots(path: string, field: string, roots: readonly string[]): Promise<string> {
  const real = await realPathOf(path);
  const realRoots = await Promise.all(roots.map(realPathOf));
  if (realRoots.some((root) => isInside(root, real))) return real;
  const via = real === path ? '' : ` (it resolves to ${real})`;
  throw new InputError(
    `${field}: ${path}${via} is outside the data roots (${roots.join(', ') || 'none'}); expected a path under ` +
      'one of them (STEPWISE_DATA_ROOTS on the worker sets them)',
    field
  );
}

/** Every path a spec names that a worker will read: data, recorded completions and the init checkpoint. */
export function specPaths(spec: SpecWithPaths): SpecPath[] {
  const paths: SpecPath[] = [];
  const { data, teacher, student } = spec;
  if (data.kind === 'reference') paths.push({ field: 'data.dir', path: data.dir, kind: 'dir' });
  if (data.kind === 'jsonl') {
    paths.push({ field: 'data.train', path: data.train, kind: 'file' });
    paths.push({ field: 'data.test', path: data.test, kind: 'file' });
    if (data.valid !== undefined) paths.push({ field: 'data.valid', path: data.valid, kind: 'file' });
  }
  if (teacher?.kind === 'replay' && teacher.dir !== undefined) {
    paths.push({ field: 'teacher.dir', path: teacher.dir, kind: 'dir' });
  }
  // A registry reference (`my-model@champion`) is no path: the workflow resolves it in the store.
  if (student?.init !== undefined && !isModelRef(student.init)) {
    paths.push({ field: 'student.init', path: student.init, kind: 'checkpoint' });
  }
  return paths;
}

/**
 * Refuses a spec that names a path outside the roots, a missing file or folder, or a `student.init` that is not a
 * Stepwise checkpoint: the sample stage calls this before it reads anything, so such a run stops at its first stage
 * instead of after an expensive teacher stage. Reads only the checkpoint's header, never its weights.
 * @throws InputError naming the first offending field.
 */
export async function checkSpecPaths(spec: SpecWithPaths, roots: readonly string[]): Promise<void> {
  for (const entry of specPaths(spec)) {
    const real = await resolveInRoots(entry.path, entry.field, roots);
    const found = await stat(real).catch((err: NodeJS.ErrnoException) => {
      // A relative path is the worker's to resolve: the absolute one shows which folder it looked in.
      const where = isAbsolute(entry.path) ? '' : ` (${resolve(entry.path)})`;
      throw new InputError(
        err.code === 'ENOENT'
          ? `${entry.field}: ${entry.path}${where} does not exist; expected ${EXPECTED[entry.kind](entry.field)}`
          : `${entry.field}: ${entry.path}${where} cannot be read (${err.code ?? err.message})`,
        entry.field
      );
    });
    const wantDir = entry.kind === 'dir';
    if (found.isDirectory() !== wantDir) {
      throw new InputError(
        `${entry.field}: ${entry.path} is ${found.isDirectory() ? 'a folder' : 'not a folder'}; expected ${
          wantDir ? 'a folder' : 'a file'
        }`,
        entry.field
      );
    }
    if (entry.kind === 'checkpoint') await checkCheckpointHeader(real, entry);
  }
  if (spec.data.kind === 'reference') await checkReferenceLayout(spec.data.dir, spec.data.task);
}

/**
 * A reference folder must hold the task's train and test splits. Its first read would fail anyway; said here, the
 * message names the layout, and a command that checks before it starts anything can refuse the run at once.
 */
async function checkReferenceLayout(dir: string, task: Parameters<typeof referenceSplitPath>[1]): Promise<void> {
  for (const split of ['train', 'test'] as const) {
    const file = referenceSplitPath(dir, task, split);
    const isFile = await stat(file).then(
      (s) => s.isFile(),
      () => false
    );
    if (!isFile) {
      throw new InputError(
        `data.dir: ${dir} has no ${relative(dir, file)}; expected the reference layout, <dir>/<task>/<task>_<split>.json ` +
          `(is it the folder above ${task}/?)`,
        'data.dir'
      );
    }
  }
}

/** What a spec path must name, for the message when it names nothing. */
const EXPECTED: Record<SpecPath['kind'], (field: string) => string> = {
  dir: (field) =>
    field === 'data.dir'
      ? "a folder in the reference layout, <dir>/<task>/<task>_<split>.json (the paper's datasets.zip, unpacked)"
      : 'a folder of recorded teacher completions, <dir>/<task>/llm/<split>_CoT_<i>.json',
  file: () => 'a JSON Lines file, one {"input", "label"} object per line',
  checkpoint: () => 'a checkpoint from `stepwise import-t5`, or a registered model as <name>@<version or alias>',
};

/** A header larger than this is not a student checkpoint's (a base T5's, tokenizer included, is a few MB). */
const MAX_CHECKPOINT_HEADER_BYTES = 256 * 1024 * 1024;

/** The metadata a Stepwise checkpoint carries (lib/student/checkpoint.ts reads the same keys when it loads one). */
const CHECKPOINT_METADATA = ['config', 'tokenizer', 'training'];

/** Whether the file starts like a Stepwise safetensors checkpoint: header length, JSON header, our metadata. */
async function checkCheckpointHeader(real: string, entry: SpecPath): Promise<void> {
  const notOne = (why: string): never => {
    throw new InputError(
      `${entry.field}: ${entry.path} is not a Stepwise checkpoint (${why}); expected a file from \`stepwise import-t5\` ` +
        'or a registered model',
      entry.field
    );
  };
  const file = await open(real, 'r');
  try {
    const size = (await file.stat()).size;
    if (size < 8) return notOne(`${size} bytes, shorter than the 8-byte header length`);
    const head = Buffer.alloc(8);
    await file.read(head, 0, 8, 0);
    const length = Number(head.readBigUInt64LE(0));
    if (length < 2 || length > size - 8 || length > MAX_CHECKPOINT_HEADER_BYTES) {
      return notOne(`header length ${length} does not fit the file's ${size} bytes`);
    }
    const header = Buffer.alloc(length);
    await file.read(header, 0, length, 8);
    let parsed: unknown;
    try {
      parsed = JSON.parse(header.toString('utf8'));
    } catch {
      return notOne('its header is not JSON');
    }
    const metadata = (parsed as { __metadata__?: Record<string, unknown> } | null)?.__metadata__;
    const missing = CHECKPOINT_METADATA.filter((key) => typeof metadata?.[key] !== 'string');
    if (missing.length > 0) notOne(`its metadata has no ${missing.join(', ')}`);
  } finally {
    await file.close();
  }
}
