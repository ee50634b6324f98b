/**
 * Encrypted Temporal payloads. With keys configured, every payload a client or worker sends (specs, stage inputs and
 * results, signals, queries, failure messages) is sealed with AES-256-GCM before it leaves the process, so the
 * Temporal server, its database and anyone reading its histories see ciphertext and a key id, never the data.
 *
 * The format is the one Temporal's encryption samples use in every language (the serialized `Payload` proto, sealed
 * as `iv ‖ ciphertext ‖ tag`, metadata `encoding: binary/encrypted` and `encryption-key-id`), so a codec server in
 * another language can read what this one wrote. Codecs run outside the workflow sandbox: the workflow bundle and
 * its determinism are untouched.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { METADATA_ENCODING_KEY, type DataConverter, type Payload, type PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { InputError } from '../lib/errors';
import { settings, type StepwiseSettings } from '../infra/config';

export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';

/** AES-256: 32-byte keys. GCM: a 96-bit IV (the size GCM is specified for) and a 128-bit tag. */
const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** One key of the ring: the id recorded in each payload it sealed, and the 32 key bytes. */
export interface PayloadKey {
  id: string;
  key: Buffer;
}

/** A payload this process cannot open: sealed with a key it does not have, tampered with, or malformed. */
export class PayloadCodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadCodecError';
  }
}

/**
 * Parses a key ring: `id:base64key` entries separated by commas or newlines (`#` starts a comment line in a file).
 * The first key seals new payloads; every key opens payloads recorded under its id, which is how keys rotate: put the
 * new key first and keep the old ones until no history needs them.
 * @param source the variable (or file) the text came from, named in every error.
 * @throws InputError naming `source` for an empty ring, a malformed entry, a key that is not 32 bytes, or a repeated id.
 */
export function parsePayloadKeys(text: string, source: string): PayloadKey[] {
  const entries = text
    .split(/[,\n]/)
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '' && !entry.startsWith('#'));
  if (entries.length === 0) throw new InputError(`${source} holds no keys; expected id:base64key[,…]`, source);
  const keys: PayloadKey[] = [];
  for (const [n, entry] of entries.entries()) {
    const at = `${source} entry ${n + 1}`;
    const colon = entry.indexOf(':');
    // The key material is never echoed: an error message ends up in logs and terminals.
    if (colon < 0) throw new InputError(`${at} has no ':'; expected id:base64key`, source);
    const id = entry.slice(0, colon);
    const encoded = entry.slice(colon + 1);
    if (!KEY_ID.test(id)) {
      throw new InputError(`${at} has key id ${JSON.stringify(id)}; expected 1-64 of A-Z a-z 0-9 . _ -`, source);
    }
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) {
      throw new InputError(`${at} (key id ${id}) is not base64; expected id:base64key`, source);
    }
    const key = Buffer.from(encoded, 'base64');
    if (key.length !== KEY_BYTES) {
      throw new InputError(
        `${at} (key id ${id}) is ${key.length} bytes; expected ${KEY_BYTES} (AES-256), e.g. from \`openssl rand -base64 32\``,
        source
      );
    }
    if (keys.some((k) => k.id === id)) throw new InputError(`${at} repeats key id ${id}; ids must be unique`, source);
    keys.push({ id, key });
  }
  return keys;
}

/**
 * The key ring configured for this process (`STEPWISE_PAYLOAD_KEYS` or `STEPWISE_PAYLOAD_KEYS_FILE`), or undefined
 * when payloads are not encrypted.
 * @throws InputError naming the variable when both are set, the file cannot be read, or a key is malformed.
 */
export function payloadKeysFromSettings(s: StepwiseSettings = settings()): PayloadKey[] | undefined {
  if (s.payloadKeys !== undefined && s.payloadKeysFile !== undefined) {
    throw new InputError(
      'STEPWISE_PAYLOAD_KEYS and STEPWISE_PAYLOAD_KEYS_FILE are both set; set one, so one list decides which key encrypts',
      'STEPWISE_PAYLOAD_KEYS_FILE'
    );
  }
  if (s.payloadKeys !== undefined) return parsePayloadKeys(s.payloadKeys, 'STEPWISE_PAYLOAD_KEYS');
  if (s.payloadKeysFile === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(s.payloadKeysFile, 'utf8');
  } catch (err) {
    throw new InputError(
      `STEPWISE_PAYLOAD_KEYS_FILE names ${s.payloadKeysFile}, which cannot be read: ${(err as Error).message}`,
      'STEPWISE_PAYLOAD_KEYS_FILE'
    );
  }
  return parsePayloadKeys(text, `STEPWISE_PAYLOAD_KEYS_FILE (${s.payloadKeysFile})`);
}

/**
 * AES-256-GCM over whole payloads, with a fresh random IV for each (GCM must never reuse an IV under one key; at 96
 * random bits the chance of a repeat stays negligible far beyond any history's size).
 */
export class AesGcmPayloadCodec implements PayloadCodec {
  private readonly primary: PayloadKey;
  private readonly byId: Map<string, Buffer>;

  constructor(keys: readonly PayloadKey[]) {
    if (keys.length === 0) throw new InputError('an encrypting codec needs at least one key', 'STEPWISE_PAYLOAD_KEYS');
    this.primary = keys[0];
    this.byId = new Map(keys.map((k) => [k.id, k.key]));
  }

  /** The id new payloads are sealed under. */
  get primaryKeyId(): string {
    return this.primary.id;
  }

  /** Every key id this codec can open. */
  get keyIds(): string[] {
    return [...this.byId.keys()];
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => this.seal(payload));
  }

  /**
   * Opens sealed payloads; others pass through unchanged, so histories written before encryption was switched on
   * stay readable.
   * @throws PayloadCodecError for an unknown key id, a failed authentication (tampered bytes, or the wrong key under
   *   that id) or a payload too short to hold an IV and a tag.
   */
  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => (encodingOf(payload) === ENCRYPTED_ENCODING ? this.open(payload) : payload));
  }

  private seal(payload: Payload): Payload {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.primary.key, iv);
    const plain = temporal.api.common.v1.Payload.encode(payload).finish();
    const sealed = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return {
      metadata: {
        [METADATA_ENCODING_KEY]: Buffer.from(ENCRYPTED_ENCODING),
        [KEY_ID_METADATA]: Buffer.from(this.primary.id),
      },
      data: sealed,
    };
  }

  private open(payload: Payload): Payload {
    const idBytes = payload.metadata?.[KEY_ID_METADATA];
    if (!idBytes) throw new PayloadCodecError(`an encrypted payload has no ${KEY_ID_METADATA} metadata`);
    const id = Buffer.from(idBytes).toString('utf8');
    const key = this.byId.get(id);
    if (!key) {
      throw new PayloadCodecError(
        `payload encrypted with key id ${JSON.stringify(id)}, which is not among this process's keys ` +
          `(${this.keyIds.join(', ')}); add it to STEPWISE_PAYLOAD_KEYS (after the primary) to read it`
      );
    }
    const data = Buffer.from(payload.data ?? []);
    if (data.length < IV_BYTES + TAG_BYTES) {
      throw new PayloadCodecError(`an encrypted payload (key id ${id}) is ${data.length} bytes: too short to be one`);
    }
    const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, IV_BYTES));
    decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
    let plain: Buffer;
    try {
      plain = Buffer.concat([decipher.update(data.subarray(IV_BYTES, data.length - TAG_BYTES)), decipher.final()]);
    } catch {
      throw new PayloadCodecError(
        `an encrypted payload failed authentication under key id ${id}: it was altered, or sealed with another key ` +
          'under the same id'
      );
    }
    return temporal.api.common.v1.Payload.decode(plain);
  }
}

function encodingOf(payload: Payload): string | undefined {
  const encoding = payload.metadata?.[METADATA_ENCODING_KEY];
  return encoding ? Buffer.from(encoding).toString('utf8') : undefined;
}

/**
 * The module whose `failureConverter` moves error messages and stack traces into an (encrypted) payload: they often
 * quote a spec's values, and Temporal otherwise stores them in the clear. Loaded by path because the workflow
 * sandbox needs it bundled as well (workers/pipeline-worker.ts and the tests' bundle pass it to the bundler).
 */
export const ENCRYPTED_FAILURE_CONVERTER_PATH = require.resolve('./failure-converter');

/**
 * The data converter for clients and workers: encrypting with `keys`, or Temporal's default when there are none.
 * Every client and worker of one deployment must use the same keys (or a ring holding the ones in use).
 */
export function payloadDataConverter(keys: readonly PayloadKey[] | undefined): DataConverter | undefined {
  if (!keys?.length) return undefined;
  return { payloadCodecs: [new AesGcmPayloadCodec(keys)], failureConverterPath: ENCRYPTED_FAILURE_CONVERTER_PATH };
}

/** For a process's start-up line: which key seals its payloads, or that they travel in the clear. */
export function describePayloadEncryption(dataConverter: DataConverter | undefined): string {
  const codec = dataConverter?.payloadCodecs?.find((c) => c instanceof AesGcmPayloadCodec);
  return codec ? `payloads encrypted (key id ${codec.primaryKeyId})` : 'payloads not encrypted';
}

/** {@link payloadDataConverter} for the keys in this process's settings. */
export function dataConverterFromSettings(): DataConverter | undefined {
  return payloadDataConverter(payloadKeysFromSettings());
}
