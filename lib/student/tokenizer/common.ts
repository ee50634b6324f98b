/**
 * What both of the student's tokenizers share: the interface the rest of the student code uses, the pieces of a
 * `tokenizer.json` both write (Metaspace, T5's post-processor), and the one class that encodes and decodes through
 * `@huggingface/tokenizers`, Hugging Face's TypeScript implementation of `tokenizers`. It is synchronous, which the
 * student's batching code needs and the Node binding of the Rust library (async encode/decode) is not.
 */
import {
  MetaspacePreTokenizer,
  PreTokenizer,
  SequencePreTokenizer,
  Tokenizer,
  type Normalizer,
} from '@huggingface/tokenizers';
import { InputError } from '../../errors';

export interface StudentTokenizer {
  /** Token ids of `text`, ending with eos. */
  encode(text: string): number[];
  /** Text of `ids`, skipping special tokens (as `batch_decode(skip_special_tokens=True)` does). */
  decode(ids: readonly number[]): string;
  /** A standard `tokenizer.json`. */
  toJSON(): string;
  readonly vocabSize: number;
  readonly padId: number;
  readonly eosId: number;
  readonly unkId: number;
}

/** The word-boundary mark of SentencePiece and of the Metaspace pre-tokenizer. */
export const SPACE = '\u2581';

/** Metaspace as T5 and Stepwise's BPE both configure it: `a b` → `▁a`, `▁b` (a pre-tokenizer and a decoder). */
export const METASPACE = { type: 'Metaspace', replacement: SPACE, prepend_scheme: 'always', split: true } as const;

/** T5's post-processor in tokenizer.json: every sequence (each of a pair) ends in `</s>`. */
export function t5PostProcessor(eosId: number) {
  const eos = { SpecialToken: { id: '</s>', type_id: 0 } };
  return {
    type: 'TemplateProcessing',
    single: [{ Sequence: { id: 'A', type_id: 0 } }, eos],
    pair: [{ Sequence: { id: 'A', type_id: 0 } }, eos, { Sequence: { id: 'B', type_id: 0 } }, eos],
    special_tokens: { '</s>': { id: '</s>', ids: [eosId], tokens: ['</s>'] } },
  };
}

/** Throws the InputError for a field of a tokenizer file that does not hold what it should. */
/** A tokenizer.json `added_tokens` entry for a special token: matched literally, before normalisation. */
export function specialToken(content: string, id: number) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

export function bad(field: string, value: unknown, expected: string): never {
  throw new InputError(`${field} is ${JSON.stringify(value)?.slice(0, 120)}; expected ${expected}`, field);
}

/** A parsed `tokenizer.json`, as far as the loaders look into it. */
export type TokenizerSpec = Record<string, unknown>;

/** @throws InputError when `json` is not a JSON object. */
export function parseTokenizerJson(json: string): TokenizerSpec {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw new InputError(`tokenizer is not JSON (${(err as Error).message}); expected a tokenizer.json`, 'tokenizer');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new InputError(`tokenizer is ${JSON.stringify(json.slice(0, 40))}; expected a tokenizer.json`, 'tokenizer');
  }
  return parsed as TokenizerSpec;
}

/** The special ids a tokenizer reports; eos is also what its post-processor appends. */
export interface SpecialIds {
  padId: number;
  eosId: number;
  unkId: number;
}

/**
 * A `tokenizer.json` run by `@huggingface/tokenizers`, with the pieces where that library departs from the Rust one
 * put right (see {@link adaptLibrary}).
 */
export class LibraryTokenizer implements StudentTokenizer {
  readonly padId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly vocabSize: number;
  private readonly tokenizer: Tokenizer;

  /**
   * @param spec the parsed tokenizer.json the library runs (a loader may have filled in what it lacks)
   * @param json what {@link toJSON} gives back: the tokenizer.json as read or written
   * @param replaceNormalizer swaps a library normaliser for one of ours (see unigram.ts)
   * @throws InputError naming the library's complaint when it cannot build the tokenizer
   */
  constructor(
    spec: TokenizerSpec,
    private readonly json: string,
    ids: SpecialIds,
    replaceNormalizer?: (normalizer: Normalizer) => Normalizer
  ) {
    try {
      this.tokenizer = new Tokenizer(spec, {});
    } catch (err) {
      throw new InputError(`tokenizer.json cannot be loaded: ${(err as Error).message}`, 'tokenizer');
    }
    adaptLibrary(this.tokenizer, spec, replaceNormalizer);
    ({ padId: this.padId, eosId: this.eosId, unkId: this.unkId } = ids);
    // The model's vocab holds the added tokens at their ids too.
    this.vocabSize = this.tokenizer.model!.vocab.length;
  }

  encode(text: string): number[] {
    if (typeof text !== 'string') throw new InputError(`text to encode is ${typeof text}; expected a string`, 'text');
    return this.tokenizer.encode(text).ids;
  }

  decode(ids: readonly number[]): string {
    // The library throws on an empty list and reads an id outside the vocabulary as unk; both decode to nothing.
    const known = ids.filter((id) => this.tokenizer.id_to_token(id) !== undefined);
    if (known.length === 0) return '';
    // No clean-up of spaces before punctuation: the `tokenizers` decoder does none either.
    return this.tokenizer.decode(known, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  toJSON(): string {
    return this.json;
  }
}

/**
 * Makes the library's pipeline the Rust one's where they differ for our tokenizers:
 * - its Metaspace pre-tokenizer ignores `split: true` and hands the model the whole text as one word. BPE and
 *   Unigram give the same ids either way on our vocabularies (no piece has `▁` after its first character), but the
 *   BPE model caches per word, so unsplit text misses the cache almost always (about 3x slower on CQA);
 * - `Precompiled` normalisers are swapped by `replaceNormalizer` (the library's ignores the charsmap);
 * - the BPE word cache holds 10,000 words, fewer than a CQA-sized corpus has, and a miss costs a full merge loop.
 */
function adaptLibrary(
  tokenizer: Tokenizer,
  spec: TokenizerSpec,
  replaceNormalizer?: (normalizer: Normalizer) => Normalizer
): void {
  tokenizer.pre_tokenizer = splitMetaspace(tokenizer.pre_tokenizer, spec.pre_tokenizer);
  if (replaceNormalizer && tokenizer.normalizer) tokenizer.normalizer = replaceNormalizer(tokenizer.normalizer);
  const cache = (tokenizer.model as { cache?: { capacity: number } } | null)?.cache;
  if (cache) cache.capacity = 100_000;
}

/** The pre-tokenizer tree with each Metaspace whose spec says `split` (the default) replaced by a splitting one. */
function splitMetaspace(pre: PreTokenizer | null, spec: unknown): PreTokenizer | null {
  const s = spec as { split?: unknown; pretokenizers?: unknown[] } | null | undefined;
  if (pre instanceof SequencePreTokenizer) {
    pre.tokenizers = pre.tokenizers.map((p, i) => splitMetaspace(p, s?.pretokenizers?.[i]));
    return pre;
  }
  return pre instanceof MetaspacePreTokenizer && s?.split !== false ? new SplittingMetaspace(pre) : pre;
}

/** Metaspace with `split: true`, as `tokenizers` runs it: `▁a▁b` → `▁a`, `▁b` (every mark starts a word). */
class SplittingMetaspace extends PreTokenizer {
  constructor(private readonly metaspace: MetaspacePreTokenizer) {
    super();
  }

  pre_tokenize_text(text: string, options?: Parameters<PreTokenizer['pre_tokenize_text']>[1]): string[] {
    const marker = this.metaspace.replacement;
    return this.metaspace.pre_tokenize_text(text, options).flatMap((word) => splitBeforeMarker(word, marker));
  }
}

function splitBeforeMarker(text: string, marker: string): string[] {
  const words: string[] = [];
  let start = 0;
  for (let at = text.indexOf(marker, 1); at > 0; at = text.indexOf(marker, at + marker.length)) {
    if (at > start) words.push(text.slice(start, at));
    start = at;
  }
  if (start < text.length) words.push(text.slice(start));
  return words;
}
