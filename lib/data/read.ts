import { readFile } from 'node:fs/promises';
import { InputError } from '../errors';

/** Error codes that mean "the path the user gave is wrong", as opposed to a transient fault worth retrying. */
const USER_PATH_ERRORS = new Set(['ENOENT', 'ENOTDIR', 'EISDIR', 'EACCES']);

/** Bytes a single example line may take: far beyond any input a student can read, far below what floods a worker. */
export const MAX_LINE_BYTES = 1024 * 1024;

/**
 * Reads a UTF-8 file; a missing or unreadable path, or bytes that are not UTF-8, are the user's input, so they become
 * an InputError naming the file (and the first bad line). Decoding is strict: a lenient decode would silently turn a
 * Latin-1 file's accents into U+FFFD and train on the damage.
 * @param field the field reported with the error (the spec field that named the file, where the caller knows it).
 */
export async function readTextFile(path: string, what: string, field = 'path'): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== undefined && USER_PATH_ERRORS.has(code)) {
      throw new InputError(`${what} ${path} cannot be read (${code}); expected a readable file`, field);
    }
    throw err;
  }
  return decodeUtf8(path, bytes, field);
}

/**
 * Decodes strict UTF-8.
 * @throws InputError naming `file:line` of the first line that is not valid UTF-8.
 */
export function decodeUtf8(path: string, bytes: Uint8Array, field = 'path'): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    // Only on the failure path: find the line. A newline byte never occurs inside a multi-byte UTF-8 sequence.
    const decoder = new TextDecoder('utf-8', { fatal: true });
    let start = 0;
    for (let line = 1; start <= bytes.length; line++) {
      let end = bytes.indexOf(0x0a, start);
      if (end === -1) end = bytes.length;
      try {
        decoder.decode(bytes.subarray(start, end));
      } catch {
        throw new InputError(`${path}:${line}: not valid UTF-8; expected a UTF-8 text file`, field);
      }
      start = end + 1;
    }
    throw new InputError(`${path}: not valid UTF-8; expected a UTF-8 text file`, field);
  }
}

/** One parsed line of a JSON-lines file. */
export interface JsonLine {
  /** 0-based index among the non-blank lines: the example's row, which lines up with recorded completions. */
  row: number;
  /** 1-based line number in the file, for error messages. */
  line: number;
  value: Record<string, unknown>;
}

/**
 * Parses JSON lines, skipping blank lines (a trailing newline is normal). Every line must hold a JSON object of at
 * most {@link MAX_LINE_BYTES}; anything else is an InputError naming `file:line`.
 * @param field the field reported with an error (the spec field that named the file, where the caller knows it).
 */
export function parseJsonLines(path: string, text: string, field = 'path'): JsonLine[] {
  const out: JsonLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    // Characters bound bytes from below, so the byte count is only taken for lines that might be over.
    if (raw.length > MAX_LINE_BYTES / 4 && Buffer.byteLength(raw) > MAX_LINE_BYTES) {
      throw new InputError(
        `${path}:${i + 1}: a line of ${(Buffer.byteLength(raw) / 1e6).toFixed(1)} MB; expected at most ` +
          `${MAX_LINE_BYTES / 1024 / 1024} MiB per example`,
        field
      );
    }
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      throw new InputError(
        `${path}:${i + 1}: not valid JSON (${(err as Error).message}); expected one JSON object per line`,
        field
      );
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new InputError(`${path}:${i + 1}: got ${describe(value)}; expected a JSON object per line`, field);
    }
    out.push({ row: out.length, line: i + 1, value: value as Record<string, unknown> });
  }
  return out;
}

/** Reads a string field of a JSON-lines row, or throws an InputError naming file, line, field and what it held. */
export function stringField(path: string, entry: JsonLine, field: string): string {
  const value = entry.value[field];
  if (typeof value !== 'string') {
    throw new InputError(`${path}:${entry.line}: field "${field}" is ${describe(value)}; expected a string`, field);
  }
  return value;
}

/** A short description of a JSON value for error messages, so a huge value does not flood the log. */
export function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object') return 'an object';
  const text = JSON.stringify(value);
  return `${typeof value} ${text.length > 60 ? text.slice(0, 57) + '...' : text}`;
}
