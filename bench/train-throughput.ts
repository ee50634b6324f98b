/**
 * Training throughput and peak memory of the student against PyTorch on the same CPU: tokens/s of full training
 * steps (forward, backward, gradient clipping, AdamW update, loss read back) and the peak RSS of a whole training run
 * with its final checkpoint written, for the student on native TensorFlow (`train()`, the real trainer) and for HF
 * `T5ForConditionalGeneration` on PyTorch CPU (bench/pytorch_t5_throughput.py), with the same shape, batch, sequence
 * lengths, loss, optimiser and thread count.
 *
 * Cases (BENCH_CASES, default all four, e.g. `small:standard,d256:dss`): two shapes × two methods.
 * - `small`: the `small` preset (t5-v1_1-small's shape) at an 8k vocabulary, batch 8, 64 source and 32 target (and
 *   rationale) tokens.
 * - `d256`: the reproduction's student, built from examples/svamp-paper.json exactly as a run of that recipe builds
 *   it (its preset, `student.config` overrides and vocabulary; its batch and length limits): d_model 256, d_ff 1024,
 *   4 heads × 64, 4+4 layers, gated-GELU, tied head without rescale; batch 16, 128 input, 32 label, 128 rationale.
 * - `standard`: standard finetuning, input → label, one sequence pair per example.
 * - `dss`: distilling step-by-step, two pairs per example (`predict:` input → label, `explain:` input → rationale),
 *   two forward passes per step and one backward through α·label + (1−α)·rationale loss, α 0.5 (lib/student/loss.ts).
 *   Native runs the two passes' encoders as one batch of 2B rows (`T5Model.pairLoss`); the PyTorch side makes two
 *   whole model calls, as the paper's released code does.
 * Tokens per step count every source and target token of the step (for dss both pairs); the synthetic records are
 * long enough that every sequence is cut to its full length (the native child checks this with the run's own
 * tokenizer), and PyTorch's random ids fill them too, so both sides process the same tokens.
 *
 * Per case the contenders alternate, native, PyTorch, native, PyTorch, … for BENCH_ROUNDS rounds (default 3), each run
 * a fresh child process so its peak RSS is its own. Each run warms up until its step times settle (the last 3 within
 * 5% of each other, at most BENCH_MAX_WARMUP = 15 warm-up steps; `settled` says whether they did), then times
 * BENCH_STEPS steps (default 10) and takes their median. A round's ratio is native tokens/s ÷ PyTorch tokens/s of that
 * round; the case reports the median over rounds with its min–max: on a shared machine a single pass decides nothing.
 *
 * GFLOP/s: 6 × N × T per step over the median step time, where N·T sums, per weight matrix, its parameters times the
 * tokens that pass through it: source tokens through the encoder's matrices and the decoder's cross-attention key and
 * value projections (which read the encoder's output), target tokens through the rest of the decoder's matrices and
 * the output projection (vocabulary × d_model, counted whether tied or not). Embedding lookups, layer norms,
 * relative-position biases and the attention-score products (QKᵀ, AV) are not counted, as in the usual 6N estimate.
 * The fraction of peak divides by cores × fp32 FLOP/cycle × GHz, with cores the threads used (at most the machine's
 * cores), GHz from /proc/cpuinfo (the model name's rated clock, else `cpu MHz`) and FLOP/cycle from its flags:
 * AVX-512 with two 512-bit FMA units is 64 (2 × 16 lanes × 2); AMD Zen 4 (family 25) runs AVX-512 on two 256-bit
 * FMA pipes, 32; AVX2+FMA is 32, AVX alone 16. `machine.peak` says which applied. The clock is the VM's reported
 * one: a core that boosts above it can exceed "peak" (a fraction over 1).
 *
 * Matrix products alone: per case, after the rounds, each side times just the step's weight-matrix products (every
 * forward product X·W and the two of its backward pass, dX and dW; the products the GFLOP figure counts), with random
 * operands of the step's shapes, in a child of its own: native in the student's shapes (q, k and v of self-attention
 * as one product, k and v of cross-attention as one, as lib/student/fast-ops.ts runs them), PyTorch in HF's (each
 * projection alone, as nn.Linear runs it). `matmulMs` is each side's median pass; `matmulShare` its share of that
 * side's step; `ratioCeiling` PyTorch's step time ÷ native's products alone: the ratio native would reach if nothing
 * but its matrix products took time. That says how much of a ratio is the two sides' GEMM kernels and how much
 * everything else.
 *
 * BENCH_ISA=avx2 caps both sides' kernels at AVX2 (ONEDNN_MAX_CPU_ISA for oneDNN, which TensorFlow's MatMul and its
 * Eigen contractions run on; MKL_ENABLE_INSTRUCTIONS for MKL, PyTorch's GEMM), so that an AVX-512 machine measures
 * what an AVX2 one would, as far as the ISA goes (clock, caches and memory stay this machine's). Measured on a Zen 5
 * EPYC (2 vCPU), 3 rounds a case, at 8773221: PyTorch's MKL GEMMs ran at 190-206 GFLOP/s whatever the cap (even
 * MKL_ENABLE_INSTRUCTIONS=SSE4_2 did not slow them: on AMD, MKL takes its own path, AVX2-class by its speed), where
 * TensorFlow's oneDNN ran the same products at 354-399 GFLOP/s on AVX-512 and 192-207 capped at AVX2. Uncapped, native
 * led by 1.53 (small:standard), 1.60 (small:dss), 1.63 (d256:standard) and 1.99 (d256:dss); capped, by 1.03, 1.06,
 * 1.10 and 1.22. So on that machine native's lead is mostly the ISA, and what is left of it is the rest of the step:
 * small:standard spent 241-242 ms outside its products, capped or not, against PyTorch's 266-278. At 4104fc1 (the
 * optimiser's clip, decay and Adam as one kernel of Stepwise's own), same machine: uncapped 1.67 (1.64-1.73), 1.71
 * (1.61-1.81), 1.72 (1.58-1.80) and 1.97 (1.95-1.99); capped 1.07 (1.06-1.09), 1.09 (1.08-1.11), 1.13 (1.10-1.14) and
 * 1.28 (1.20-1.32; PyTorch's rounds there ran 1.88-2.07 s, a spread the other cases did not show; a rerun of that
 * case alone gave 1.21, 1.19-1.22). At 47069a3, same machine: uncapped 1.67 (1.64-1.68), 1.61 (1.61-1.67), 1.82
 * (1.79-1.85) and 1.95 (1.88-1.95); capped 1.10 (1.05-1.13), 1.06 (1.04-1.09), 1.12 (1.11-1.12) and 1.17 (1.16-1.22).
 * At c69b91a (a dss step's two encoder passes as one), the dss cases: uncapped 1.72 (1.70-1.80) and 2.00 (1.99-2.10);
 * capped 1.14 (1.14-1.16) and 1.22 (1.18-1.26).
 *
 * Peak RSS: the whole child process, final checkpoint included (native: `trainToFile` writes it to a temp file as a
 * pipeline run's child does; PyTorch: torch.save of the model's and optimiser's state dicts to a temp file);
 * `nativeTrainingPeakRssMiB` is native's peak when the last timed step ended, before the final checkpoint.
 *
 * BENCH_BACKENDS (default `tensorflow`) may add `wasm` (and `cpu`, the pure-JS backend, over 200 s a step for a model a
 * fifth this size) for one run on the `small:standard` case, reported under `otherBackends` against that case's
 * PyTorch median; off by default now, since the goals are about native. BENCH_PYTHON names an interpreter with torch
 * and transformers; by default the bench installs bench/requirements.txt's pins into a cached venv
 * (infra/bench-python.ts; ~4 GB, minutes, once). BENCH_THREADS (default 2) sets both sides' threads: native's
 * intra-op and inter-op pools, PyTorch's `set_num_threads` (its inter-op pool, which eager training does not use,
 * keeps its default).
 *
 * Last stdout line: one JSON object: `cases` (per case `shape`, `method`, `ratio` {median,min,max},
 * `nativeTokensPerSec`, `pytorchTokensPerSec`, `nativeMsPerStep`, `pytorchMsPerStep`, `gflops` {native,pytorch},
 * `peakFraction` {native,pytorch}, `matmulMs`, `matmulGflops` and `matmulShare` {native,pytorch}, `ratioCeiling`,
 * `peakRssMiB` {native,pytorch}, `rssRatio`, `nativeTrainingPeakRssMiB`, `settled`
 * {native,pytorch} (every round settled), `rounds` (each round's figures, with `stealShare`: the share of the machine's
 * CPU time its hypervisor gave other guests during that run, from /proc/stat; a round run at a tenth stolen is not
 * comparable with one at none)), `goals` (`throughput`: every case's median
 * ratio ≥ 1.2; `rss`: every case's RSS ratio ≤ 1.5; null where a case was not measured), `machine` (with `isaCap`),
 * `config`.
 * The default run takes about 15–25 minutes on 2 cores.
 */
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { loadavg, availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';

import { benchPython } from '../infra/bench-python';
import { describeBackend, initBackend, type BackendName } from '../lib/student/backend';
import { readCheckpointMeta } from '../lib/student/checkpoint';
import { isPresetName, makeConfig, type ConfigOverrides, type PresetName, type T5Config } from '../lib/student/config';
import { buildPairs, encodePairs, type TrainRecord } from '../lib/student/pairs';
import { paramSpecs } from '../lib/student/t5';
import { tf } from '../lib/student/tf';
import { loadTokenizer } from '../lib/student/tokenizer';
import { parseTrainOptions, trainToFile } from '../lib/student/train';
import { cpuinfo, median, round, spread, stealMeter } from './stats';

// ---------------------------------------------------------------------------------------------------------------
// Cases

type ShapeName = 'small' | 'd256';
type MethodName = 'standard' | 'dss';
const SHAPE_NAMES: readonly ShapeName[] = ['small', 'd256'];
const METHOD_NAMES: readonly MethodName[] = ['standard', 'dss'];

interface Shape {
  preset: PresetName;
  overrides: ConfigOverrides;
  vocabSize: number;
  batchSize: number;
  sourceLength: number;
  targetLength: number;
  rationaleLength: number;
}

interface Case {
  shape: ShapeName;
  method: MethodName;
}

const caseName = (c: Case) => `${c.shape}:${c.method}`;

/** The reproduction's student: examples/svamp-paper.json's `student` section, read, not copied, so they stay one. */
function recipeShape(): Shape {
  const file = join(__dirname, '..', 'examples', 'svamp-paper.json');
  const student = (JSON.parse(readFileSync(file, 'utf8')) as { student?: Record<string, unknown> }).student ?? {};
  const int = (field: string): number => {
    const value = student[field];
    if (!Number.isSafeInteger(value)) throw new Error(`${file}: student.${field} is ${JSON.stringify(value)}`);
    return value as number;
  };
  const preset = student.preset ?? 'tiny';
  if (!isPresetName(preset)) throw new Error(`${file}: student.preset is ${JSON.stringify(preset)}`);
  return {
    preset,
    overrides: (student.config ?? {}) as ConfigOverrides,
    vocabSize: int('vocabSize'),
    batchSize: int('batchSize'),
    sourceLength: int('maxInputLength'),
    targetLength: int('maxTargetLength'),
    rationaleLength: int('maxRationaleLength'),
  };
}

const SHAPES: Record<ShapeName, Shape> = {
  small: {
    preset: 'small',
    overrides: {},
    vocabSize: 8000,
    batchSize: 8,
    sourceLength: 64,
    targetLength: 32,
    rationaleLength: 32,
  },
  d256: recipeShape(),
};

/** The model config both sides build: the tokenizer must give exactly `vocabSize` tokens (the child checks). */
const modelConfig = (shape: Shape): T5Config => makeConfig(shape.preset, shape.vocabSize, shape.overrides);

/** Source and target tokens of one step: every sequence is full, and dss runs both pairs of every example. */
function tokensOf(c: Case): { source: number; target: number } {
  const s = SHAPES[c.shape];
  return c.method === 'dss'
    ? { source: 2 * s.batchSize * s.sourceLength, target: s.batchSize * (s.targetLength + s.rationaleLength) }
    : { source: s.batchSize * s.sourceLength, target: s.batchSize * s.targetLength };
}

/** Matrix parameters each source and each target token passes through (see the GFLOP/s convention above). */
function matmulParams(config: T5Config): { source: number; target: number } {
  let source = 0;
  let target = config.vocab_size * config.d_model; // the output projection, tied or not
  for (const spec of paramSpecs(config)) {
    if (!spec.linear || spec.name === 'lm_head.weight') continue;
    const n = spec.shape[0] * spec.shape[1];
    if (spec.name.startsWith('encoder.') || /EncDecAttention\.[kv]\.weight$/.test(spec.name)) source += n;
    else target += n;
  }
  return { source, target };
}

function flopsPerStep(c: Case): number {
  const n = matmulParams(modelConfig(SHAPES[c.shape]));
  const t = tokensOf(c);
  return 6 * (n.source * t.source + n.target * t.target);
}

/** One weight-matrix product of a step's forward pass: X[rows, inner] · W[inner, cols]. */
type Product = [rows: number, inner: number, cols: number];

/**
 * The forward pass's weight-matrix products of one step, as a side runs them: the student's sublayers project q, k
 * and v of self-attention in one product and k and v of cross-attention in one (lib/student/fast-ops.ts), where HF's
 * T5 runs each projection on its own (`fused` false). The same FLOPs either way, and the same as flopsPerStep counts
 * (checked). dss runs the encoder once per pair, as both sides' steps do.
 */
function stepProducts(c: Case, fused: boolean): Product[] {
  const shape = SHAPES[c.shape];
  const config = modelConfig(shape);
  const { d_model: d, d_ff: ff, vocab_size: vocab } = config;
  const hk = config.num_heads * config.d_kv;
  const gated = config.feed_forward_proj === 'gated-gelu';
  const targets = c.method === 'dss' ? [shape.targetLength, shape.rationaleLength] : [shape.targetLength];
  const source = shape.batchSize * shape.sourceLength;
  const out: Product[] = [];
  const repeat = (n: number, p: Product) => {
    for (let i = 0; i < n; i++) out.push(p);
  };
  const feedForward = (rows: number) => {
    repeat(gated ? 2 : 1, [rows, d, ff]);
    repeat(1, [rows, ff, d]);
  };
  for (const targetLength of targets) {
    const target = shape.batchSize * targetLength;
    for (let l = 0; l < config.num_layers; l++) {
      if (fused) repeat(1, [source, d, 3 * hk]);
      else repeat(3, [source, d, hk]);
      repeat(1, [source, hk, d]);
      feedForward(source);
    }
    for (let l = 0; l < config.num_decoder_layers; l++) {
      if (fused) repeat(1, [target, d, 3 * hk]);
      else repeat(3, [target, d, hk]);
      repeat(1, [target, hk, d]);
      repeat(1, [target, d, hk]);
      if (fused) repeat(1, [source, d, 2 * hk]);
      else repeat(2, [source, d, hk]);
      repeat(1, [target, hk, d]);
      feedForward(target);
    }
    repeat(1, [target, d, vocab]);
  }
  const flops = out.reduce((sum, [r, i, k]) => sum + 6 * r * i * k, 0);
  if (flops !== flopsPerStep(c)) {
    throw new Error(`${caseName(c)}: the step's products come to ${flops} FLOP, flopsPerStep to ${flopsPerStep(c)}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Settings

function intEnv(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${name} is ${JSON.stringify(raw)}; expected an integer ≥ ${min}`);
  }
  return value;
}

function selectedCases(): Case[] {
  const raw = process.env.BENCH_CASES;
  if (!raw) return SHAPE_NAMES.flatMap((shape) => METHOD_NAMES.map((method) => ({ shape, method })));
  return raw.split(',').map((entry) => {
    const [shape, method] = entry.trim().split(':');
    if (!SHAPE_NAMES.includes(shape as ShapeName) || !METHOD_NAMES.includes(method as MethodName)) {
      throw new Error(
        `BENCH_CASES has ${JSON.stringify(entry)}; expected shape:method with shape ${SHAPE_NAMES.join('|')} ` +
          `and method ${METHOD_NAMES.join('|')}, e.g. small:standard,d256:dss`
      );
    }
    return { shape: shape as ShapeName, method: method as MethodName };
  });
}

/** How a run warms up and how many steps it times. */
interface StepPlan {
  /** Warm-up ends once this many consecutive step times lie within `tolerance` of each other… */
  window: number;
  tolerance: number;
  /** …or after this many warm-up steps, unsettled. */
  maxWarmup: number;
  /** Timed steps after the warm-up. */
  steps: number;
}

/**
 * BENCH_ISA caps the vector instructions both sides' matrix kernels may use: oneDNN's (TensorFlow's kernels, and
 * PyTorch's where it uses oneDNN) by ONEDNN_MAX_CPU_ISA, MKL's (PyTorch's GEMMs) by MKL_ENABLE_INSTRUCTIONS.
 */
const ISA_CAPS = { avx2: { ONEDNN_MAX_CPU_ISA: 'AVX2', MKL_ENABLE_INSTRUCTIONS: 'AVX2' } } as const;
type IsaCap = keyof typeof ISA_CAPS;

function isaCap(): IsaCap | null {
  const raw = process.env.BENCH_ISA;
  if (raw === undefined || raw === '') return null;
  if (Object.hasOwn(ISA_CAPS, raw)) return raw as IsaCap;
  throw new Error(
    `BENCH_ISA is ${JSON.stringify(raw)}; expected ${Object.keys(ISA_CAPS).join('|')}, or unset for no cap`
  );
}

const SETTINGS = {
  isa: isaCap(),
  rounds: intEnv('BENCH_ROUNDS', 3, 1),
  threads: intEnv('BENCH_THREADS', 2, 1),
  plan: {
    window: 3,
    tolerance: 0.05,
    maxWarmup: intEnv('BENCH_MAX_WARMUP', 15, 1),
    steps: intEnv('BENCH_STEPS', 10, 1),
  } satisfies StepPlan,
  learningRate: 1e-4,
  maxGradNorm: 1,
  alpha: 0.5,
};

/** The other tfjs rungs run once, shorter, on small:standard only: they are far slower and not what the goals ask. */
const OTHER_BACKEND_PLANS: Partial<Record<BackendName, StepPlan>> = {
  wasm: { window: 3, tolerance: 0.05, maxWarmup: 1, steps: 3 },
  cpu: { window: 3, tolerance: 0.05, maxWarmup: 1, steps: 1 },
};

/** The environment both sides' children get from BENCH_ISA. */
const isaEnv = (): Record<string, string> => (SETTINGS.isa ? { ...ISA_CAPS[SETTINGS.isa] } : {});

const CHILD_TIMEOUT_MS = 20 * 60_000;
const RESULT_PREFIX = 'BENCH_RESULT ';

// ---------------------------------------------------------------------------------------------------------------
// Step timing, shared by the native child and (mirrored) the PyTorch script

/** Splits a run's step times into warm-up and timed steps by the plan. */
class StepClock {
  readonly warmupMs: number[] = [];
  readonly stepMs: number[] = [];
  settled = false;
  private warming = true;
  private last?: number;

  constructor(private readonly plan: StepPlan) {}

  /** Marks the start of the first step; later steps are timed end to end, the loop's work between them included. */
  start(): void {
    this.last ??= performance.now();
  }

  /** Marks the end of a step. */
  lap(): void {
    const now = performance.now();
    const ms = now - (this.last ?? now);
    this.last = now;
    if (!this.warming) {
      this.stepMs.push(ms);
      return;
    }
    this.warmupMs.push(ms);
    const recent = this.warmupMs.slice(-this.plan.window);
    if (recent.length === this.plan.window && Math.max(...recent) <= Math.min(...recent) * (1 + this.plan.tolerance)) {
      this.settled = true;
      this.warming = false;
    } else if (this.warmupMs.length >= this.plan.maxWarmup) {
      this.warming = false;
    }
  }

  get done(): boolean {
    return this.stepMs.length >= this.plan.steps;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Native child

/** What each child prints on its result line. */
interface RunResult {
  /** Timed steps. */
  stepMs: number[];
  warmupMs: number[];
  settled: boolean;
  /** Whole process, final checkpoint written. */
  peakRssMiB: number;
  /** When the last timed step ended, before the final checkpoint. */
  trainingPeakRssMiB: number;
  checkpointMiB: number;
  /** From the child's start to the start of step 1 (imports, data, tokenizer, model init). */
  setupMs: number;
  losses: number[];
  params: number;
  /** Backend or library detail, for the machine section. */
  detail: Record<string, unknown>;
}

/** One run's result, and the share of the machine's CPU its host gave other guests during it (see `stealMeter`). */
type Outcome<R = RunResult> = ({ ok: true; result: R } | { ok: false; reason: string }) & { stealShare?: number };
const isOk = (o: Outcome): o is Extract<Outcome, { ok: true }> => o.ok;

/** Pseudo-words from a fixed syllable set: enough distinct text for an 8k BPE vocabulary, reproducible. */
function syntheticRecords(count: number, seed: number, shape: Shape): TrainRecord[] {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
  const syllables = 'ka ri mo tu se la no vi pe da gu ze fo hi ju ly qua stre bin gol wex yar'.split(' ');
  const word = () =>
    Array.from({ length: 1 + (next() % 3) }, () => syllables[next() % syllables.length]).join('') + String(next() % 10);
  // Every word encodes to at least one token, so twice the limit in words is cut to exactly the limit (checked).
  const text = (tokens: number) => Array.from({ length: 2 * tokens + 8 }, word).join(' ');
  return Array.from({ length: count }, () => ({
    input: text(shape.sourceLength),
    goldLabel: text(shape.targetLength),
    rationale: text(shape.rationaleLength),
  }));
}

function peakRssMiB(): number {
  try {
    const match = /VmHWM:\s+(\d+)\s+kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (match) return Number(match[1]) / 1024;
  } catch {
    // Not Linux: fall through to Node's own figure.
  }
  return process.resourceUsage().maxRSS / 1024;
}

/** Throws unless every sequence of every record encodes to its shape's full length with the run's tokenizer. */
function checkFullLengths(checkpoint: Uint8Array, records: TrainRecord[], c: Case): void {
  const shape = SHAPES[c.shape];
  const tokenizer = loadTokenizer(readCheckpointMeta(checkpoint).tokenizer);
  const limits = {
    maxInputLength: shape.sourceLength,
    maxTargetLength: shape.targetLength,
    maxRationaleLength: shape.rationaleLength,
  };
  const set = encodePairs(tokenizer, buildPairs(records, trainerMethod(c.method)), limits);
  const parts: [string, number[][], number][] = [
    ['source', set.label.sources, shape.sourceLength],
    ['label', set.label.targets, shape.targetLength],
    ...(set.rationale
      ? ([
          ['explain source', set.rationale.sources, shape.sourceLength],
          ['rationale', set.rationale.targets, shape.rationaleLength],
        ] as [string, number[][], number][])
      : []),
  ];
  for (const [what, rows, length] of parts) {
    const short = rows.findIndex((r) => r.length !== length);
    if (short >= 0) {
      throw new Error(`synthetic record ${short}'s ${what} has ${rows[short].length} tokens, not ${length}`);
    }
  }
}

const trainerMethod = (m: MethodName) => (m === 'dss' ? 'distill-step-by-step' : 'standard-finetune');

/** Child mode: one backend, one training run through the real trainer, one result line. */
async function runChild(c: Case, backend: BackendName, plan: StepPlan): Promise<void> {
  let setupMs = 0;
  await initBackend(backend);
  const shape = SHAPES[c.shape];
  const records = syntheticRecords(400, 7, shape);
  const clock = new StepClock(plan);
  const losses: number[] = [];
  let trainingPeakRssMiB = 0;
  // The final checkpoint goes to a file as a pipeline run writes it (child-main.ts): streamed, tensor by tensor.
  const file = join(tmpdir(), `stepwise-bench-${process.pid}.safetensors`);
  let checkpoint: Buffer;
  let peak: number;
  let result: Awaited<ReturnType<typeof trainToFile>>;
  try {
    result = await trainToFile(
      records,
      parseTrainOptions({
        method: trainerMethod(c.method),
        alpha: SETTINGS.alpha,
        preset: shape.preset,
        config: shape.overrides,
        vocabSize: shape.vocabSize,
        // Enough for the longest warm-up and the timed steps; shouldStop ends the run once the timed steps are done.
        steps: plan.maxWarmup + plan.steps,
        batchSize: shape.batchSize,
        learningRate: SETTINGS.learningRate,
        maxGradNorm: SETTINGS.maxGradNorm,
        seed: 1,
        maxInputLength: shape.sourceLength,
        maxTargetLength: shape.targetLength,
        maxRationaleLength: shape.rationaleLength,
        backend,
      }),
      file,
      {
        // Polled before every step: the first poll is the start of step 1.
        shouldStop: () => {
          setupMs ||= performance.now();
          clock.start();
          return clock.done;
        },
        onProgress: (p) => {
          clock.lap();
          losses.push(p.loss);
          if (clock.done) trainingPeakRssMiB = peakRssMiB();
        },
      }
    );
    peak = peakRssMiB();
    // Read back only after the peak is taken: the length check below needs the run's tokenizer.
    checkpoint = readFileSync(file);
  } finally {
    rmSync(file, { force: true });
  }
  if (result.tokenizerVocab !== shape.vocabSize) {
    throw new Error(`the synthetic corpus gave a ${result.tokenizerVocab}-token vocabulary, not ${shape.vocabSize}`);
  }
  checkFullLengths(checkpoint, records, c);
  const binding = (tf.backend() as unknown as { binding?: { TF_Version?: string } }).binding;
  const out: RunResult = {
    stepMs: clock.stepMs.map((ms) => Number(ms.toFixed(1))),
    warmupMs: clock.warmupMs.map((ms) => Number(ms.toFixed(1))),
    settled: clock.settled,
    peakRssMiB: peak,
    trainingPeakRssMiB,
    checkpointMiB: checkpoint.byteLength / 2 ** 20,
    setupMs: Math.round(setupMs),
    losses: losses.map((l) => Number(l.toFixed(4))),
    params: result.params,
    detail: {
      backend: describeBackend().detail,
      tfjs: tf.version_core,
      ...(binding?.TF_Version ? { tensorflow: binding.TF_Version } : {}),
    },
  };
  console.log(RESULT_PREFIX + JSON.stringify(out));
}

/** The matrix-product child's passes: 2 warm-up, then the median of 7 timed. */
const MATMUL_PASSES = { warmup: 2, timed: 7 };

/**
 * Times a step's weight-matrix products alone on native TensorFlow, each forward product with the two of its backward
 * pass (dX = dY · Wᵀ, dW = Xᵀ · dY) through tfjs's matMul, the same TensorFlow MatMul kernel the sublayers' graphs
 * run, with its transpose flags as they use them. Prints the median pass in ms.
 */
async function timeProducts(products: Product[]): Promise<void> {
  await initBackend('tensorflow');
  const sets = products.map(
    ([r, i, k]) => [tf.randomNormal([r, i]), tf.randomNormal([i, k]), tf.randomNormal([r, k])] as const
  );
  const pass = () => {
    const start = performance.now();
    let last: tf.Tensor | undefined;
    for (const [x, w, dy] of sets) {
      tf.matMul(x, w).dispose();
      tf.matMul(dy, w, false, true).dispose();
      last?.dispose();
      last = tf.matMul(x, dy, true, false);
    }
    // Eager kernels run as they are called on the CPU; reading the last result back makes sure all have.
    last?.dataSync();
    last?.dispose();
    return performance.now() - start;
  };
  for (let i = 0; i < MATMUL_PASSES.warmup; i++) pass();
  const times = Array.from({ length: MATMUL_PASSES.timed }, pass).sort((a, b) => a - b);
  console.log(
    RESULT_PREFIX + JSON.stringify({ matmulMs: round(median(times), 1), passesMs: times.map((t) => round(t, 1)) })
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Parent: child processes

/** Runs a command, collecting stdout; resolves with the parsed result line or the reason there is none. */
function runProcess<R>(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  parse: (stdout: string) => Outcome<R>
): Promise<Outcome<R>> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, reason: `${command} could not start: ${err.message}` });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) {
        resolve(parse(stdout));
        return;
      }
      const tail = (stderr.trim() || stdout.trim()).split('\n').slice(-3).join(' | ').slice(0, 600);
      resolve({ ok: false, reason: `exited with ${signal ?? `code ${code}`}: ${tail}` });
    });
  });
}

/** The environment of a native child, a training run's or the matrix products'. */
function nativeEnv(backend: BackendName): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ...isaEnv(),
    STEPWISE_TFJS_BACKEND: backend,
    TF_CPP_MIN_LOG_LEVEL: '2',
    // TensorFlow's thread pools take these at start-up. Both at the thread count, as TensorFlow sets them by
    // default on a machine of that many cores (a pipeline run's child sets neither): the sublayers' graphs run
    // independent ops side by side on the inter-op threads, each op's work split on the intra-op ones.
    TF_NUM_INTRAOP_THREADS: String(SETTINGS.threads),
    TF_NUM_INTEROP_THREADS: String(SETTINGS.threads),
  };
}

/** A native child's result: the line it printed after RESULT_PREFIX. */
function nativeResult<R>(stdout: string): Outcome<R> {
  const line = stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
  if (!line) return { ok: false, reason: `printed no result: ${stdout.slice(-400)}` };
  return { ok: true, result: JSON.parse(line.slice(RESULT_PREFIX.length)) as R };
}

function runNative(c: Case, backend: BackendName, plan: StepPlan): Promise<Outcome> {
  // --expose-gc as a pipeline run's training child has it (lib/student/child.ts): the checkpoint writer frees what it
  // has read back as it goes, which is part of the peak RSS measured here.
  const args = ['--expose-gc', '--import', 'tsx', __filename, '--child', JSON.stringify({ case: c, backend, plan })];
  return runProcess(process.execPath, args, nativeEnv(backend), nativeResult<RunResult>);
}

function runPytorch(python: string, c: Case, plan: StepPlan): Promise<Outcome> {
  return runPytorchWith<RunResult>(python, c, plan, []);
}

/** The PyTorch script with the case's arguments and `extra`; its last line, a JSON object, is the result. */
function runPytorchWith<R>(python: string, c: Case, plan: StepPlan, extra: string[]): Promise<Outcome<R>> {
  const shape = SHAPES[c.shape];
  const { model_type: _modelType, ...hfConfig } = modelConfig(shape);
  const args = [
    join(__dirname, 'pytorch_t5_throughput.py'),
    ['--config', JSON.stringify(hfConfig), '--method', c.method, '--alpha', SETTINGS.alpha],
    ['--batch', shape.batchSize, '--source', shape.sourceLength, '--target', shape.targetLength],
    ['--rationale', shape.rationaleLength],
    ['--window', plan.window, '--tolerance', plan.tolerance, '--max-warmup', plan.maxWarmup, '--steps', plan.steps],
    ['--threads', SETTINGS.threads, '--lr', SETTINGS.learningRate, '--max-grad-norm', SETTINGS.maxGradNorm],
    extra,
  ]
    .flat()
    .map(String);
  const threads = String(SETTINGS.threads);
  const env = { ...process.env, ...isaEnv(), OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
  return runProcess<R>(python, args, env, (stdout) => {
    const last = stdout.trim().split('\n').pop() ?? '';
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(last) as Record<string, unknown>;
    } catch {
      return { ok: false, reason: `printed no JSON result: ${last.slice(0, 300)}` };
    }
    if (typeof parsed.skipped === 'string') return { ok: false, reason: parsed.skipped };
    return { ok: true, result: parsed as R };
  });
}

/** The matrix-product timings of one case: each side's median pass in ms, or why there is none. */
type MatmulOutcome = { ok: true; ms: number } | { ok: false; reason: string };

/** What a matrix-product child prints (timeProducts here, time_matmuls in the PyTorch script). */
type MatmulResult = { matmulMs?: unknown };

const matmulOf = (o: Outcome<MatmulResult>): MatmulOutcome => {
  if (!o.ok) return o;
  const ms = o.result.matmulMs;
  return typeof ms === 'number' ? { ok: true, ms } : { ok: false, reason: 'printed no matmulMs' };
};

async function runMatmuls(
  python: string | undefined,
  c: Case
): Promise<{ native: MatmulOutcome; pytorch: MatmulOutcome }> {
  const args = ['--import', 'tsx', __filename, '--matmuls', JSON.stringify(stepProducts(c, true))];
  const native = await runProcess(process.execPath, args, nativeEnv('tensorflow'), nativeResult<MatmulResult>);
  const pytorch: Outcome<MatmulResult> = python
    ? await runPytorchWith<MatmulResult>(python, c, SETTINGS.plan, [
        '--matmuls',
        JSON.stringify(stepProducts(c, false)),
      ])
    : { ok: false, reason: 'no PyTorch' };
  return { native: matmulOf(native), pytorch: matmulOf(pytorch) };
}

// ---------------------------------------------------------------------------------------------------------------
// Machine

interface Peak {
  gflops: number;
  cores: number;
  ghz: number;
  ghzFrom: string;
  flopsPerCycle: number;
  isa: string;
}

function machineInfo(threads: number, cap: IsaCap | null) {
  // Off Linux there is no cpuinfo, and the peak stays unknown.
  const { blocks, field, flags } = cpuinfo();
  const relevant = ['avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'avx2', 'fma', 'avx'];
  const cores = new Set(
    blocks.map((b) => `${/^physical id\s*:\s*(\d+)/m.exec(b)?.[1]}:${/^core id\s*:\s*(\d+)/m.exec(b)?.[1]}`)
  ).size;
  const model = field('model name') ?? 'unknown';
  const vendor = field('vendor_id') ?? 'unknown';
  const family = Number(field('cpu family'));

  const rated = /@\s*([\d.]+)\s*GHz/i.exec(model);
  const mhz = Number(field('cpu MHz'));
  const ghz = rated ? Number(rated[1]) : mhz / 1000;
  const ghzFrom = rated ? 'model name' : 'cpu MHz';
  let flopsPerCycle: number;
  let isa: string;
  if (cap === 'avx2' && flags.has('avx2') && flags.has('fma')) {
    flopsPerCycle = 2 * 8 * 2;
    isa = 'capped at AVX2 by BENCH_ISA: 2 FMA units × 8 lanes × 2 FLOP';
  } else if (flags.has('avx512f') && vendor === 'AuthenticAMD' && family === 25) {
    flopsPerCycle = 2 * 8 * 2;
    isa = 'AVX-512 on Zen 4: two 256-bit FMA pipes (512-bit ops take two passes), 2 × 8 lanes × 2 FLOP';
  } else if (flags.has('avx512f')) {
    flopsPerCycle = 2 * 16 * 2;
    isa = 'AVX-512: two 512-bit FMA units assumed, 2 × 16 lanes × 2 FLOP';
  } else if (flags.has('avx2') && flags.has('fma')) {
    flopsPerCycle = 2 * 8 * 2;
    isa = 'AVX2 + FMA, no AVX-512: 2 FMA units × 8 lanes × 2 FLOP';
  } else if (flags.has('avx')) {
    flopsPerCycle = 8 * 2;
    isa = 'AVX without FMA: one add and one multiply of 8 lanes';
  } else {
    flopsPerCycle = 4 * 2;
    isa = 'SSE: one add and one multiply of 4 lanes';
  }
  const peakCores = Math.min(threads, cores || availableParallelism());
  const peak: Peak | null =
    Number.isFinite(ghz) && ghz > 0
      ? { gflops: peakCores * flopsPerCycle * ghz, cores: peakCores, ghz, ghzFrom, flopsPerCycle, isa }
      : null;
  return {
    cpu: model,
    vendor,
    family,
    model: Number(field('model')),
    flags: relevant.filter((f) => flags.has(f)),
    logicalCpus: blocks.length || availableParallelism(),
    cores,
    threads,
    isaCap: cap,
    peak,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Parent: rounds and the summary

interface RoundFigures {
  msPerStep: number;
  tokensPerSec: number;
  warmupSteps: number;
  settled: boolean;
  peakRssMiB: number;
  trainingPeakRssMiB: number;
}

function figures(c: Case, r: RunResult): RoundFigures {
  const t = tokensOf(c);
  const ms = median(r.stepMs);
  return {
    msPerStep: round(ms, 1),
    tokensPerSec: round(((t.source + t.target) * 1000) / ms, 1),
    warmupSteps: r.warmupMs.length,
    settled: r.settled,
    peakRssMiB: round(r.peakRssMiB, 0),
    trainingPeakRssMiB: round(r.trainingPeakRssMiB, 0),
  };
}

function describeRun(name: string, c: Case, o: Outcome): string {
  if (!o.ok) return `  ${name}: failed (${o.reason})`;
  const f = figures(c, o.result);
  const r = o.result;
  return (
    `  ${name}: ${f.tokensPerSec} tokens/s, ${f.msPerStep} ms/step median ` +
    `(${f.warmupSteps} warm-up steps, ${f.settled ? 'settled' : 'NOT settled'}: ${r.warmupMs.map((m) => round(m, 0)).join(', ')}; ` +
    `timed ${r.stepMs.map((m) => round(m, 0)).join(', ')} ms), peak RSS ${f.peakRssMiB} MiB ` +
    `(${f.trainingPeakRssMiB} before the final checkpoint), ${round(r.setupMs / 1000, 1)} s to step 1, loss ${r.losses[0]} → ${r.losses[r.losses.length - 1]}` +
    (o.stealShare === undefined ? '' : `, steal ${o.stealShare}`)
  );
}

function summarise(
  c: Case,
  natives: Outcome[],
  torches: Outcome[],
  peak: Peak | null,
  matmuls: { native: MatmulOutcome; pytorch: MatmulOutcome }
) {
  const ok = (os: Outcome[]) => os.flatMap((o) => (o.ok ? [figures(c, o.result)] : []));
  const n = ok(natives);
  const p = ok(torches);
  const ratios = natives.flatMap((o, i) => {
    const q = torches[i];
    return o.ok && q.ok ? [figures(c, o.result).tokensPerSec / figures(c, q.result).tokensPerSec] : [];
  });
  const med = (fs: RoundFigures[], pick: (f: RoundFigures) => number) => (fs.length ? median(fs.map(pick)) : null);
  const nativeMs = med(n, (f) => f.msPerStep);
  const torchMs = med(p, (f) => f.msPerStep);
  const t = tokensOf(c);
  const flops = flopsPerStep(c);
  const gflops = (ms: number | null) => (ms === null ? null : round(flops / ms / 1e6, 1));
  const fraction = (ms: number | null) => (ms === null || !peak ? null : round(flops / ms / 1e6 / peak.gflops, 3));
  const nativeRss = med(n, (f) => f.peakRssMiB);
  const torchRss = med(p, (f) => f.peakRssMiB);
  const tps = (ms: number | null) => (ms === null ? null : round(((t.source + t.target) * 1000) / ms, 1));
  const matmulMs = {
    native: matmuls.native.ok ? matmuls.native.ms : null,
    pytorch: matmuls.pytorch.ok ? matmuls.pytorch.ms : null,
  };
  const share = (part: number | null, whole: number | null) =>
    part === null || whole === null ? null : round(part / whole, 3);
  return {
    shape: c.shape,
    method: c.method,
    ratio: ratios.length ? spread(ratios, 3) : null,
    nativeTokensPerSec: tps(nativeMs),
    pytorchTokensPerSec: tps(torchMs),
    nativeMsPerStep: nativeMs,
    pytorchMsPerStep: torchMs,
    gflops: { native: gflops(nativeMs), pytorch: gflops(torchMs) },
    peakFraction: { native: fraction(nativeMs), pytorch: fraction(torchMs) },
    matmulMs,
    matmulGflops: { native: gflops(matmulMs.native), pytorch: gflops(matmulMs.pytorch) },
    matmulShare: { native: share(matmulMs.native, nativeMs), pytorch: share(matmulMs.pytorch, torchMs) },
    ratioCeiling: share(torchMs, matmulMs.native),
    peakRssMiB: { native: nativeRss, pytorch: torchRss },
    rssRatio: nativeRss !== null && torchRss !== null ? round(nativeRss / torchRss, 3) : null,
    nativeTrainingPeakRssMiB: med(n, (f) => f.trainingPeakRssMiB),
    // The same architecture on both sides: these match (PyTorch counts a tied matrix once, as the student does).
    params: {
      native: natives.find(isOk)?.result.params ?? null,
      pytorch: torches.find(isOk)?.result.params ?? null,
    },
    settled: {
      native: n.length > 0 && n.length === natives.length && n.every((f) => f.settled),
      pytorch: p.length > 0 && p.length === torches.length && p.every((f) => f.settled),
    },
    tokensPerStep: t.source + t.target,
    gflopPerStep: round(flops / 1e9, 2),
    rounds: natives.map((o, i) => {
      const q = torches[i];
      const side = (x: Outcome) => ({
        ...(x.ok ? figures(c, x.result) : { failed: x.reason }),
        ...(x.stealShare === undefined ? {} : { stealShare: x.stealShare }),
      });
      return {
        native: side(o),
        pytorch: side(q),
        ratio: o.ok && q.ok ? round(figures(c, o.result).tokensPerSec / figures(c, q.result).tokensPerSec, 3) : null,
      };
    }),
  };
}

/** Runs one contender with the host's steal time metered over it. */
async function metered(run: () => Promise<Outcome>): Promise<Outcome> {
  const steal = stealMeter();
  const outcome = await run();
  const stealShare = steal();
  return stealShare === undefined ? outcome : { ...outcome, stealShare };
}

/** True when every case meets the goal, false when any measured case misses it, null when one was not measured. */
function goal(values: (number | null)[], meets: (v: number) => boolean): boolean | null {
  if (values.some((v) => v !== null && !meets(v))) return false;
  return values.every((v) => v !== null) ? true : null;
}

async function main(): Promise<void> {
  const childAt = process.argv.indexOf('--child');
  if (childAt >= 0) {
    const spec = JSON.parse(process.argv[childAt + 1]) as { case: Case; backend: BackendName; plan: StepPlan };
    await runChild(spec.case, spec.backend, spec.plan);
    return;
  }
  const matmulsAt = process.argv.indexOf('--matmuls');
  if (matmulsAt >= 0) {
    await timeProducts(JSON.parse(process.argv[matmulsAt + 1]) as Product[]);
    return;
  }

  const cases = selectedCases();
  const others = (process.env.BENCH_BACKENDS ?? 'tensorflow')
    .split(',')
    .map((s) => s.trim())
    .filter((b): b is BackendName => b in OTHER_BACKEND_PLANS);
  const { rounds, threads, plan } = SETTINGS;
  const log = (line: string) => console.log(`train-throughput: ${line}`);
  const started = Date.now();
  const loadStart = loadavg()[0];
  const python = await benchPython(log).then(
    (path) => ({ ok: true as const, path }),
    (err: unknown) => ({
      ok: false as const,
      reason: `no PyTorch: ${err instanceof Error ? err.message : String(err)}`,
    })
  );
  if (!python.ok) log(python.reason);
  const machine = machineInfo(threads, SETTINGS.isa);
  log(
    `${machine.cpu}, ${machine.cores} cores, flags ${machine.flags.join(' ')}, ${threads} threads` +
      (SETTINGS.isa ? `, kernels capped at ${SETTINGS.isa}` : '')
  );

  const summaries = [];
  const otherBackends: Record<string, unknown> = {};
  const details: { native?: Record<string, unknown>; pytorch?: Record<string, unknown> } = {};
  for (const c of cases) {
    const natives: Outcome[] = [];
    const torches: Outcome[] = [];
    log(
      `${caseName(c)}: ${rounds} rounds, warm-up until ${plan.window} steps within ${plan.tolerance * 100}% ` +
        `(at most ${plan.maxWarmup}), then ${plan.steps} timed steps`
    );
    for (let i = 0; i < rounds; i++) {
      const native = await metered(() => runNative(c, 'tensorflow', plan));
      console.log(describeRun(`round ${i + 1} native`, c, native));
      const torch = python.ok
        ? await metered(() => runPytorch(python.path, c, plan))
        : { ok: false as const, reason: python.reason };
      console.log(describeRun(`round ${i + 1} pytorch`, c, torch));
      natives.push(native);
      torches.push(torch);
      if (native.ok) details.native ??= native.result.detail;
      if (torch.ok) details.pytorch ??= torch.result.detail;
    }
    const matmuls = await runMatmuls(python.ok ? python.path : undefined, c);
    for (const [side, m] of Object.entries(matmuls)) {
      if (!m.ok) log(`${caseName(c)}: ${side} matrix products alone: failed (${m.reason})`);
    }
    const summary = summarise(c, natives, torches, machine.peak, matmuls);
    log(
      `${caseName(c)}: ratio ${JSON.stringify(summary.ratio)}, ${summary.nativeMsPerStep} vs ${summary.pytorchMsPerStep} ms/step, ` +
        `GFLOP/s ${JSON.stringify(summary.gflops)}, peak RSS ${JSON.stringify(summary.peakRssMiB)} MiB; ` +
        `matrix products alone ${JSON.stringify(summary.matmulMs)} ms (${JSON.stringify(summary.matmulGflops)} GFLOP/s), ` +
        `ratio ceiling ${summary.ratioCeiling}`
    );
    summaries.push(summary);
    if (c.shape === 'small' && c.method === 'standard') {
      for (const backend of others) {
        const o = await runNative(c, backend, OTHER_BACKEND_PLANS[backend]!);
        console.log(describeRun(backend, c, o));
        otherBackends[backend] = o.ok
          ? {
              ...figures(c, o.result),
              ratioToPytorch:
                summary.pytorchTokensPerSec === null
                  ? null
                  : round(figures(c, o.result).tokensPerSec / summary.pytorchTokensPerSec, 3),
              detail: o.result.detail,
            }
          : { failed: o.reason };
      }
    }
  }

  const shapeConfig = (name: ShapeName) => {
    const s = SHAPES[name];
    const config = modelConfig(s);
    const n = matmulParams(config);
    return {
      preset: s.preset,
      ...(Object.keys(s.overrides).length ? { from: 'examples/svamp-paper.json' } : {}),
      vocabSize: config.vocab_size,
      d_model: config.d_model,
      d_ff: config.d_ff,
      heads: `${config.num_heads}×${config.d_kv}`,
      layers: `${config.num_layers}+${config.num_decoder_layers}`,
      feed_forward_proj: config.feed_forward_proj,
      tiedHead: config.tie_word_embeddings,
      dropout: config.dropout_rate,
      batchSize: s.batchSize,
      sourceLength: s.sourceLength,
      targetLength: s.targetLength,
      rationaleLength: s.rationaleLength,
      matmulParams: n,
    };
  };
  console.log(
    JSON.stringify({
      cases: summaries,
      goals: {
        throughput: goal(
          summaries.map((s) => s.ratio?.median ?? null),
          (v) => v >= 1.2
        ),
        rss: goal(
          summaries.map((s) => s.rssRatio),
          (v) => v <= 1.5
        ),
        over: cases.map(caseName),
      },
      ...(others.length ? { otherBackends } : {}),
      machine: {
        ...machine,
        tfjs: details.native ?? null,
        pytorch: details.pytorch ?? (python.ok ? null : python.reason),
        loadAvg1m: { start: round(loadStart, 2), end: round(loadavg()[0], 2) },
      },
      config: {
        isaCap: SETTINGS.isa,
        rounds,
        warmup: { window: plan.window, tolerance: plan.tolerance, max: plan.maxWarmup },
        timedSteps: plan.steps,
        threads,
        shapes: Object.fromEntries([...new Set(cases.map((c) => c.shape))].map((s) => [s, shapeConfig(s)])),
        alpha: SETTINGS.alpha,
        loss: 'mean token cross-entropy per sequence pair; dss: α·label + (1−α)·rationale',
        optimizer: `AdamW (lr ${SETTINGS.learningRate}, no weight decay, clip ${SETTINGS.maxGradNorm})`,
        flops: '6 × Σ matrix params × tokens through them (encoder + cross-attn k/v: source; decoder + head: target)',
        wallS: Math.round((Date.now() - started) / 1000),
      },
    })
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
