/**
 * An append-only journal of one shard's finished teacher calls, kept in the artifact store as a series of small
 * JSONL segments under one prefix. Object stores cannot append, so each write is a new segment; writes are group
 * commits: a record waits only for the write in progress, and everything that finished meanwhile goes into the next
 * segment. A call's record is durable within one store round-trip of its response, however many calls are in flight.
 *
 * Segments are never rewritten or deleted, so a worker killed mid-write loses at most the records of that one
 * write, and two attempts of one shard (a zombie and its retry) can both write without clobbering each other.
 */
import { randomBytes } from 'node:crypto';

import type { ArtifactStore } from '../store/artifact-store';

export interface JournalOptions {
  /** Attempts per segment write before the journal gives up (an activity retry then resumes from what landed). */
  writeAttempts?: number;
}

export class Journal<R> {
  private queue: { record: R; resolve: () => void; reject: (err: unknown) => void }[] = [];
  private writing: Promise<void> | undefined;
  private seq = 0;
  private failed: unknown;
  private readonly durable: R[] = [];
  private readonly writer = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;

  private constructor(
    private readonly store: ArtifactStore,
    readonly prefix: string,
    private readonly writeAttempts: number
  ) {}

  /**
   * Opens the journal under `prefix` (ending in `/`) and reads every record already in it, oldest segment first
   * (segment names sort by writer start time, then sequence).
   */
  static async open<R>(
    store: ArtifactStore,
    prefix: string,
    opts: JournalOptions = {}
  ): Promise<{ journal: Journal<R>; records: R[] }> {
    const keys = (await store.listKeys(prefix)).filter((k) => k.endsWith('.jsonl')).sort();
    // Segments are small and many (one per group commit): fetch them a few dozen at a time, keep their order.
    const segments: (Buffer | undefined)[] = new Array(keys.length);
    let next = 0;
    const fetcher = async () => {
      while (next < keys.length) {
        const k = next++;
        segments[k] = await store.getKey(keys[k]);
      }
    };
    await Promise.all(Array.from({ length: Math.min(32, keys.length) }, fetcher));
    const records: R[] = [];
    for (const bytes of segments) {
      if (!bytes) continue;
      for (const line of bytes.toString('utf8').split('\n')) {
        if (line.length === 0) continue;
        try {
          records.push(JSON.parse(line) as R);
        } catch {
          // A torn segment cannot happen with whole-object writes; skip a bad line rather than lose the shard.
        }
      }
    }
    return { journal: new Journal<R>(store, prefix, opts.writeAttempts ?? 5), records };
  }

  /** Resolves once `record` is in the store. */
  append(record: R): Promise<void> {
    if (this.failed !== undefined) return Promise.reject(this.failed);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ record, resolve, reject });
      this.writing ??= this.drain();
    });
  }

  /**
   * Resolves when everything appended so far is in the store.
   * @throws the store's error when a write failed for good: the records after it never landed.
   */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
    if (this.failed !== undefined) throw this.failed;
  }

  /** Records this journal object has made durable, in the order written: with the ones read at open, the whole journal. */
  get written(): readonly R[] {
    return this.durable;
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue;
        this.queue = [];
        const key = `${this.prefix}${this.writer}-${String(this.seq++).padStart(8, '0')}.jsonl`;
        const body = batch.map((b) => JSON.stringify(b.record)).join('\n') + '\n';
        try {
          await this.writeWithRetry(key, body);
          for (const b of batch) {
            this.durable.push(b.record);
            b.resolve();
          }
        } catch (err) {
          this.failed = err;
          for (const b of [...batch, ...this.queue]) b.reject(err);
          this.queue = [];
        }
      }
    } finally {
      this.writing = undefined;
    }
  }

  private async writeWithRetry(key: string, body: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.store.putKey(key, body, { contentType: 'application/x-ndjson' });
        return;
      } catch (err) {
        if (attempt >= this.writeAttempts) throw err;
        await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** attempt)));
      }
    }
  }
}
