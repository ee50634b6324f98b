/**
 * A small multipart/form-data parser (RFC 7578) for the local teacher server's file uploads. It handles what HTTP
 * clients send (the `openai` SDK posts a FormData through fetch): a boundary from the content type, parts with a
 * Content-Disposition naming the field and, for files, the filename. The body is already in memory and bounded by
 * the caller; parts are views into it, not copies.
 */
import { HttpError } from './http';

export interface FormPart {
  /** The form field's name. */
  name: string;
  /** Set for file parts. */
  filename?: string;
  contentType?: string;
  data: Buffer;
}

/** A form has a handful of fields; refusing more keeps a hostile body from costing much. */
const MAX_PARTS = 32;
const HEADER_END = Buffer.from('\r\n\r\n');

/**
 * The parts of a multipart/form-data body, by field name (the last part wins when a name repeats).
 * @throws HttpError 400 when the content type has no boundary or the body is not well formed.
 */
export function parseMultipart(body: Buffer, contentType: string | undefined): Map<string, FormPart> {
  const boundary = boundaryOf(contentType);
  const bad = (why: string) => new HttpError(400, `the multipart/form-data body is malformed: ${why}`);
  const delimiter = Buffer.from(`--${boundary}`);
  // Parts are separated by CRLF + delimiter; the first delimiter may start the body or follow a preamble.
  const separator = Buffer.from(`\r\n--${boundary}`);
  let at = body.subarray(0, delimiter.length).equals(delimiter) ? 0 : body.indexOf(separator);
  if (at === -1) throw bad('no boundary delimiter found');
  at += at === 0 ? delimiter.length : separator.length;

  const parts = new Map<string, FormPart>();
  for (let count = 0; ; count++) {
    // After a delimiter: `--` closes the body, CRLF starts a part.
    if (body.subarray(at, at + 2).toString('latin1') === '--') return parts;
    if (body.subarray(at, at + 2).toString('latin1') !== '\r\n') throw bad('expected CRLF after a boundary');
    if (count === MAX_PARTS) throw bad(`more than ${MAX_PARTS} parts`);
    const headersEnd = body.indexOf(HEADER_END, at + 2);
    if (headersEnd === -1) throw bad('a part has no end of headers');
    const headers = parseHeaders(body.subarray(at + 2, headersEnd).toString('utf8'));
    const dataStart = headersEnd + HEADER_END.length;
    const dataEnd = body.indexOf(separator, dataStart);
    if (dataEnd === -1) throw bad('the last part is not closed by a boundary');
    const disposition = headers.get('content-disposition');
    const name = disposition && dispositionParam(disposition, 'name');
    if (!disposition || !/^\s*form-data\s*(;|$)/i.test(disposition) || name === undefined) {
      throw bad('a part lacks Content-Disposition: form-data; name="..."');
    }
    parts.set(name, {
      name,
      filename: dispositionParam(disposition, 'filename'),
      contentType: headers.get('content-type'),
      data: body.subarray(dataStart, dataEnd),
    });
    at = dataEnd + separator.length;
  }
}

function boundaryOf(contentType: string | undefined): string {
  const match = /^\s*multipart\/form-data\s*;(?:.*;)?\s*boundary=(?:"([^"]+)"|([^\s;]+))/i.exec(contentType ?? '');
  if (match === null) {
    throw new HttpError(
      400,
      `content-type is ${JSON.stringify(contentType ?? null)}; expected multipart/form-data with a boundary`
    );
  }
  return match[1] ?? match[2];
}

function parseHeaders(text: string): Map<string, string> {
  const headers = new Map<string, string>();
  for (const line of text.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  return headers;
}

/**
 * A parameter of a Content-Disposition value. Browsers and undici escape `"`, CR and LF in names as %22, %0D and
 * %0A (the HTML form-encoding rule), so those are decoded back.
 */
function dispositionParam(disposition: string, param: string): string | undefined {
  const match = new RegExp(`;\\s*${param}=(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s]*))`, 'i').exec(disposition);
  if (match === null) return undefined;
  const raw = match[1] ?? match[2];
  return raw.replace(/%22/g, '"').replace(/%0D/gi, '\r').replace(/%0A/gi, '\n');
}
