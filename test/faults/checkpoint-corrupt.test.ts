/**
 * Corrupted checkpoints: bytes flipped at rest (written straight under the object's key, as a disk fault would leave
 * them) and checkpoints of another shape. Every read detects them by hash and by shape with a named error; a resumed
 * training passes a corrupt checkpoint over for the one before it (or the start), and because training is
 * deterministic it still ends with exactly the weights of an uninterrupted run. The trainStudent activity runs for
 * real (its training child included) against versitygw; quick mode runs one store, full mode the filesystem store too.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { ApplicationFailure, type Logger } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { trainStudent, type TrainHeartbeat } from '../../activities/train-student';
import { ensureBucket, startS3Server, type S3Server } from '../../infra/s3-server';
import { InputError } from '../../lib/errors';
import { parseSpec } from '../../lib/pipeline/spec';
import { openStore } from '../../lib/store';
import { objectKey, type ArtifactRef, type ArtifactStore } from '../../lib/store/artifact-store';
import { initBackend } from '../../lib/student/backend';
import {
  CheckpointCorruptError,
  decodeSafetensors,
  loadCheckpoint,
  readResumeCheckpoint,
  serializeWeights,
  verifyCheckpoint,
} from '../../lib/student/checkpoint';
import { makeConfig, type T5Config } from '../../lib/student/config';
import type { TrainRecord } from '../../lib/student/pairs';
import { paramSpecs, type NamedWeight } from '../../lib/student/t5';
import { loadTokenizer, type StudentTokenizer } from '../../lib/student/tokenizer';
import { parseTrainOptions, train, type TrainCheckpoint, type TrainOptionsInput } from '../../lib/student/train';
import { faultMode, recordFigures } from '../helpers/figures';
import { runIn } from '../helpers/activities';

let tmp: string;
let s3: S3Server;
let tokenizer: StudentTokenizer;
const stores: Record<string, ArtifactStore> = {};

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-corrupt-'));
  s3 = await startS3Server({ dataDir: join(tmp, 's3') });
  await ensureBucket(s3, 'corrupt-test');
  // The S3 backend takes credentials and endpoint from the standard AWS variables, as in production.
  process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
  process.env.AWS_ENDPOINT_URL_S3 = s3.endpoint;
  process.env.AWS_REGION = s3.region;
  stores.s3 = openStore('s3://corrupt-test/c');
  if (faultMode() === 'full') stores.fs = openStore(join(tmp, 'fs'));
  tokenizer = loadTokenizer(
    await readFile(join(__dirname, '..', 'fixtures', 't5-tiny', 'v1_1', 'tokenizer.json'), 'utf8')
  );
  await initBackend('auto');
});

test.after.always(async () => {
  await Promise.all(Object.values(stores).map((s) => s.close()));
  await s3?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** Deterministic weights of `config`'s shapes: no model (and no backend) needed to write a checkpoint. */
function weightsOf(config: T5Config): NamedWeight[] {
  return paramSpecs(config).map((spec, i) => {
    const data = new Float32Array(spec.shape.reduce((a, b) => a * b, 1));
    for (let j = 0; j < data.length; j++) data[j] = Math.sin(i * 7.1 + j * 0.37);
    return { name: spec.name, shape: spec.shape, data };
  });
}

const META = { method: 'distill-step-by-step', alpha: 0.5, steps: 0, backend: 'cpu' };

/** `bytes` with the byte at `at` inverted: one disk fault. */
function flipped(bytes: Uint8Array, at: number): Buffer {
  const out = Buffer.from(bytes);
  out[at] ^= 0xff;
  return out;
}

/** Where a checkpoint's tensor data starts (after the 8-byte length and the JSON header). */
const dataStart = (bytes: Buffer) => 8 + Number(bytes.readBigUInt64LE(0));

/** `bytes` with `from` replaced by `to` (same length) in its header, as a flipped bit in a digit would leave it. */
function headerEdit(bytes: Buffer, from: string, to: string): Buffer {
  const at = bytes.indexOf(from, 8, 'utf8');
  if (at < 0 || at > dataStart(bytes) || from.length !== to.length) throw new Error(`no '${from}' in the header`);
  const out = Buffer.from(bytes);
  out.write(to, at, 'utf8');
  return out;
}

test('a checkpoint with flipped bytes fails its checksum on every read, naming where it came from', (t) => {
  const config = makeConfig('tiny', tokenizer.vocabSize);
  const good = serializeWeights(config, weightsOf(config), tokenizer, META);
  t.is(verifyCheckpoint(good).checksummed, true);
  const from = { field: 'student.init', source: '/data/init.safetensors' };
  const cases: [string, Buffer][] = [
    ['a weight', flipped(good, dataStart(good) + 1001)],
    ['the last byte', flipped(good, good.length - 1)],
    // Inside the JSON header, where the result is still valid JSON, so the checksum, not the parser, has to catch it:
    // the config's d_model 64 (a JSON string inside the metadata, hence the escaped quote) becomes 67.
    ['the header', headerEdit(good, 'd_model\\":64', 'd_model\\":67')],
  ];
  let detected = 0;
  for (const [where, bytes] of cases) {
    for (const read of [
      () => verifyCheckpoint(bytes, from),
      () => loadCheckpoint(bytes, from),
      () => decodeSafetensors(bytes, from),
    ]) {
      const err = t.throws(read, { instanceOf: CheckpointCorruptError }, where);
      t.is(err?.field, 'student.init');
      t.is(err?.source, '/data/init.safetensors');
      t.regex(err?.message ?? '', /^student\.init \(\/data\/init\.safetensors\) is corrupt: .*hashes to sha256:/);
    }
    detected += 1;
  }
  // Truncated: the safetensors structure itself no longer fits.
  t.throws(() => verifyCheckpoint(good.subarray(0, good.length - 100), from), {
    instanceOf: CheckpointCorruptError,
    message: /is corrupt: not a valid safetensors file: tensor '.*' has offsets/,
  });
  recordFigures('checkpoint-corrupt-bytes', { faultsTried: cases.length + 1, faultsSurvived: detected + 1 });
});

test('a checkpoint of another shape is a named error: the first tensor that does not fit its config', (t) => {
  const config = makeConfig('tiny', tokenizer.vocabSize);
  const wider = makeConfig('tiny', tokenizer.vocabSize, { d_model: 96 });
  // Intact bytes (the checksum holds) whose tensors belong to another model: a converter's bug, a mixed-up file.
  const mismatched = serializeWeights(config, weightsOf(wider), tokenizer, META);
  for (const read of [() => verifyCheckpoint(mismatched), () => loadCheckpoint(mismatched)]) {
    t.throws(read, {
      instanceOf: CheckpointCorruptError,
      message:
        /^checkpoint is corrupt: tensor 'shared\.weight' has shape \[\d+, 96\]; its config \(d_model 64, .*\) makes it \[\d+, 64\]/,
    });
  }
  recordFigures('checkpoint-corrupt-shape', { faultsTried: 1, faultsSurvived: 1 });
});

const GOOD = ['tasty', 'fresh', 'warm', 'sweet', 'crisp'];
const BAD = ['cold', 'stale', 'bland', 'burnt', 'soggy'];

/** Reviews whose label is the adjective's polarity. */
function reviews(n: number, offset: number): TrainRecord[] {
  return Array.from({ length: n }, (_, i) => {
    const k = i + offset;
    const positive = k % 2 === 0;
    const adjective = (positive ? GOOD : BAD)[k % 5];
    const label = positive ? 'positive' : 'negative';
    return {
      input: `The soup was ${'very '.repeat(k % 3)}${adjective}.`,
      goldLabel: label,
      teacherLabel: label,
      rationale: `${adjective} is ${label}.`,
    };
  });
}

test.serial('a resume checkpoint of another model shape is refused, naming the option that differs', async (t) => {
  const base: TrainOptionsInput = {
    method: 'distill-step-by-step',
    steps: 4,
    batchSize: 4,
    seed: 3,
    maxInputLength: 16,
    maxTargetLength: 4,
    maxRationaleLength: 8,
    checkpointEvery: 2,
  };
  const checkpoints: TrainCheckpoint[] = [];
  const records = reviews(12, 0);
  await train(records, parseTrainOptions({ ...base, config: { d_ff: 96 } }), {
    onCheckpoint: (c) => void checkpoints.push(c),
  });
  t.is(readResumeCheckpoint(checkpoints[0].bytes).config.d_ff, 96);
  await t.throwsAsync(train(records, parseTrainOptions({ ...base, resumeFrom: checkpoints[0].bytes })), {
    instanceOf: InputError,
    message: /^config is \{\} but resumeFrom was trained with \{"d_ff":96\}/,
  });
  // The same checkpoint with a flipped weight is refused before any option is compared.
  const bytes = checkpoints[0].bytes;
  await t.throwsAsync(
    train(
      records,
      parseTrainOptions({ ...base, config: { d_ff: 96 }, resumeFrom: flipped(bytes, dataStart(bytes) + 64) })
    ),
    { instanceOf: CheckpointCorruptError, message: /^resumeFrom is corrupt: its content hashes to/ }
  );
});

/** A digest of a checkpoint's weights (its metadata differs between runs: wall time, where it resumed). */
async function weightsDigest(store: ArtifactStore, ref: ArtifactRef): Promise<string> {
  const hash = createHash('sha256');
  for (const w of decodeSafetensors(await store.get(ref)).weights) {
    hash.update(`${w.name}:${w.shape.join('x')}:`).update(new Uint8Array(w.data.buffer));
  }
  return hash.digest('hex');
}

/** Overwrite a stored object with damaged bytes, bypassing the store's content addressing, as a disk fault does. */
async function corruptObject(store: ArtifactStore, ref: ArtifactRef, damage: (bytes: Buffer) => Buffer) {
  const key = objectKey(ref.sha256);
  await store.backend.put(key, damage(await store.backend.get(key)));
}

interface TrainLog {
  resumedFrom: number | null;
  attempt: number;
  checkpointsRejected: { step: number; sha256: string; reason: string }[];
  lossHistory: unknown[];
}

/** The activity's log lines at `warn` and above, kept for assertions instead of printed. */
function warningsLogger(lines: string[]): Logger {
  const keep = (message: string) => void lines.push(message);
  const drop = () => undefined;
  return {
    log: (level, message) => (level === 'WARN' || level === 'ERROR' ? keep(message) : undefined),
    trace: drop,
    debug: drop,
    info: drop,
    warn: keep,
    error: keep,
  };
}

/** One attempt of the real trainStudent activity; `from` is the heartbeat a previous attempt left. */
async function attempt(store: ArtifactStore, input: Parameters<typeof trainStudent>[1], from?: TrainHeartbeat) {
  const warnings: string[] = [];
  const env = new MockActivityEnvironment(from ? { heartbeatDetails: from, attempt: 2 } : {}, {
    logger: warningsLogger(warnings),
  });
  const beats: TrainHeartbeat[] = [];
  env.on('heartbeat', (d: TrainHeartbeat) => beats.push(structuredClone(d)));
  const result = await runIn(env, trainStudent, { store }, input);
  const log = JSON.parse((await store.get(result.trainLog)).toString()) as TrainLog;
  return { result, beats, log, warnings, weights: await weightsDigest(store, result.checkpoint) };
}

async function trainingInput(store: ArtifactStore) {
  const rows = (rs: TrainRecord[]) => rs.map((r, i) => ({ id: `r${i}`, ...r }));
  const student = parseSpec({
    name: 'corrupt-checkpoint',
    data: { kind: 'demo' },
    teacher: { kind: 'scripted' },
    student: { steps: 30, batchSize: 8, checkpointEvery: 10, evalEvery: 10, backend: 'auto', seed: 2 },
  }).student;
  return {
    student,
    train: await store.putJsonl(rows(reviews(48, 0))),
    valid: await store.putJsonl(rows(reviews(12, 48))),
  };
}

for (const storeName of faultMode() === 'full' ? ['s3', 'fs'] : ['s3']) {
  test.serial(
    `${storeName}: a resumed training passes a corrupted checkpoint over for the one before, or the start, and ends bit-identical`,
    async (t) => {
      const store = stores[storeName];
      const input = await trainingInput(store);
      const full = await attempt(store, input);
      const left = full.beats[full.beats.length - 1];
      // What a killed attempt would have left: the last two stored checkpoints, newest first.
      t.deepEqual(
        left.checkpoints?.map((c) => c.step),
        [20, 10]
      );
      const [newest, previous] = left.checkpoints!;
      let tried = 0;
      let survived = 0;

      // The newest checkpoint with one weight byte flipped: the retry falls back to the one before.
      await corruptObject(store, newest.ref, (b) => flipped(b, b.length - 4000));
      tried += 1;
      const fallback = await attempt(store, input, left);
      t.is(fallback.log.resumedFrom, 10);
      t.is(fallback.log.checkpointsRejected.length, 1);
      t.is(fallback.log.checkpointsRejected[0].step, 20);
      t.regex(fallback.log.checkpointsRejected[0].reason, /^resumeFrom \(.+\) is corrupt: its bytes hash to sha256 /);
      t.true(
        fallback.warnings.some((w) => w.includes('not resuming from the checkpoint at step 20: resumeFrom')),
        'the fallback is logged'
      );
      // The corrupt one is named no more, from the first heartbeat after it was found.
      const after = fallback.beats.find((b) => b.resumedFrom === 10 && b.checkpoints?.length === 1);
      t.deepEqual(after?.checkpoints, [previous]);
      t.deepEqual(fallback.log.lossHistory, full.log.lossHistory);
      t.is(fallback.weights, full.weights, 'the same weights as the uninterrupted run, bit for bit');
      if (fallback.weights === full.weights) survived += 1;

      // Both named checkpoints damaged (the older one truncated): the retry trains from the start, and still arrives.
      await corruptObject(store, previous.ref, (b) => b.subarray(0, b.length - 100));
      tried += 1;
      const scratch = await attempt(store, input, left);
      t.is(scratch.log.resumedFrom, null);
      t.deepEqual(
        scratch.log.checkpointsRejected.map((r) => r.step),
        [20, 10]
      );
      t.true(scratch.warnings.some((w) => w.includes('no stored checkpoint is usable; training again from the start')));
      t.deepEqual(scratch.log.lossHistory, full.log.lossHistory);
      t.is(scratch.weights, full.weights, 'from the start, the same weights again');
      if (scratch.weights === full.weights) survived += 1;
      // Retracing its steps, training wrote the damaged checkpoints' bytes again, and they were written over, not
      // skipped as already stored: every checkpoint the last heartbeat names reads back intact.
      const named = scratch.beats[scratch.beats.length - 1].checkpoints ?? [];
      t.true(named.length > 0);
      for (const c of named) await t.notThrowsAsync(store.get(c.ref), `checkpoint at step ${c.step}`);
      t.log(`${storeName}: ${survived} of ${tried} corrupted resumes ended with the uninterrupted run's weights`);
      recordFigures('checkpoint-corrupt-resume', { faultsTried: tried, faultsSurvived: survived, examplesLost: 0 });
    }
  );
}

test.serial(
  'a student.init that is corrupt or of another shape fails trainStudent at once, naming student.init',
  async (t) => {
    const store = stores.s3;
    const input = await trainingInput(store);
    const config = makeConfig('tiny', tokenizer.vocabSize);
    const good = serializeWeights(config, weightsOf(config), tokenizer, META);
    const files = {
      flipped: flipped(good, dataStart(good) + 2000),
      'another shape': serializeWeights(config, weightsOf({ ...config, d_ff: 256 }), tokenizer, META),
    };
    for (const [what, bytes] of Object.entries(files)) {
      const path = join(tmp, `${what.replace(' ', '-')}.safetensors`);
      await writeFile(path, bytes);
      const env = new MockActivityEnvironment();
      const err = await t.throwsAsync(
        runIn(env, trainStudent, { store }, { ...input, student: { ...input.student, init: path } }),
        { instanceOf: ApplicationFailure },
        what
      );
      t.true(err?.nonRetryable, `${what}: not retried`);
      t.is(err?.type, 'InputError');
      t.true(err?.message.startsWith(`student.init (${path}) is corrupt: `), `${what}: ${err?.message}`);
    }
    recordFigures('checkpoint-corrupt-init', { faultsTried: 2, faultsSurvived: 2 });
  }
);
