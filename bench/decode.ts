/**
 * Greedy decoding speed of the student against PyTorch's `generate`, and with against without the student's
 * key/value cache: generated tokens per second of randomly initialised models of the same shape (the `tiny` and
 * `small` presets at the student's default 8k vocabulary, and the reproduction shape of examples/svamp-paper.json),
 * a batch of 8 sources of 64 tokens, 64 new tokens each. Both sides decode with a cache and are made to generate
 * exactly that many tokens (the student's `minLength`, HF's `min_new_tokens`, set to the maximum), so the token
 * counts match (checked and reported); both run with the same number of threads (TensorFlow's intra-op and inter-op
 * pools each of that size, as a worker gets them by default on 2 cores; PyTorch's intra-op threads).
 *
 * Per shape, one student process (this file with `--worker`, on the backend `initBackend('auto')` picks;
 * STEPWISE_TFJS_BACKEND overrides) and one PyTorch process (bench/pytorch_t5_decode.py, HF
 * `T5ForConditionalGeneration`) each warm up with full generate calls; then the bench alternates them, student then
 * PyTorch, one timed call each per round, so a burst of other work on a shared machine lands on both, and reports
 * the median of the per-round ratios with their min–max. The student worker also checks that cached and uncached
 * decoding give the same tokens and times the uncached one once (its cost grows with the square of the output
 * length). On an oversubscribed machine PyTorch's OpenMP threads wait on each other at every op (2 threads there
 * measured ~60× slower than 1): compare on a quiet machine, or with BENCH_THREADS=1.
 *
 * Environment: BENCH_PRESETS (default `tiny,small,svamp-paper`), BENCH_NEW_TOKENS (64), BENCH_BATCH (8),
 * BENCH_SOURCE (64), BENCH_ROUNDS (5, at least 3), BENCH_WARMUP (full generate calls each side runs first; 2),
 * BENCH_THREADS (2), BENCH_PYTHON (the interpreter with torch and transformers; default the cached venv of
 * infra/bench-python.ts, installed on first use). Last stdout line: one JSON object with, per shape,
 * `tokensPerSecCached` (student, median over rounds), `pytorchTokensPerSec` (median), `ratioToPytorch` ({median,
 * min, max} of student ÷ PyTorch over rounds), `tokensPerSecUncached`, `speedup` (cached ÷ uncached), `msCached`,
 * `msUncached`, `pytorchMs`, `generatedTokens` ({student, pytorch}), `rounds` (every round's tokens/s) and `params`;
 * then `goal` (the median ratio ≥ 1.0 for every shape), `skipped`, `backend`, `machine`, `versions` and `config`.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { benchPython } from '../infra/bench-python';
import { describeBackend, initBackend } from '../lib/student/backend';
import { isPresetName, makeConfig, toHFConfig, type ConfigOverrides, type T5Config } from '../lib/student/config';
import { greedyIds } from '../lib/student/decode';
import { T5Model } from '../lib/student/t5';
import { cpuinfo, median, round, spread, stealMeter } from './stats';

/** The reproduction's student shape, read from its spec so the bench follows the spec. */
const REPRODUCTION_SPEC = join(__dirname, '..', 'examples', 'svamp-paper.json');
const REPRODUCTION = 'svamp-paper';

function positiveInt(name: string, fallback: number, min = 1): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${name} is ${JSON.stringify(raw)}; expected an integer ≥ ${min}`);
  }
  return value;
}

const CONFIG = {
  presets: (process.env.BENCH_PRESETS ?? `tiny,small,${REPRODUCTION}`).split(',').map((s) => s.trim()),
  vocabSize: 8000,
  batchSize: positiveInt('BENCH_BATCH', 8),
  sourceLength: positiveInt('BENCH_SOURCE', 64, 2),
  newTokens: positiveInt('BENCH_NEW_TOKENS', 64),
  rounds: positiveInt('BENCH_ROUNDS', 5, 3),
  warmup: positiveInt('BENCH_WARMUP', 2),
  threads: positiveInt('BENCH_THREADS', 2),
};

/** A step of a large model takes seconds; a worker that says nothing for this long is stuck. */
const REPLY_TIMEOUT_MS = 15 * 60_000;

/** The model config of a shape name: a preset at the bench's vocabulary, or the reproduction spec's student. */
function shapeConfig(name: string): T5Config {
  if (isPresetName(name)) return makeConfig(name, CONFIG.vocabSize);
  if (name === REPRODUCTION) {
    const spec = JSON.parse(readFileSync(REPRODUCTION_SPEC, 'utf8')) as {
      student: { preset: string; config?: ConfigOverrides };
    };
    const preset = spec.student.preset;
    if (!isPresetName(preset)) throw new Error(`${REPRODUCTION_SPEC}: student.preset ${preset} is not a preset`);
    return makeConfig(preset, CONFIG.vocabSize, spec.student.config ?? {});
  }
  throw new Error(`BENCH_PRESETS names ${JSON.stringify(name)}; expected preset names or ${REPRODUCTION}`);
}

/** Reproducible source ids in [3, vocab), each ending in eos (bench/pytorch_t5_decode.py builds the same). */
function sources(): number[][] {
  return Array.from({ length: CONFIG.batchSize }, (_, r) => [
    ...Array.from(
      { length: CONFIG.sourceLength - 1 },
      (_, c) => 3 + ((r * 7919 + c * 104729) % (CONFIG.vocabSize - 3))
    ),
    1,
  ]);
}

/** Generated tokens, eos included (a row that stops early generated fewer; none should, minLength = maxLength). */
const countTokens = (outputs: number[][]) =>
  outputs.reduce((n, ids) => n + Math.min(ids.length + 1, CONFIG.newTokens), 0);

/** One timed generate call, as both workers report it. */
interface Timed {
  ms: number;
  tokens: number;
  tokensPerSec: number;
}

/** What a worker says once it has warmed up. */
interface Ready {
  params: number;
  detail?: string;
  versions: Record<string, string>;
  /** Student only: the uncached reference, timed once. */
  uncached?: Timed;
  skipped?: string;
}

// ---------------------------------------------------------------------------------------------------------------
// The student worker: `--worker <shape>`

async function runWorker(shape: string): Promise<void> {
  await initBackend('auto');
  const model = T5Model.init(shapeConfig(shape), 1);
  const batch = sources();
  const opts = { maxLength: CONFIG.newTokens, minLength: CONFIG.newTokens };
  const timed = (useCache: boolean): Timed & { outputs: number[][] } => {
    const start = performance.now();
    const outputs = greedyIds(model, batch, { ...opts, useCache });
    const ms = performance.now() - start;
    const tokens = countTokens(outputs);
    return { ms, tokens, tokensPerSec: (tokens / ms) * 1000, outputs };
  };
  // Warm-up: the first calls allocate, pick kernels and optimise the step graph; full cached calls, a short uncached.
  let warm = timed(true);
  for (let i = 1; i < CONFIG.warmup; i++) warm = timed(true);
  greedyIds(model, batch, { maxLength: 4, useCache: false });
  const { outputs: reference, ...uncached } = timed(false);
  if (JSON.stringify(warm.outputs) !== JSON.stringify(reference)) {
    throw new Error(`${shape}: cached and uncached greedy decoding gave different tokens`);
  }
  const ready: Ready = {
    params: model.parameterCount,
    detail: describeBackend().detail,
    versions: {
      node: process.versions.node,
      tfjs: (require('@tensorflow/tfjs-core/package.json') as { version: string }).version,
    },
    uncached,
  };
  console.log(`READY ${JSON.stringify(ready)}`);
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() !== 'run') continue;
    const { outputs, ...result } = timed(true);
    if (JSON.stringify(outputs) !== JSON.stringify(reference)) {
      throw new Error(`${shape}: a timed run gave other tokens than the warm-up`);
    }
    console.log(`RESULT ${JSON.stringify(result)}`);
  }
  model.dispose();
}

// ---------------------------------------------------------------------------------------------------------------
// The parent: workers, rounds, figures

/** A worker process spoken to by lines: `run` in, `READY {json}` once and `RESULT {json}` per run out. */
class Worker {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private waiting?: () => void;
  private exit?: string;
  private stderr = '';

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    env: NodeJS.ProcessEnv
  ) {
    this.child = spawn(command, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.lines.push(line);
      this.waiting?.();
    });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    const ended = (why: string) => {
      this.exit ??= why;
      this.waiting?.();
    };
    this.child.on('error', (err) => ended(`could not start: ${err.message}`));
    this.child.on('close', (code, signal) => ended(`exited with ${signal ?? `code ${code}`}`));
  }

  /** The JSON after the next line starting with `prefix` (other lines are progress, echoed). */
  async next<T>(prefix: 'READY' | 'RESULT'): Promise<T> {
    const deadline = Date.now() + REPLY_TIMEOUT_MS;
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) {
        if (line.startsWith(`${prefix} `)) return JSON.parse(line.slice(prefix.length + 1)) as T;
        console.log(`  [${this.name}] ${line}`);
        continue;
      }
      if (this.exit !== undefined) {
        const tail = this.stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 600);
        throw new Error(`${this.name} ${this.exit} before ${prefix}: ${tail}`);
      }
      if (Date.now() > deadline) {
        this.child.kill('SIGKILL');
        throw new Error(`${this.name} said nothing for ${REPLY_TIMEOUT_MS / 60_000} minutes`);
      }
      await new Promise<void>((resolve) => {
        this.waiting = resolve;
        setTimeout(resolve, 1000).unref();
      });
      this.waiting = undefined;
    }
  }

  async run(): Promise<Timed> {
    this.child.stdin.write('run\n');
    return this.next<Timed>('RESULT');
  }

  /** Closes its stdin (the worker then exits) and waits for it. */
  async close(): Promise<void> {
    this.child.stdin.end();
    while (this.exit === undefined) await new Promise((resolve) => setTimeout(resolve, 50));
  }

  kill(): void {
    if (this.exit === undefined) this.child.kill('SIGKILL');
  }
}

function studentWorker(shape: string): Worker {
  const env = {
    ...process.env,
    TF_CPP_MIN_LOG_LEVEL: '2',
    // TensorFlow's thread pools read these at start-up. Both are sized to the bench's threads, which on a 2-core
    // machine is what a worker that sets neither gets (four tf_Compute threads either way, counted; one inter-op
    // thread leaves two). The step graph's independent ops (a block's q, k and v projections, its two gated-GELU
    // inputs) then run side by side, where one inter-op thread runs them one after another. Measured on `small`,
    // six alternated pairs of processes: a generate call took a median 7% longer with one inter-op thread (-2% to
    // +30%). PyTorch's eager generate runs one op at a time whatever its inter-op pool.
    TF_NUM_INTRAOP_THREADS: String(CONFIG.threads),
    TF_NUM_INTEROP_THREADS: String(CONFIG.threads),
  };
  return new Worker('student', process.execPath, ['--import', 'tsx', __filename, '--worker', shape], env);
}

function pytorchWorker(python: string, config: T5Config): Worker {
  const args = [
    join(__dirname, 'pytorch_t5_decode.py'),
    ['--config', JSON.stringify(toHFConfig(config))],
    ['--batch', CONFIG.batchSize, '--source', CONFIG.sourceLength, '--new-tokens', CONFIG.newTokens],
    ['--threads', CONFIG.threads, '--warmup', CONFIG.warmup, '--serve'],
    config.tie_word_embeddings ? [] : ['--untied-head'],
  ]
    .flat()
    .map(String);
  const threads = String(CONFIG.threads);
  const env = { ...process.env, OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads, TOKENIZERS_PARALLELISM: 'false' };
  return new Worker('pytorch', python, args, env);
}

function machine() {
  const list = cpus();
  const { flags } = cpuinfo();
  return {
    cpu: list[0]?.model.trim() ?? 'unknown',
    cores: list.length,
    threads: CONFIG.threads,
    simd: ['avx512f', 'avx2', 'fma'].filter((f) => flags.has(f)),
    /** 1-minute load average when the bench started and ended: above `cores`, the figures are contended. */
    load: [round(loadavg()[0], 2)],
    /** Share of the machine's CPU time its hypervisor gave other guests over the bench (see `stealMeter`). */
    stealShare: undefined as number | undefined,
  };
}

async function main(): Promise<void> {
  const workerAt = process.argv.indexOf('--worker');
  if (workerAt >= 0) {
    await runWorker(process.argv[workerAt + 1]);
    return;
  }
  const configs = CONFIG.presets.map((name) => [name, shapeConfig(name)] as const);
  let python: string | undefined;
  const skipped: Record<string, string> = {};
  try {
    python = await benchPython((line) => console.log(`decode: ${line}`));
  } catch (err) {
    skipped.pytorch = `no Python with torch: ${err instanceof Error ? err.message : String(err)}`;
  }

  const perShape = <T>() => ({}) as Record<string, T>;
  const steal = stealMeter();
  const result = {
    tokensPerSecCached: perShape<number>(),
    pytorchTokensPerSec: perShape<number | null>(),
    ratioToPytorch: perShape<{ median: number; min: number; max: number } | null>(),
    goal: false,
    tokensPerSecUncached: perShape<number>(),
    speedup: perShape<number>(),
    msCached: perShape<number>(),
    msUncached: perShape<number>(),
    pytorchMs: perShape<number | null>(),
    generatedTokens: perShape<{ student: number; pytorch: number | null }>(),
    rounds: perShape<{ student: number[]; pytorch: number[] }>(),
    params: perShape<number>(),
    skipped,
    backend: '',
    machine: machine(),
    versions: {} as Record<string, string>,
    config: { ...CONFIG, shapes: {} as Record<string, string> },
  };

  for (const [name, config] of configs) {
    result.config.shapes[name] =
      `d${config.d_model}, d_ff ${config.d_ff}, ${config.num_heads}×${config.d_kv} heads, ` +
      `${config.num_layers}+${config.num_decoder_layers} layers, ${config.feed_forward_proj}`;
    console.log(`decode: ${name} (${result.config.shapes[name]}), warming up`);
    const student = studentWorker(name);
    let torch: Worker | undefined;
    try {
      const studentReady = await student.next<Ready>('READY');
      result.backend = studentReady.detail ?? '';
      Object.assign(result.versions, studentReady.versions);
      result.params[name] = studentReady.params;
      // Started only now, so its warm-up does not share the CPU with the student's uncached reference.
      let torchReady: Ready | undefined;
      if (python) {
        torch = pytorchWorker(python, config);
        try {
          torchReady = await torch.next<Ready>('READY');
          if (torchReady.skipped) {
            skipped.pytorch = torchReady.skipped;
            torchReady = undefined;
          } else {
            Object.assign(result.versions, torchReady.versions);
            if (torchReady.params !== studentReady.params) {
              console.log(
                `  note: PyTorch's model has ${torchReady.params} parameters, the student's ${studentReady.params}`
              );
            }
          }
        } catch (err) {
          skipped[`pytorch ${name}`] = err instanceof Error ? err.message : String(err);
          torchReady = undefined;
        }
      }
      const rounds = { student: [] as Timed[], pytorch: [] as Timed[] };
      for (let r = 0; r < CONFIG.rounds; r++) {
        rounds.student.push(await student.run());
        if (torch && torchReady) rounds.pytorch.push(await torch.run());
        const s = rounds.student[r];
        const p = rounds.pytorch[r];
        console.log(
          `  round ${r + 1}: student ${round(s.tokensPerSec)} tok/s (${round(s.ms, 0)} ms)` +
            (p
              ? `, PyTorch ${round(p.tokensPerSec)} tok/s (${round(p.ms, 0)} ms), ` +
                `ratio ${round(s.tokensPerSec / p.tokensPerSec, 3)}`
              : '')
        );
      }
      const uncached = studentReady.uncached!;
      const cachedMs = median(rounds.student.map((t) => t.ms));
      const studentTokens = rounds.student[0].tokens;
      result.tokensPerSecCached[name] = round(median(rounds.student.map((t) => t.tokensPerSec)));
      result.tokensPerSecUncached[name] = round(uncached.tokensPerSec);
      result.speedup[name] = round(uncached.ms / cachedMs, 2);
      result.msCached[name] = round(cachedMs, 0);
      result.msUncached[name] = round(uncached.ms, 0);
      result.rounds[name] = {
        student: rounds.student.map((t) => round(t.tokensPerSec)),
        pytorch: rounds.pytorch.map((t) => round(t.tokensPerSec)),
      };
      if (rounds.pytorch.length > 0) {
        const ratios = rounds.student.map((s, i) => s.tokensPerSec / rounds.pytorch[i].tokensPerSec);
        result.pytorchTokensPerSec[name] = round(median(rounds.pytorch.map((t) => t.tokensPerSec)));
        result.pytorchMs[name] = round(median(rounds.pytorch.map((t) => t.ms)), 0);
        result.ratioToPytorch[name] = spread(ratios, 3);
        result.generatedTokens[name] = { student: studentTokens, pytorch: rounds.pytorch[0].tokens };
        if (rounds.pytorch[0].tokens !== studentTokens) {
          console.log(`  note: the student generated ${studentTokens} tokens, PyTorch ${rounds.pytorch[0].tokens}`);
        }
      } else {
        result.pytorchTokensPerSec[name] = null;
        result.pytorchMs[name] = null;
        result.ratioToPytorch[name] = null;
        result.generatedTokens[name] = { student: studentTokens, pytorch: null };
      }
      const ratio = result.ratioToPytorch[name];
      console.log(
        `${name} (${(studentReady.params / 1e6).toFixed(1)}M params): student ${result.tokensPerSecCached[name]} ` +
          `tok/s cached (${result.msCached[name]} ms), ${result.tokensPerSecUncached[name]} uncached ` +
          `(${result.speedup[name]}x); PyTorch ${result.pytorchTokensPerSec[name] ?? '-'} tok/s; ratio ` +
          (ratio ? `${ratio.median} (${ratio.min}–${ratio.max})` : 'n/a')
      );
      await student.close();
      await torch?.close();
    } finally {
      student.kill();
      torch?.kill();
    }
  }
  result.machine.load.push(round(loadavg()[0], 2));
  result.machine.stealShare = steal();
  if (Math.max(...result.machine.load) > result.machine.cores) {
    console.log(
      `decode: load average ${result.machine.load.join(' → ')} on ${result.machine.cores} cores: the figures are ` +
        `contended (PyTorch's OpenMP threads suffer most); rerun on a quiet machine`
    );
  }
  const ratios = Object.values(result.ratioToPytorch);
  result.goal = ratios.length > 0 && ratios.every((r) => r !== null && r.median >= 1);
  console.log(JSON.stringify(result));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
