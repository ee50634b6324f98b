/**
 * Decoding, batched: greedy and beam search, with HF `generate` semantics (`max_new_tokens`, `num_beams`,
 * `length_penalty`, `early_stopping`, `num_return_sequences`).
 *
 * By default every step runs one decoder position against a key/value cache ({@link DecoderCache}: self-attention
 * keys and values of the positions so far, cross-attention ones computed once from the encoder output), so a generated
 * token costs one decoder step. `useCache: false` re-runs the decoder over the whole prefix each step (quadratic in
 * the output length): it is the training forward pass itself, kept as the reference the cached path is tested
 * against and as a fallback. On native TensorFlow the cached step runs as one graph (native-decode.ts), several times
 * faster than the same ops one by one.
 */
import { InputError } from '../errors';
import { NativeDecoder } from './native-decode';
import type { DecoderCache, T5Model } from './t5';
import { tf } from './tf';
import type { StudentTokenizer } from './tokenizer';

/** How to generate, per input. */
export interface GenerateOptions {
  /** Most tokens generated per input, eos included (HF `max_new_tokens`). */
  maxLength: number;
  /**
   * Fewest tokens generated per input, eos included (HF `min_new_tokens`): eos cannot be chosen before this many
   * tokens, so `minLength` = `maxLength` generates exactly that many (bench/decode.ts). Default 0.
   */
  minLength?: number;
  /** Decode one position per step against a key/value cache (default) or re-run the whole prefix each step. */
  useCache?: boolean;
  /** Beams per input; 1 (default) is greedy decoding, as in HF. Beam search always uses the cache. */
  numBeams?: number;
  /**
   * A finished beam scores sum(log p) / length^lengthPenalty, length counting the generated tokens with eos (HF
   * `length_penalty`, default 1): above 0 favours longer outputs, below 0 shorter ones.
   */
  lengthPenalty?: number;
  /**
   * true: an input is done as soon as it has `numBeams` finished beams. false (HF's default): it continues while a
   * running beam could still beat the worst finished one at its current length.
   */
  earlyStopping?: boolean;
}

export interface DecodeOptions extends GenerateOptions {
  /** Inputs decoded together. */
  batchSize: number;
  /** Prepended to every input (`predict: ` for a distill-step-by-step student). */
  prefix?: string;
  /** Source tokens kept (eos included), as in training; default 512. */
  maxInputLength?: number;
  /** Called after each batch with the number of inputs done. */
  onProgress?(done: number, total: number): void;
}

/** One output sequence of beam search. */
export interface Hypothesis {
  /** Generated token ids, eos excluded. */
  ids: number[];
  /** sum(log p) over the generated tokens (eos included) / length^lengthPenalty. */
  score: number;
  /** Ended with eos (else it ran into maxLength). */
  finished: boolean;
}

/** A beam-search output decoded to text. */
export interface ScoredText {
  text: string;
  score: number;
}

/**
 * The most likely next token at every step (or the best beam, with `numBeams` > 1), until eos or `maxLength`
 * tokens, for each input. Inputs are batched by length (less padding) and the outputs returned in input order.
 * @throws InputError for a non-positive maxLength, batchSize or numBeams.
 */
export async function greedyDecode(
  model: T5Model,
  tokenizer: StudentTokenizer,
  inputs: readonly string[],
  opts: DecodeOptions
): Promise<string[]> {
  const beams = await beamSearch(model, tokenizer, inputs, { ...opts, numReturnSequences: 1 });
  return beams.map((b) => b[0].text);
}

/**
 * Beam search (greedy when `numBeams` is 1): the `numReturnSequences` best outputs of each input, best first.
 * @throws InputError for bad options.
 */
export async function beamSearch(
  model: T5Model,
  tokenizer: StudentTokenizer,
  inputs: readonly string[],
  opts: DecodeOptions & { numReturnSequences?: number }
): Promise<ScoredText[][]> {
  const { batchSize } = opts;
  checkGenerateOptions(opts);
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
    throw new InputError(`batchSize is ${JSON.stringify(batchSize)}; expected an integer ≥ 1`, 'batchSize');
  }
  const numBeams = opts.numBeams ?? 1;
  const numReturn = opts.numReturnSequences ?? 1;
  if (!Number.isSafeInteger(numReturn) || numReturn < 1 || numReturn > numBeams) {
    throw new InputError(
      `numReturnSequences is ${JSON.stringify(numReturn)}; expected an integer in [1, numBeams = ${numBeams}]`,
      'numReturnSequences'
    );
  }
  const maxInput = opts.maxInputLength ?? 512;
  const encoded = inputs.map((text) => {
    const ids = tokenizer.encode((opts.prefix ?? '') + text);
    return ids.length <= maxInput ? ids : [...ids.slice(0, maxInput - 1), tokenizer.eosId];
  });
  const order = encoded.map((_, i) => i).sort((a, b) => encoded[a].length - encoded[b].length);
  const outputs = new Array<ScoredText[]>(inputs.length);
  for (let start = 0; start < order.length; start += batchSize) {
    const indices = order.slice(start, start + batchSize);
    const sources = indices.map((i) => encoded[i]);
    const hypotheses =
      numBeams === 1
        ? greedyIds(model, sources, opts).map((ids) => [{ ids, score: NaN, finished: true }])
        : beamSearchIds(model, sources, opts).map((hs) => hs.slice(0, numReturn));
    indices.forEach((inputIndex, row) => {
      outputs[inputIndex] = hypotheses[row].map((h) => ({ text: tokenizer.decode(h.ids), score: h.score }));
    });
    opts.onProgress?.(Math.min(start + batchSize, order.length), order.length);
    // Between batches, let the event loop breathe (IPC, timers, cancellation).
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return outputs;
}

function checkGenerateOptions(opts: GenerateOptions): void {
  const { maxLength } = opts;
  if (!Number.isSafeInteger(maxLength) || maxLength < 1) {
    throw new InputError(`maxLength is ${JSON.stringify(maxLength)}; expected an integer ≥ 1`, 'maxLength');
  }
  const minLength = opts.minLength ?? 0;
  if (!Number.isSafeInteger(minLength) || minLength < 0 || minLength > maxLength) {
    throw new InputError(
      `minLength is ${JSON.stringify(opts.minLength)}; expected an integer in [0, maxLength = ${maxLength}]`,
      'minLength'
    );
  }
  const numBeams = opts.numBeams ?? 1;
  if (!Number.isSafeInteger(numBeams) || numBeams < 1) {
    throw new InputError(`numBeams is ${JSON.stringify(opts.numBeams)}; expected an integer ≥ 1`, 'numBeams');
  }
  const lengthPenalty = opts.lengthPenalty ?? 1;
  if (typeof lengthPenalty !== 'number' || !Number.isFinite(lengthPenalty)) {
    throw new InputError(`lengthPenalty is ${JSON.stringify(opts.lengthPenalty)}; expected a number`, 'lengthPenalty');
  }
}

/** Source ids of one batch, pad-padded to its longest: [B, S]. */
function sourceTensor(model: T5Model, sources: readonly number[][]): tf.Tensor2D {
  const rows = sources.length;
  const length = Math.max(1, ...sources.map((s) => s.length));
  const data = new Int32Array(rows * length).fill(model.config.pad_token_id);
  sources.forEach((s, i) => data.set(s, i * length));
  return tf.tensor2d(data, [rows, length], 'int32');
}

/** Added to logits [.., V] to keep eos from being chosen before `minLength` tokens (HF sets it to -inf): [1, V]. */
function eosExclusion(model: T5Model): tf.Tensor2D {
  const { eos_token_id: eos, vocab_size: vocab } = model.config;
  const row = new Float32Array(vocab);
  row[eos] = EXCLUDED;
  return tf.tensor2d(row, [1, vocab]);
}

/**
 * One batch's incremental decoder: a step runs one position of every row. On native TensorFlow it is
 * {@link NativeDecoder} (each step one TensorFlow graph run), elsewhere `T5Model`'s {@link DecoderCache}; both give
 * the logits of `T5Model.decodeStep`.
 */
interface Stepper {
  /** One step (`tokens`: each row's next decoder input) → logits [rows, V], the caller's to dispose. */
  logits(tokens: readonly number[]): tf.Tensor2D;
  /** One step → each row's most likely token, eos excluded when `noEos`. */
  argMax(tokens: readonly number[], noEos: boolean): ArrayLike<number>;
  /** Keeps (and reorders) whole rows: `rows[i]` is the old row of new row i. */
  select(rows: readonly number[]): void;
  /** Reorders the self-attention entries only (beams of one input share its cross-attention entries). */
  reorder(rows: readonly number[]): void;
  dispose(): void;
}

/** Encodes one batch of sources and starts incremental decoding from it, for at most `maxLength` steps. */
function startStepper(model: T5Model, sources: readonly number[][], maxLength: number): Stepper {
  const encoded = tf.tidy(() => {
    const { hidden, sourceBias } = model.encode(sourceTensor(model, sources));
    return { hidden, sourceBias };
  });
  try {
    return NativeDecoder.start(model, encoded, maxLength) ?? cacheStepper(model, model.startDecoding(encoded));
  } finally {
    tf.dispose([encoded.hidden, encoded.sourceBias]);
  }
}

function cacheStepper(model: T5Model, cache: DecoderCache): Stepper {
  const { vocab_size: vocab } = model.config;
  const noEos = eosExclusion(model);
  const logits = (tokens: readonly number[]) =>
    tf.tidy(() => {
      const hidden = model.decodeStep(cache, tf.tensor2d(tokens as number[], [tokens.length, 1], 'int32')); // [A, 1, D]
      return tf.reshape(model.logits(hidden), [tokens.length, vocab]) as tf.Tensor2D; // [A, V]
    });
  return {
    logits,
    argMax: (tokens, blockEos) =>
      tf.tidy(() => {
        const scores = logits(tokens);
        return tf.argMax(blockEos ? tf.add(scores, noEos) : scores, -1).dataSync();
      }),
    select: (rows) => cache.select(rows),
    reorder: (rows) => cache.reorder(rows),
    dispose: () => {
      cache.dispose();
      noEos.dispose();
    },
  };
}

/**
 * Greedy decoding of one batch of encoded sources (each ending in eos, as the tokenizer gives them): the generated
 * ids of each row, eos excluded, identical with and without the cache.
 */
export function greedyIds(model: T5Model, sources: readonly number[][], opts: GenerateOptions): number[][] {
  checkGenerateOptions(opts);
  if (sources.length === 0) return [];
  return opts.useCache === false ? greedyUncached(model, sources, opts) : greedyCached(model, sources, opts);
}

function greedyCached(model: T5Model, sources: readonly number[][], opts: GenerateOptions): number[][] {
  const { eos_token_id: eos, decoder_start_token_id: start } = model.config;
  const outputs: number[][] = sources.map(() => []);
  const decoder = startStepper(model, sources, opts.maxLength);
  // Rows still decoding, by their index in `sources`; finished rows leave the batch so later steps get cheaper.
  let active = sources.map((_, i) => i);
  let next = active.map(() => start);
  const minLength = opts.minLength ?? 0;
  try {
    for (let step = 0; step < opts.maxLength && active.length > 0; step++) {
      const chosen = decoder.argMax(next, step < minLength);
      const keep: number[] = [];
      active.forEach((row, i) => {
        if (chosen[i] === eos) return;
        outputs[row].push(chosen[i]);
        keep.push(i);
      });
      if (keep.length < active.length && keep.length > 0) decoder.select(keep);
      active = keep.map((i) => active[i]);
      next = keep.map((i) => chosen[i]);
    }
  } finally {
    decoder.dispose();
  }
  return outputs;
}

/** Re-runs the decoder over the whole prefix every step: the training forward pass, the cache's reference. */
function greedyUncached(model: T5Model, sources: readonly number[][], opts: GenerateOptions): number[][] {
  const { eos_token_id: eos, pad_token_id: pad, decoder_start_token_id: start, d_model, vocab_size } = model.config;
  const { maxLength } = opts;
  const minLength = opts.minLength ?? 0;
  const rows = sources.length;
  const prefixes = sources.map(() => [start]);
  const done = new Array<boolean>(rows).fill(false);
  const encoded = tf.tidy(() => {
    const { hidden, sourceBias } = model.encode(sourceTensor(model, sources));
    return [hidden, sourceBias];
  });
  const noEos = minLength > 0 ? eosExclusion(model) : undefined;
  try {
    for (let t = 0; t < maxLength && done.some((d) => !d); t++) {
      const next = tf.tidy(() => {
        const decoderInput = tf.tensor2d(prefixes.flat(), [rows, t + 1], 'int32');
        const hidden = model.decode({ hidden: encoded[0], sourceBias: encoded[1] }, decoderInput); // [B, t+1, D]
        const last = tf.slice(hidden, [0, t, 0], [rows, 1, d_model]); // [B, 1, D]
        const logits = tf.reshape(model.logits(last), [rows, vocab_size]); // [B, V]
        return tf.argMax(noEos && t < minLength ? tf.add(logits, noEos) : logits, -1).dataSync();
      });
      for (let i = 0; i < rows; i++) {
        // A finished row keeps decoding pad so the batch stays rectangular; its output is already final.
        const id = done[i] ? pad : next[i];
        prefixes[i].push(id);
        if (id === eos) done[i] = true;
      }
    }
  } finally {
    tf.dispose(encoded);
    noEos?.dispose();
  }
  return prefixes.map((p) => {
    const ids = p.slice(1);
    const end = ids.indexOf(eos);
    return end >= 0 ? ids.slice(0, end) : ids;
  });
}

/** Added to the scores of candidates that may not be chosen, as HF does (finite, so sorting stays total). */
const EXCLUDED = -1e9;

interface Beam {
  ids: number[];
  /** Summed log-probabilities of `ids`. */
  logProb: number;
}

/** One input's search state. */
interface Search {
  running: Beam[];
  /** At most numBeams finished beams, best first. */
  finished: Hypothesis[];
  /** HF's `is_early_stop_heuristic_unsatisfied`: a running beam could still beat a finished one. */
  improvable: boolean;
  done: boolean;
}

/** What stays fixed over one beam search. */
interface BeamSettings {
  numBeams: number;
  lengthPenalty: number;
  earlyStopping: boolean;
  eos: number;
  vocab: number;
  /** Steps at which eos may not be chosen (HF `min_new_tokens`). */
  minLength: number;
  /** Continuations looked at per input and step: 2·numBeams, fewer only for a tiny vocabulary. */
  candidates: number;
}

/** The best `candidates` continuations of each active input after one decoder step, flat: [A·candidates] each. */
interface StepCandidates {
  /** Summed log-probabilities (the beam's so far plus the new token's). */
  values: tf.TypedArray;
  /** Indices into the input's numBeams·vocab continuations: beam·vocab + token. */
  indices: tf.TypedArray;
}

/**
 * Beam search over one batch of encoded sources, step for step as HF's `_beam_search`: at each step the 2·numBeams
 * best continuations of all beams of an input (by summed log-probability) are taken; those ending in eos among the
 * first numBeams become finished hypotheses (scored with the length penalty), the best numBeams others run on. At
 * `maxLength` every running beam is finished as it is. Inputs that are done leave the batch.
 * @returns per source, its hypotheses, best first (numBeams of them unless the vocabulary is tiny)
 */
export function beamSearchIds(model: T5Model, sources: readonly number[][], opts: GenerateOptions): Hypothesis[][] {
  checkGenerateOptions(opts);
  const settings = beamSettings(model, opts);
  const { numBeams } = settings;
  const searches = sources.map(() => startSearch(numBeams));
  if (sources.length === 0) return [];
  const decoder = startStepper(model, sources, opts.maxLength);
  const noEos = settings.minLength > 0 ? eosExclusion(model) : undefined;
  try {
    // Beam b of the a-th active input is row a·numBeams + b.
    decoder.select(sources.flatMap((_, i) => Array<number>(numBeams).fill(i)));
    let active = sources.map((_, i) => i);
    let next = active.flatMap(() => Array<number>(numBeams).fill(model.config.decoder_start_token_id));
    for (let step = 0; step < opts.maxLength && active.length > 0; step++) {
      const top = topCandidates(
        decoder,
        next,
        active.map((s) => searches[s]),
        settings,
        step < settings.minLength ? noEos : undefined
      );
      const last = step + 1 >= opts.maxLength;
      const length = step + 1; // generated tokens after this step, eos included
      const rowsNext: number[] = [];
      const tokensNext: number[] = [];
      const stillActive: number[] = [];
      active.forEach((s, a) => {
        const search = searches[s];
        const fromRows = advanceSearch(search, a, top, length, last, settings);
        if (!search.done) {
          stillActive.push(s);
          rowsNext.push(...fromRows);
          tokensNext.push(...search.running.map((b) => b.ids[b.ids.length - 1]));
        }
      });
      if (stillActive.length === 0) break;
      // Moving beams within an input only touches the self-attention entries; dropping inputs touches all.
      if (stillActive.length === active.length) decoder.reorder(rowsNext);
      else decoder.select(rowsNext);
      active = stillActive;
      next = tokensNext;
    }
  } finally {
    decoder.dispose();
    noEos?.dispose();
  }
  return searches.map((s) => s.finished);
}

function beamSettings(model: T5Model, opts: GenerateOptions): BeamSettings {
  const numBeams = opts.numBeams ?? 1;
  const { eos_token_id: eos, vocab_size: vocab } = model.config;
  return {
    numBeams,
    lengthPenalty: opts.lengthPenalty ?? 1,
    earlyStopping: opts.earlyStopping ?? false,
    eos,
    vocab,
    minLength: opts.minLength ?? 0,
    candidates: Math.min(2 * numBeams, numBeams * vocab),
  };
}

function startSearch(numBeams: number): Search {
  return {
    // All beams start as the start token alone; only the first counts until they differ.
    running: Array.from({ length: numBeams }, (_, b) => ({ ids: [], logProb: b === 0 ? 0 : EXCLUDED })),
    finished: [],
    improvable: true,
    done: false,
  };
}

/**
 * One decoder step for every running beam of the active inputs (`next`: each beam's last token, [A·N]), and the best
 * continuations of each input over all its beams. Every tensor it makes is freed before it returns.
 */
function topCandidates(
  decoder: Stepper,
  next: number[],
  active: readonly Search[],
  { numBeams, vocab, candidates }: BeamSettings,
  /** Added to the log-probabilities while eos may not be chosen ({@link eosExclusion}); absent after. */
  noEos: tf.Tensor2D | undefined
): StepCandidates {
  const rows = active.length * numBeams;
  const runningLogProbs = active.flatMap((search) => search.running.map((b) => b.logProb));
  return tf.tidy(() => {
    let logProbs = tf.logSoftmax(decoder.logits(next)); // [A·N, V]
    // HF masks eos after the log-softmax, so the other tokens' log-probabilities stay as they were.
    if (noEos) logProbs = tf.add(logProbs, noEos);
    const total = tf.add(logProbs, tf.tensor2d(runningLogProbs, [rows, 1])); // [A·N, V]
    const top = tf.topk(tf.reshape(total, [active.length, numBeams * vocab]), candidates); // [A, 2N]
    return { values: top.values.dataSync(), indices: top.indices.dataSync() };
  });
}

/**
 * Moves the a-th active input's search one step on from its candidates `top`: records the beams that end, keeps
 * numBeams running ones, and decides whether the input is done.
 * @returns per new running beam, the row (in this step's batch) of the beam it continues
 */
function advanceSearch(
  search: Search,
  a: number,
  top: StepCandidates,
  length: number,
  last: boolean,
  settings: BeamSettings
): number[] {
  const { numBeams, lengthPenalty, earlyStopping, eos, vocab, candidates } = settings;
  const full = search.finished.length === numBeams && earlyStopping;
  const continuing: Beam[] = [];
  const fromRows: number[] = [];
  const ending: { beam: number; token: number; logProb: number }[] = [];
  for (let k = 0; k < candidates; k++) {
    const index = top.indices[a * candidates + k];
    const beam = Math.floor(index / vocab);
    const token = index % vocab;
    const logProb = top.values[a * candidates + k];
    if (token === eos || last) {
      // Only the first numBeams candidates may finish: the others are there so enough beams run on.
      if (k < numBeams) ending.push({ beam, token, logProb });
    } else if (continuing.length < numBeams) {
      continuing.push({ ids: [...search.running[beam].ids, token], logProb });
      fromRows.push(a * numBeams + beam);
    }
  }
  if (!full && search.improvable) {
    for (const e of ending) {
      const ids = e.token === eos ? search.running[e.beam].ids : [...search.running[e.beam].ids, e.token];
      search.finished.push({ ids, score: e.logProb / length ** lengthPenalty, finished: e.token === eos });
    }
    search.finished.sort((x, y) => y.score - x.score);
    search.finished.length = Math.min(search.finished.length, numBeams);
  }
  // Fewer continuing candidates than beams (every one ended): pad with excluded copies, as HF's scores do.
  while (continuing.length < numBeams) {
    continuing.push({ ids: [...search.running[0].ids, eos], logProb: EXCLUDED * 2 });
    fromRows.push(a * numBeams);
  }
  search.running = continuing;
  if (search.finished.length === numBeams) {
    const bestPossible = continuing[0].logProb / length ** lengthPenalty;
    const worstFinished = search.finished[numBeams - 1].score;
    if (!(bestPossible > worstFinished)) search.improvable = false;
  }
  search.done = last || !search.improvable || (search.finished.length === numBeams && earlyStopping);
  return fromRows;
}
