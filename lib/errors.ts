/**
 * Bad user input (a spec field, a CLI flag, a malformed dataset row). Never retried: activities map it to a
 * non-retryable ApplicationFailure, so a bad run fails at once with this message instead of burning retries.
 * The message names the field, the value and what was expected.
 */
export class InputError extends Error {
  constructor(
    message: string,
    /** Dotted path of the offending field, e.g. `teacher.url` or `data.fraction`. */
    readonly field?: string
  ) {
    super(message);
    this.name = 'InputError';
  }
}

/**
 * A loader's InputError restated against the spec field that named its file (`data.train: /d/a.jsonl:3: ...`): the
 * loader knows the file and line, only the caller knows which field of the user's spec pointed at it.
 */
export function inputErrorAt(field: string, err: InputError): InputError {
  const message = err.message.startsWith(`${field}: `) ? err.message : `${field}: ${err.message}`;
  return new InputError(message, field);
}

/** Runs `body`, restating any InputError it throws against `field` ({@link inputErrorAt}); other errors pass. */
export async function withInputField<T>(field: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    throw err instanceof InputError ? inputErrorAt(field, err) : err;
  }
}

/** S3 error codes that mean the server refused the credentials, and the variable holding the one to check. */
const REFUSED_CREDENTIALS: Record<string, string> = {
  SignatureDoesNotMatch: 'AWS_SECRET_ACCESS_KEY',
  InvalidAccessKeyId: 'AWS_ACCESS_KEY_ID',
  // versitygw's answer for an access key it does not know.
  XAdminUserNotFound: 'AWS_ACCESS_KEY_ID',
  InvalidToken: 'AWS_SESSION_TOKEN',
  ExpiredToken: 'AWS_SESSION_TOKEN',
};

/**
 * An S3 credential problem (found anywhere in the error's cause chain) as an InputError naming the variable to fix,
 * or undefined for any other error. No retry fixes a refused key, and the SDK's own error (a stack and the string it
 * signed) does not say which variable is wrong.
 */
export function storeCredentialError(err: unknown): InputError | undefined {
  for (let e = err as { name?: string; Code?: string; message?: string; cause?: unknown } | undefined; e;) {
    const code = e.Code ?? e.name ?? '';
    if (code === 'CredentialsProviderError') {
      return new InputError(
        `the artifact store (STEPWISE_STORE) has no S3 credentials (${e.message}); expected AWS_ACCESS_KEY_ID and ` +
          'AWS_SECRET_ACCESS_KEY, an AWS profile or a role',
        'AWS_ACCESS_KEY_ID'
      );
    }
    const variable = REFUSED_CREDENTIALS[code];
    if (variable !== undefined) {
      return new InputError(
        `the artifact store (STEPWISE_STORE) refused the S3 credentials (${code}: ${e.message}); check ${variable}`,
        variable
      );
    }
    e = e.cause as typeof e;
  }
  return undefined;
}
