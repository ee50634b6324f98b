/**
 * Validation of a batch's input file, as OpenAI validates it: a malformed line (bad JSON, no `custom_id`, a repeated
 * `custom_id`, another method or URL) fails the whole batch, with `errors` naming the line, and so do more lines
 * than a batch takes. A pure function of the file, so its rules read in one place.
 */
import type { BatchError, InputLine } from './model';

/** A line's error before its line number is known. */
type LineError = Omit<BatchError, 'line'>;

/**
 * The requests of an input file, or the errors that fail its batch (every one found, in line order; `lines` is
 * then of no use).
 */
export function parseBatchInput(
  content: Buffer,
  endpoint: string,
  maxLines: number
): { lines: InputLine[]; errors: BatchError[] } {
  const lines: InputLine[] = [];
  const errors: BatchError[] = [];
  const seen = new Set<string>();
  for (const [i, raw] of content.toString('utf8').split('\n').entries()) {
    if (raw.trim() === '') continue;
    const checked = checkLine(raw, seen, endpoint);
    if ('code' in checked) {
      errors.push({ ...checked, line: i + 1 });
    } else {
      seen.add(checked.custom_id);
      lines.push(checked);
    }
  }
  if (errors.length === 0 && lines.length === 0) {
    errors.push({ code: 'empty_file', message: 'The input file has no requests.', param: null, line: null });
  }
  if (lines.length > maxLines) {
    errors.push({
      code: 'too_many_requests',
      message: `The input file has ${lines.length} requests; a batch takes at most ${maxLines}.`,
      param: null,
      line: null,
    });
  }
  return { lines, errors };
}

/** One non-blank line: its request, or the first rule it breaks. */
function checkLine(raw: string, seen: ReadonlySet<string>, endpoint: string): InputLine | LineError {
  const error = (code: string, message: string, param: string | null = null): LineError => ({ code, message, param });
  let line: Record<string, unknown>;
  try {
    line = JSON.parse(raw);
  } catch {
    return error('invalid_json_line', 'This line is not parseable as valid JSON.');
  }
  if (typeof line !== 'object' || line === null || Array.isArray(line)) {
    return error('invalid_json_line', 'This line is not a JSON object.');
  } else if (typeof line.custom_id !== 'string' || line.custom_id === '') {
    return error('missing_required_parameter', 'Missing required parameter: custom_id.', 'custom_id');
  } else if (seen.has(line.custom_id)) {
    return error('duplicate_custom_id', `The custom_id '${line.custom_id}' is used more than once.`, 'custom_id');
  } else if (line.method !== 'POST') {
    return error('invalid_request', `method is ${JSON.stringify(line.method)}; expected 'POST'.`, 'method');
  } else if (line.url !== endpoint) {
    return error('mismatched_endpoint', `url is ${JSON.stringify(line.url)}; the batch's endpoint is ${endpoint}.`);
  } else if (typeof line.body !== 'object' || line.body === null) {
    return error('missing_required_parameter', 'Missing required parameter: body.', 'body');
  }
  return { custom_id: line.custom_id, body: line.body };
}
