/**
 * Training throughput of the student against PyTorch on the same CPU: tokens/s of full training steps (forward,
 * backward, gradient clipping, AdamW update, loss read back) of one fixed config, on every tfjs backend that loads
 * and on PyTorch CPU (HF `T5ForConditionalGeneration`, bench/pytorch_t5_throughput.py), with the same shape, batch,
 * sequence lengths, loss (mean token cross-entropy), optimiser and thread count.
 *
 * Each tfjs backend runs in a fresh child process through the real trainer (`train()`, standard finetuning on
 * synthetic text long enough that every source and target is cut to exactly the configured lengths), so the peak
 * RSS of each is its own. Warmup steps are run and not timed. Last stdout line: one JSON object with `tokensPerSec`
 * and `ratioToPytorch` (from median step times), `peakRssMiB` (per backend, the whole process; null where skipped),
 * `trainingPeakRssMiB` (the peak when the last step ended, before the final checkpoint is serialised), `msPerStep`
 * (median), `meanMsPerStep`, `skipped` (why) and `config`.
 *
 * Environment: BENCH_BACKENDS (default `tensorflow,wasm`; add `cpu` to run the pure-JS backend, which took over
 * 200 s a step for a model a fifth this size), BENCH_STEPS / BENCH_WARMUP (timed and untimed steps for native and
 * PyTorch; wasm and cpu run fewer), BENCH_PYTHON (the interpreter with torch and transformers:
 * `pip install -r bench/requirements.txt`; default python3), BENCH_THREADS (default 2).
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeBackend, initBackend, type BackendName } from '../lib/student/backend';
import { makeConfig, PRESETS, type PresetName } from '../lib/student/config';
import { parseTrainOptions, train } from '../lib/student/train';
import type { TrainRecord } from '../lib/student/pairs';

/** The fixed config: t5-v1_1-small's shape at the student's default vocabulary, short sequences, batch 8. */
const CONFIG = {
  preset: 'small' as PresetName,
  vocabSize: 8000,
  batchSize: 8,
  sourceLength: 64,
  targetLength: 32,
  learningRate: 1e-4,
  maxGradNorm: 1,
  threads: Number(process.env.BENCH_THREADS ?? 2),
};

/** Steps per runner: the slow backends get fewer, so the whole bench takes minutes. */
const STEPS: Record<BackendName | 'pytorch-cpu', { warmup: number; steps: number }> = {
  tensorflow: { warmup: Number(process.env.BENCH_WARMUP ?? 3), steps: Number(process.env.BENCH_STEPS ?? 10) },
  'pytorch-cpu': { warmup: Number(process.env.BENCH_WARMUP ?? 3), steps: Number(process.env.BENCH_STEPS ?? 10) },
  wasm: { warmup: 1, steps: 3 },
  cpu: { warmup: 1, steps: 1 },
};

const CHILD_TIMEOUT_MS = 20 * 60_000;
const TOKENS_PER_STEP = CONFIG.batchSize * (CONFIG.sourceLength + CONFIG.targetLength);
const RESULT_PREFIX = 'BENCH_RESULT ';

interface RunResult {
  /** From the median step time. */
  tokensPerSec: number;
  /** Median. */
  msPerStep: number;
  meanMsPerStep: number;
  stepMs: number[];
  peakRssMiB: number;
  /** Peak RSS when the last step ended, before the final checkpoint is serialised (tfjs runs only). */
  trainingPeakRssMiB?: number;
  detail: string;
  losses: number[];
  params: number;
  vocab: number;
}

type Outcome = { ok: true; result: RunResult } | { ok: false; reason: string };

/**
 * Throughput from the median step: on a shared machine another process's burst lands on a few steps (PyTorch's
 * OpenMP threads, which spin, suffer most) and should not set the figure. The mean is reported beside it.
 */
function timing(stepMs: number[]): Pick<RunResult, 'tokensPerSec' | 'msPerStep' | 'meanMsPerStep'> {
  const sorted = [...stepMs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return {
    tokensPerSec: (TOKENS_PER_STEP * 1000) / median,
    msPerStep: median,
    meanMsPerStep: stepMs.reduce((a, b) => a + b, 0) / stepMs.length,
  };
}

/** Pseudo-words from a fixed syllable set: enough distinct text for an 8k BPE vocabulary, reproducible. */
function syntheticRecords(count: number, seed: number): TrainRecord[] {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
  const syllables = 'ka ri mo tu se la no vi pe da gu ze fo hi ju ly qua stre bin gol wex yar'.split(' ');
  const word = () =>
    Array.from({ length: 1 + (next() % 3) }, () => syllables[next() % syllables.length]).join('') + String(next() % 10);
  const text = (words: number) => Array.from({ length: words }, word).join(' ');
  // 120 and 60 words encode to well over 64 and 32 tokens, so every pair is truncated to exactly those lengths.
  return Array.from({ length: count }, () => ({ input: text(120), goldLabel: text(60) }));
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

/** Child mode: one backend, one training run, one result line. */
async function runChild(backend: BackendName): Promise<void> {
  await initBackend(backend);
  const { warmup, steps } = STEPS[backend];
  const marks: number[] = [];
  const losses: number[] = [];
  let trainingPeakRssMiB = 0;
  const result = await train(
    syntheticRecords(400, 7),
    parseTrainOptions({
      method: 'standard-finetune',
      preset: CONFIG.preset,
      vocabSize: CONFIG.vocabSize,
      steps: warmup + steps,
      batchSize: CONFIG.batchSize,
      learningRate: CONFIG.learningRate,
      maxGradNorm: CONFIG.maxGradNorm,
      seed: 1,
      maxInputLength: CONFIG.sourceLength,
      maxTargetLength: CONFIG.targetLength,
      maxRationaleLength: CONFIG.targetLength,
      backend,
    }),
    {
      onProgress: (p) => {
        marks.push(performance.now());
        losses.push(p.loss);
        if (p.step === warmup + steps) trainingPeakRssMiB = peakRssMiB();
      },
    }
  );
  if (result.tokenizerVocab !== CONFIG.vocabSize) {
    throw new Error(`the synthetic corpus gave a ${result.tokenizerVocab}-token vocabulary, not ${CONFIG.vocabSize}`);
  }
  // Step i ends at marks[i]; the timed steps are those after the warmup (≥ 1), each measured from the previous mark.
  const stepMs = marks.slice(warmup).map((t, i) => Math.round(t - marks[warmup + i - 1]));
  const out: RunResult = {
    ...timing(stepMs),
    stepMs,
    peakRssMiB: peakRssMiB(),
    trainingPeakRssMiB,
    detail: describeBackend().detail,
    losses: losses.map((l) => Number(l.toFixed(4))),
    params: result.params,
    vocab: result.tokenizerVocab,
  };
  console.log(RESULT_PREFIX + JSON.stringify(out));
}

/** Runs a command, collecting stdout; resolves with the parsed result line or the reason there is none. */
function runProcess(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  parse: (stdout: string) => Outcome
): Promise<Outcome> {
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

async function runBackend(backend: BackendName): Promise<Outcome> {
  const env = {
    ...process.env,
    STEPWISE_TFJS_BACKEND: backend,
    TF_CPP_MIN_LOG_LEVEL: '2',
    // TensorFlow's thread pools take these at start-up; on a 2-core machine they change nothing.
    TF_NUM_INTRAOP_THREADS: String(CONFIG.threads),
    TF_NUM_INTEROP_THREADS: '1',
  };
  return runProcess(process.execPath, ['--import', 'tsx', __filename, '--child', backend], env, (stdout) => {
    const line = stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
    if (!line) return { ok: false, reason: `printed no result: ${stdout.slice(-400)}` };
    return { ok: true, result: JSON.parse(line.slice(RESULT_PREFIX.length)) as RunResult };
  });
}

async function runPytorch(): Promise<Outcome> {
  const python = process.env.BENCH_PYTHON ?? 'python3';
  const { model_type: _modelType, ...hfConfig } = makeConfig(CONFIG.preset, CONFIG.vocabSize);
  const { warmup, steps } = STEPS['pytorch-cpu'];
  const args = [
    join(__dirname, 'pytorch_t5_throughput.py'),
    ['--config', JSON.stringify(hfConfig)],
    ['--batch', CONFIG.batchSize, '--source', CONFIG.sourceLength, '--target', CONFIG.targetLength],
    ['--warmup', warmup, '--steps', steps, '--threads', CONFIG.threads],
    ['--lr', CONFIG.learningRate, '--max-grad-norm', CONFIG.maxGradNorm],
  ]
    .flat()
    .map(String);
  const env = { ...process.env, OMP_NUM_THREADS: String(CONFIG.threads), MKL_NUM_THREADS: String(CONFIG.threads) };
  return runProcess(python, args, env, (stdout) => {
    const last = stdout.trim().split('\n').pop() ?? '';
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(last) as Record<string, unknown>;
    } catch {
      return { ok: false, reason: `printed no JSON result: ${last.slice(0, 300)}` };
    }
    if (typeof parsed.skipped === 'string') return { ok: false, reason: parsed.skipped };
    const r = parsed as unknown as RunResult & { versions: Record<string, string>; threads: number };
    return {
      ok: true,
      result: {
        ...r,
        ...timing(r.stepMs),
        detail: `torch ${r.versions.torch}, transformers ${r.versions.transformers}, ${r.threads} threads`,
        vocab: CONFIG.vocabSize,
      },
    };
  });
}

const round = (x: number, digits = 1) => Number(x.toFixed(digits));

async function main(): Promise<void> {
  const childAt = process.argv.indexOf('--child');
  if (childAt >= 0) {
    await runChild(process.argv[childAt + 1] as BackendName);
    return;
  }

  const requested = (process.env.BENCH_BACKENDS ?? 'tensorflow,wasm').split(',').map((s) => s.trim());
  const backends: BackendName[] = ['tensorflow', 'wasm', 'cpu'];
  const outcomes: Record<string, Outcome> = {};
  for (const backend of backends) {
    if (!requested.includes(backend)) {
      outcomes[backend] = {
        ok: false,
        reason:
          backend === 'cpu'
            ? 'pure-JS backend: over 200 s a step for a model a fifth this size (measured on this 2-core class of machine); BENCH_BACKENDS=tensorflow,wasm,cpu runs it'
            : 'not in BENCH_BACKENDS',
      };
      continue;
    }
    console.log(`train-throughput: ${backend} (${STEPS[backend].warmup} warmup + ${STEPS[backend].steps} timed steps)`);
    outcomes[backend] = await runBackend(backend);
    report(backend, outcomes[backend]);
  }
  console.log(
    `train-throughput: pytorch-cpu (${STEPS['pytorch-cpu'].warmup} warmup + ${STEPS['pytorch-cpu'].steps} timed steps)`
  );
  outcomes['pytorch-cpu'] = await runPytorch();
  report('pytorch-cpu', outcomes['pytorch-cpu']);

  const field = (pick: (r: RunResult) => number | undefined, digits = 1) =>
    Object.fromEntries(
      Object.entries(outcomes).map(([k, o]) => {
        const value = o.ok ? pick(o.result) : undefined;
        return [k, value !== undefined && Number.isFinite(value) ? round(value, digits) : null];
      })
    );
  const torch = outcomes['pytorch-cpu'];
  const ratioToPytorch = Object.fromEntries(
    backends.map((b) => {
      const o = outcomes[b];
      return [b, o.ok && torch.ok ? round(o.result.tokensPerSec / torch.result.tokensPerSec, 3) : null];
    })
  );
  const shape = PRESETS[CONFIG.preset];
  console.log(
    JSON.stringify({
      tokensPerSec: field((r) => r.tokensPerSec),
      ratioToPytorch,
      peakRssMiB: field((r) => r.peakRssMiB, 0),
      trainingPeakRssMiB: field((r) => r.trainingPeakRssMiB, 0),
      msPerStep: field((r) => r.msPerStep, 0),
      meanMsPerStep: field((r) => r.meanMsPerStep, 0),
      skipped: Object.fromEntries(Object.entries(outcomes).flatMap(([k, o]) => (o.ok ? [] : [[k, o.reason]]))),
      detail: Object.fromEntries(Object.entries(outcomes).flatMap(([k, o]) => (o.ok ? [[k, o.result.detail]] : []))),
      config: {
        preset: CONFIG.preset,
        vocabSize: CONFIG.vocabSize,
        params: Object.values(outcomes).find((o) => o.ok)?.result.params ?? null,
        d_model: shape.d_model,
        d_ff: shape.d_ff,
        layers: `${shape.num_layers}+${shape.num_decoder_layers}`,
        heads: shape.num_heads,
        dropout: shape.dropout_rate,
        batchSize: CONFIG.batchSize,
        sourceLength: CONFIG.sourceLength,
        targetLength: CONFIG.targetLength,
        tokensPerStep: TOKENS_PER_STEP,
        loss: 'mean token cross-entropy',
        optimizer: `AdamW (lr ${CONFIG.learningRate}, no weight decay, clip ${CONFIG.maxGradNorm})`,
        threads: CONFIG.threads,
        steps: STEPS,
      },
    })
  );
}

function report(name: string, outcome: Outcome): void {
  if (!outcome.ok) {
    console.log(`  ${name}: skipped (${outcome.reason})`);
    return;
  }
  const r = outcome.result;
  console.log(
    `  ${name}: ${round(r.tokensPerSec)} tokens/s, ${round(r.msPerStep, 0)} ms/step median, ` +
      `${round(r.meanMsPerStep, 0)} mean (steps ${r.stepMs.join(', ')} ms), ` +
      `peak RSS ${round(r.peakRssMiB, 0)} MiB` +
      (r.trainingPeakRssMiB ? ` (${round(r.trainingPeakRssMiB, 0)} MiB before the final checkpoint)` : '') +
      `, loss ${r.losses[0]} → ${r.losses[r.losses.length - 1]} [${r.detail}]`
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
