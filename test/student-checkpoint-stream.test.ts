import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { initBackend } from '../lib/student/backend';
import {
  checkpointBytes,
  CheckpointCorruptError,
  readResumeCheckpoint,
  readResumeCheckpointFile,
  resumeCheckpoint,
  verifyCheckpoint,
  weightSources,
  writeCheckpointFile,
  type TrainingMeta,
} from '../lib/student/checkpoint';
import {
  encodeSafetensors,
  decodeSafetensors,
  readSafetensorsFile,
  writeSafetensorsFile,
  type TensorSource,
} from '../lib/student/checkpoint-file';
import { makeConfig } from '../lib/student/config';
import { createOptimizer } from '../lib/student/optim';
import { mulberry32, paramSpecs, T5Model, type NamedWeight } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import { trainTokenizer } from '../lib/student/tokenizer';
import { parseTrainOptions, train, trainToFile, type TrainOptionsInput } from '../lib/student/train';
import type { TrainRecord } from '../lib/student/pairs';

test.before(async () => {
  await initBackend('auto');
});

const TRAINING: TrainingMeta = { method: 'distill-step-by-step', alpha: 0.5, steps: 1, backend: 'test' };

/**
 * The safetensors bytes as the format defines them, written the plain way (everything in one buffer), as Stepwise
 * wrote every checkpoint before they were streamed: the reference the streamed files must equal byte for byte.
 */
function referenceBytes(weights: readonly NamedWeight[], metadata: Record<string, string>): Buffer {
  const header: Record<string, unknown> = { __metadata__: { ...metadata } };
  let offset = 0;
  for (const w of weights) {
    header[w.name] = { dtype: 'F32', shape: w.shape, data_offsets: [offset, offset + w.data.byteLength] };
    offset += w.data.byteLength;
  }
  const data = Buffer.concat(weights.map((w) => Buffer.from(w.data.buffer, w.data.byteOffset, w.data.byteLength)));
  const hash = createHash('sha256').update(JSON.stringify(header)).update(data).digest('hex');
  (header.__metadata__ as Record<string, string>).checksum = `sha256:${hash}`;
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([length, Buffer.from(json, 'utf8'), data]);
}

/**
 * The model's weights in HF's layout, read through TensorFlow's own transpose: the reference the streamed writer, which
 * transposes by hand (checkpoint.ts weightSources), is held to.
 */
function hfWeights(model: T5Model): NamedWeight[] {
  return paramSpecs(model.config).map((spec) => {
    const v = model.variables.get(spec.name)!;
    const data = tf.tidy(() => (spec.linear ? tf.transpose(v) : v).dataSync() as Float32Array);
    return { name: spec.name, shape: spec.shape, data: Float32Array.from(data) };
  });
}

/** A tiny student one AdamW step in (so its moments are not zeros), with best weights that differ from the current. */
async function tinyRun() {
  const tokenizer = await trainTokenizer(['the soup was warm', 'the tea was cold', 'positive', 'negative'], {
    vocabSize: 64,
  });
  const config = makeConfig('tiny', tokenizer.vocabSize);
  const model = T5Model.init(config, 3);
  const best = hfWeights(model);
  const params = [...model.variables].map(([name, variable]) => ({ name, variable, decay: true }));
  const optimizer = createOptimizer('adamw', params, { adamw: { weightDecay: 0.01 } });
  const random = mulberry32(9);
  const grads = params.map((p) => tf.tidy(() => tf.randomNormal(p.variable.shape, 0, 1, 'float32', random() * 1e6)));
  optimizer.apply(grads, 1e-2);
  tf.dispose(grads);
  return { tokenizer, config, model, optimizer, best };
}

test.serial(
  'a resume checkpoint streamed to a file, tensor by tensor, is byte for byte the buffer encodeSafetensors makes',
  async (t) => {
    const { tokenizer, config, model, optimizer, best } = await tinyRun();
    const dir = await mkdtemp(join(tmpdir(), 'stepwise-stream-'));
    try {
      const state = { version: 1, step: 1, note: 'ünïcödé in the header' };
      const before = tf.memory().numTensors;
      const parts = () => {
        const { tensors, release, ...optimizerState } = optimizer.stateSources();
        return resumeCheckpoint({
          config,
          tokenizer,
          training: TRAINING,
          state: { ...state, optimizer: optimizerState },
          weights: weightSources(model),
          optimizer: tensors,
          best,
          release,
        });
      };
      const path = join(dir, 'resume.safetensors');
      const size = await writeCheckpointFile(path, parts());
      t.is(tf.memory().numTensors, before, 'the optimiser reads are released once written');
      const streamed = await readFile(path);
      t.is(size, streamed.length);

      const { tensors, ...optimizerState } = optimizer.getState();
      const prefixed = (prefix: string, ws: NamedWeight[]) => ws.map((w) => ({ ...w, name: prefix + w.name }));
      const everything = [...hfWeights(model), ...prefixed('optimizer.', tensors), ...prefixed('best.', best)];
      const metadata = {
        format: 'stepwise-t5-resume',
        config: JSON.stringify(config),
        tokenizer: tokenizer.toJSON(),
        training: JSON.stringify(TRAINING),
        state: JSON.stringify({ ...state, optimizer: optimizerState }),
        hasBest: 'true',
      };
      const reference = referenceBytes(everything, metadata);
      t.true(streamed.equals(reference), 'the streamed file equals the reference bytes');
      t.true(encodeSafetensors(everything, metadata, { checksum: true }).equals(reference));
      t.true(checkpointBytes(parts()).equals(reference), 'the in-memory writer makes the same bytes');

      // Every reader takes it: checksum, shapes, and the optimiser and best tensors under their names.
      t.is(verifyCheckpoint(streamed).kind, 'resume');
      const read = readResumeCheckpoint(streamed);
      t.is(read.optimizer.length, tensors.length);
      t.deepEqual(read.best?.[0].data, best[0].data);
      t.deepEqual(await readdir(dir), ['resume.safetensors'], 'no temporary file is left behind');
    } finally {
      optimizer.dispose();
      model.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  }
);

test.serial('a checkpoint file read tensor by tensor is what its bytes decode to, and damage is caught', async (t) => {
  const { tokenizer, config, model, optimizer, best } = await tinyRun();
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-stream-'));
  try {
    const { tensors, release, ...optimizerState } = optimizer.stateSources();
    const bytes = checkpointBytes(
      resumeCheckpoint({
        config,
        tokenizer,
        training: TRAINING,
        state: { optimizer: optimizerState },
        weights: weightSources(model),
        optimizer: tensors,
        best,
        release,
      })
    );
    const path = join(dir, 'resume.safetensors');
    await writeFile(path, bytes);
    t.deepEqual(await readResumeCheckpointFile(path), readResumeCheckpoint(bytes));

    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 5] ^= 0x10;
    await writeFile(path, flipped);
    await t.throwsAsync(readResumeCheckpointFile(path), {
      instanceOf: CheckpointCorruptError,
      message: /^resumeFrom is corrupt: its content hashes to sha256:/,
    });
    await writeFile(path, bytes.subarray(0, bytes.length - 100));
    await t.throwsAsync(readResumeCheckpointFile(path), {
      instanceOf: CheckpointCorruptError,
      message: /do not fit shape/,
    });
  } finally {
    optimizer.dispose();
    model.dispose();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a streamed write that fails part way leaves neither the file nor a temporary one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-stream-'));
  try {
    const tensors: TensorSource[] = [
      { name: 'a', shape: [2, 3], read: () => new Float32Array(6).fill(1) },
      {
        name: 'b',
        shape: [4],
        read: () => {
          throw new Error('device lost');
        },
      },
    ];
    const path = join(dir, 'model.safetensors');
    await t.throwsAsync(writeSafetensorsFile(path, tensors, {}, { checksum: true }), { message: 'device lost' });
    // A source whose data does not fit its shape is caught rather than written under a header that lies.
    const short = [{ name: 'c', shape: [3], read: () => new Float32Array(2) }];
    await t.throwsAsync(writeSafetensorsFile(path, short, {}), { message: /tensor 'c' read 8 bytes; .* makes it 12/ });
    t.deepEqual(await readdir(dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** A checksummed safetensors file of `tensors`, its header listing them in the given order, whatever their offsets. */
function fileWithLayout(tensors: { name: string; data: Float32Array; at: number }[]): Buffer {
  const dataLength = Math.max(0, ...tensors.map((t) => t.at + t.data.byteLength));
  const data = Buffer.alloc(dataLength);
  const table: Record<string, unknown> = { __metadata__: { kind: 'test' } };
  for (const t of tensors) {
    data.set(new Uint8Array(t.data.buffer), t.at);
    table[t.name] = { dtype: 'F32', shape: [t.data.length], data_offsets: [t.at, t.at + t.data.byteLength] };
  }
  const checksum = createHash('sha256').update(JSON.stringify(table)).update(data).digest('hex');
  (table.__metadata__ as Record<string, string>).checksum = `sha256:${checksum}`;
  const json = Buffer.from(JSON.stringify(table));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, json, data]);
}

test('a file read tensor by tensor is checked against its checksum, tensors in offset order or not', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-stream-'));
  try {
    const a = Float32Array.from({ length: 300 }, (_, i) => Math.sin(i));
    const b = Float32Array.from({ length: 50 }, (_, i) => i / 7);
    const layouts = {
      // As this module writes: the tensors fill the data in header order, hashed as they are read.
      'in order': fileWithLayout([
        { name: 'a', data: a, at: 0 },
        { name: 'b', data: b, at: a.byteLength },
      ]),
      // As another writer may: the header lists a tensor stored after the next (hashed in offset order all the same).
      'out of order': fileWithLayout([
        { name: 'a', data: a, at: b.byteLength },
        { name: 'b', data: b, at: 0 },
      ]),
    };
    for (const [layout, bytes] of Object.entries(layouts)) {
      const path = join(dir, `${layout.replace(/ /g, '-')}.safetensors`);
      await writeFile(path, bytes);
      const read = await readSafetensorsFile(path);
      t.deepEqual(
        read.weights.map((w) => [w.name, Array.from(w.data)]),
        [
          ['a', Array.from(a)],
          ['b', Array.from(b)],
        ],
        layout
      );
      t.deepEqual(read.metadata, { kind: 'test' }, layout);
      for (const at of [bytes.length - a.byteLength - 1, bytes.length - 1]) {
        const bad = Buffer.from(bytes);
        bad[at] ^= 0xff;
        await writeFile(path, bad);
        await t.throwsAsync(
          readSafetensorsFile(path, { source: path }),
          {
            instanceOf: CheckpointCorruptError,
            message: /is corrupt: .*hashes to sha256:/,
          },
          `${layout}, byte ${at} flipped`
        );
      }
    }
    // Data no tensor owns (a hole between tensors, bytes after the last, a byte two tensors share) is refused as the
    // format requires, checksum or not: nothing a reader skips can ride along in a checkpoint.
    const withData = (tensors: { name: string; data: Float32Array; at: number }[], extra = 0) => {
      const file = fileWithLayout(tensors);
      return Buffer.concat([file, Buffer.alloc(extra)]);
    };
    const shapes = {
      'a hole': withData([
        { name: 'a', data: a, at: 0 },
        { name: 'b', data: b, at: a.byteLength + 4 },
      ]),
      'bytes after the last tensor': withData([{ name: 'a', data: a, at: 0 }], 8),
      'a shared byte range': withData([
        { name: 'a', data: a, at: 0 },
        { name: 'b', data: b, at: a.byteLength - 4 },
      ]),
    };
    for (const [shape, bytes] of Object.entries(shapes)) {
      const path = join(dir, 'holes.safetensors');
      await writeFile(path, bytes);
      await t.throwsAsync(
        readSafetensorsFile(path, { source: path }),
        { instanceOf: CheckpointCorruptError, message: /not a valid safetensors file: .*(expected|cover)/ },
        shape
      );
      t.throws(() => decodeSafetensors(bytes), { instanceOf: CheckpointCorruptError }, shape);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

const RECORDS: TrainRecord[] = Array.from({ length: 24 }, (_, i) => ({
  input: `order ${i}: the ${['soup', 'tea', 'pie'][i % 3]} was ${i % 2 ? 'warm' : 'cold'}`,
  goldLabel: i % 2 ? 'positive' : 'negative',
  teacherLabel: i % 2 ? 'positive' : 'negative',
  rationale: `${i % 2 ? 'warm' : 'cold'} is ${i % 2 ? 'positive' : 'negative'}`,
}));

test.serial(
  'trainToFile streams the same resume checkpoints as train hands out, and a final checkpoint of the same weights',
  async (t) => {
    const opts: TrainOptionsInput = {
      method: 'distill-step-by-step',
      steps: 6,
      batchSize: 8,
      learningRate: 3e-3,
      seed: 2,
      maxInputLength: 16,
      maxTargetLength: 4,
      maxRationaleLength: 8,
      valid: RECORDS.slice(0, 8),
      evalEvery: 2,
      checkpointEvery: 2,
    };
    const dir = await mkdtemp(join(tmpdir(), 'stepwise-stream-'));
    try {
      const inMemory: { step: number; bytes: Buffer }[] = [];
      const plain = await train(RECORDS, parseTrainOptions(opts), { onCheckpoint: (c) => void inMemory.push(c) });
      const files: { step: number; path: string }[] = [];
      const final = join(dir, 'final.safetensors');
      const streamed = await trainToFile(RECORDS, parseTrainOptions(opts), final, {
        checkpointFiles: {
          path: (step) => join(dir, `resume-${step}.safetensors`),
          written: (c) => void files.push(c),
        },
      });
      t.deepEqual(
        files.map((f) => f.step),
        [2, 4]
      );
      for (const [i, file] of files.entries()) {
        t.true((await readFile(file.path)).equals(inMemory[i].bytes), `resume checkpoint ${file.step}`);
      }
      t.is(streamed.checkpointPath, final);
      t.is(streamed.finalLoss, plain.finalLoss);
      t.true(tensorData(await readFile(final)).equals(tensorData(plain.checkpoint)), 'the same final weights');

      // A run resumed from a file, read tensor by tensor, ends where the uninterrupted run did.
      const resumed = await trainToFile(
        RECORDS,
        parseTrainOptions({ ...opts, resumeFromFile: files[0].path }),
        join(dir, 'resumed.safetensors')
      );
      t.is(resumed.resumedFrom, 2);
      t.is(resumed.finalLoss, plain.finalLoss);
      t.true(tensorData(await readFile(resumed.checkpointPath)).equals(tensorData(plain.checkpoint)));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
);

/** A checkpoint's tensor data, without its header (whose metadata records the run's wall time). */
function tensorData(bytes: Buffer): Buffer {
  const headerLength = Number(bytes.readBigUInt64LE(0));
  return bytes.subarray(8 + headerLength);
}
