/**
 * Loaded by path (`DataConverter.failureConverterPath`) in workers and clients, and bundled into the workflow sandbox,
 * when payloads are encrypted: error messages and stack traces go into the failure's encoded attributes, a payload the
 * codec seals, instead of the history's plain-text fields. Kept free of Node built-ins because the sandbox loads it.
 */
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
