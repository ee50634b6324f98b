/**
 * SentencePiece's precompiled character map (the `nmt_nfkc` rules, or a model's own), the one normaliser that
 * stays hand-written: `@huggingface/tokenizers` accepts a `Precompiled` normaliser but ignores the map and applies
 * NFKC plus fixed whitespace rules instead. On the committed T5 test vector (whose map also folds case and strips
 * accents) that gives `Ａ` → `▁`, `<unk>` instead of `▁a`, and `café` → `<unk>` for `é`, not transformers' ids.
 */
import { Normalizer } from '@huggingface/tokenizers';
import { InputError } from '../../errors';

const FIELD = 'tokenizer.normalizer.precompiled_charsmap';
/** ASCII without CR LF: every character is a grapheme cluster of its own, so the segmenter can be skipped. */
const ASCII = /^[\x00-\x7f]*$/;
/** Distinct clusters remembered; text has few (letters, digits, punctuation), so the bound is rarely reached. */
const MEMO_LIMIT = 100_000;

/** The library's normaliser interface over {@link Charsmap}, so it can stand where the library's `Precompiled` was. */
export class CharsmapNormalizer extends Normalizer {
  // The library's normalisers are functions with a swapped prototype, slow to read fields from: one field only.
  private readonly charsmap: Charsmap;

  /** @throws InputError when `charsmapBase64` is not a SentencePiece charsmap. */
  constructor(charsmapBase64: string) {
    super({ type: 'Precompiled', precompiled_charsmap: charsmapBase64 });
    this.charsmap = new Charsmap(charsmapBase64);
  }

  normalize(text: string): string {
    return this.charsmap.normalize(text);
  }
}

/**
 * The map as `tokenizers` applies it: a double-array trie over UTF-8 bytes whose values point into a blob of
 * NUL-terminated replacement strings; per grapheme cluster (under 6 bytes) the first trie match of the cluster
 * replaces the whole cluster, otherwise character by character.
 */
class Charsmap {
  /** Empty for an empty map (a model trained with `identity` normalisation), which changes nothing. */
  private readonly trie: Uint32Array = new Uint32Array(0);
  private readonly replacements: Buffer = Buffer.alloc(0);
  private readonly segmenter = new Intl.Segmenter('en', { granularity: 'grapheme' });
  /** Cluster → its replacement: the trie walk and UTF-8 encoding per cluster dominate encoding time otherwise. */
  private readonly memo = new Map<string, string>();
  /** The ASCII characters the map changes (most text is ASCII, and most maps change little of it), or none. */
  private readonly asciiChanged: RegExp | undefined;

  constructor(charsmapBase64: string) {
    const bytes = Buffer.from(charsmapBase64, 'base64');
    if (bytes.length === 0) return;
    const trieBytes = bytes.length < 4 ? -1 : bytes.readUInt32LE(0);
    if (trieBytes < 0 || trieBytes % 4 !== 0 || 4 + trieBytes > bytes.length) {
      throw new InputError(`${FIELD} holds ${bytes.length} bytes that are not a SentencePiece charsmap`, FIELD);
    }
    this.trie = new Uint32Array(trieBytes / 4);
    for (let i = 0; i < this.trie.length; i++) this.trie[i] = bytes.readUInt32LE(4 + 4 * i);
    this.replacements = bytes.subarray(4 + trieBytes);
    const changed = Array.from({ length: 128 }, (_, c) => String.fromCharCode(c)).filter(
      (ch) => this.cluster(ch) !== ch
    );
    const escaped = changed.map((ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`);
    if (changed.length > 0) this.asciiChanged = new RegExp(`[${escaped.join('')}]`, 'g');
  }

  normalize(text: string): string {
    if (this.trie.length === 0) return text;
    if (ASCII.test(text) && !text.includes('\r\n')) {
      return this.asciiChanged ? text.replace(this.asciiChanged, (ch) => this.cluster(ch)) : text;
    }
    let out = '';
    for (const { segment } of this.segmenter.segment(text)) out += this.cluster(segment);
    return out;
  }

  private cluster(segment: string): string {
    let out = this.memo.get(segment);
    if (out !== undefined) return out;
    out = Buffer.byteLength(segment, 'utf8') < 6 ? this.firstMatch(segment) : undefined;
    if (out === undefined) {
      out = '';
      for (const ch of segment) out += this.firstMatch(ch) ?? ch;
    }
    if (this.memo.size < MEMO_LIMIT) this.memo.set(segment, out);
    return out;
  }

  /** The replacement of the shortest prefix of `chunk` the trie holds (darts-clone's common-prefix search). */
  private firstMatch(chunk: string): string | undefined {
    // darts-clone unit layout: offset, label and leaf flag packed into one uint32.
    const offset = (unit: number) => (unit >>> 10) << ((unit & (1 << 9)) >>> 6);
    const label = (unit: number) => unit & ((1 << 31) | 0xff);
    const hasLeaf = (unit: number) => ((unit >>> 8) & 1) === 1;
    let node = offset(this.trie[0]);
    for (const c of Buffer.from(chunk, 'utf8')) {
      if (c === 0) break;
      node ^= c;
      const unit = this.trie[node];
      if (unit === undefined || label(unit) >>> 0 !== c) return undefined;
      node ^= offset(unit);
      if (hasLeaf(unit)) {
        const start = this.trie[node] & 0x7fffffff;
        let end = start;
        while (end < this.replacements.length && this.replacements[end] !== 0) end++;
        return this.replacements.subarray(start, end).toString('utf8');
      }
    }
    return undefined;
  }
}
