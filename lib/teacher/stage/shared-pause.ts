/**
 * A 429 is about the account, not the shard that got it: its `retry-after` must hold back every shard of every
 * worker calling the same endpoint, not only the limiter of the shard that was told. Shards run as activities on
 * any number of worker processes, and the one thing they all share is the artifact store, so the pause is a small
 * record there (`teacher/pauses/<endpoint>.json`): written on a 429 with the end of the pause, read by every
 * shard's limiter before a request leaves, through a short cache shared by every shard of a worker, so that reads stay a few per second per worker.
 *
 * Times in the record are wall-clock milliseconds, the one clock all workers share; skew between machines is
 * milliseconds against pauses of seconds. A request that already passed its check when the record landed still
 * goes out: the window is one store write plus {@link PAUSE_CACHE_MS}.
 */
import { sha256Hex, type ArtifactStore } from '../../store/artifact-store';
import type { RateLimiter } from '../rate-limit';
import { writeKeyJson } from './layout';

/** How old a read of the pause record may be when a request relies on it. */
export const PAUSE_CACHE_MS = 100;

/** What the pause record holds. */
export interface PauseRecord {
  /** No request to this endpoint starts before this wall-clock time (ms since the epoch). */
  untilMs: number;
}

/** The key of an endpoint's pause record: one per URL and model, whichever stage or run calls it. */
export function pauseKey(endpoint: { baseURL: string; model: string }): string {
  return `teacher/pauses/${sha256Hex(`${endpoint.baseURL}\n${endpoint.model}`)}.json`;
}

/**
 * Wraps a shard's limiter so its pauses are shared through the store: `pause()` also publishes the pause, and
 * `acquire()` waits out any pause published by another shard, before queueing and again once its turn comes (a
 * pause may have landed while it waited in line).
 */
export function sharedPauseLimiter(
  inner: RateLimiter,
  store: ArtifactStore,
  key: string,
  opts: { cacheMs?: number } = {}
): RateLimiter {
  return new SharedPauseLimiter(inner, pauseView(store, key, opts.cacheMs ?? PAUSE_CACHE_MS));
}

/**
 * One view of a pause record per process and store location, shared by every shard limiter of the worker: a stage
 * at scale runs dozens of shards per worker, and reads must stay a few per second per worker, not per shard (a read
 * per shard every 100 ms is hundreds of GETs a second against the store).
 */
const views = new Map<string, PauseView>();

function pauseView(store: ArtifactStore, key: string, cacheMs: number): PauseView {
  const id = `${store.uri(key)}\n${cacheMs}`;
  let view = views.get(id);
  if (!view) {
    view = new PauseView(store, key, cacheMs);
    views.set(id, view);
  }
  return view;
}

class PauseView {
  /** The latest pause end known here, read or published (wall-clock ms). */
  knownUntil = 0;
  /** When the record was last read (`performance.now()`), and the read in flight, shared by every caller. */
  private readAt = -Infinity;
  private reading: Promise<number> | undefined;

  constructor(
    private readonly store: ArtifactStore,
    private readonly key: string,
    private readonly cacheMs: number
  ) {}

  /** Writes the pause unless the record already holds a later one (two 429s at once: the longer wait wins). */
  async publish(until: number): Promise<void> {
    if (until <= this.knownUntil) return;
    this.knownUntil = until;
    try {
      const current = await this.store.getKeyJson<PauseRecord>(this.key);
      if (current !== undefined && current.untilMs >= until) return;
      await writeKeyJson(this.store, this.key, { untilMs: until } satisfies PauseRecord);
    } catch {
      // Not fatal: this worker is paused all the same, and the others hear the endpoint's own 429 if they go on.
    }
  }

  /**
   * The latest pause end, from a read at most `cacheMs` old; a failed read keeps what was known. A read past half
   * its age is renewed in the background, so under a steady stream of calls none of them waits on the store: the
   * record is read every `cacheMs / 2` or so while calls flow, and only a call after a lull waits for a fresh read.
   */
  until(): Promise<number> {
    const age = performance.now() - this.readAt;
    if (age < this.cacheMs) {
      if (age >= this.cacheMs / 2) void this.read();
      return Promise.resolve(this.knownUntil);
    }
    return this.read();
  }

  /** Reads the record, or joins the read in flight. */
  private read(): Promise<number> {
    this.reading ??= this.store
      .getKeyJson<PauseRecord>(this.key)
      .then(
        (record) => {
          this.readAt = performance.now();
          if (record !== undefined && Number.isFinite(record.untilMs)) {
            this.knownUntil = Math.max(this.knownUntil, record.untilMs);
          }
          return this.knownUntil;
        },
        () => this.knownUntil
      )
      .finally(() => {
        this.reading = undefined;
      });
    return this.reading;
  }
}

class SharedPauseLimiter implements RateLimiter {
  constructor(
    private readonly inner: RateLimiter,
    private readonly view: PauseView
  ) {}

  async acquire(tokens: number, signal?: AbortSignal): Promise<number> {
    // Reading the shared pause is a store round-trip, not a wait on a limit: only the inner limiter's line counts.
    let waited = 0;
    for (;;) {
      this.pauseFor(await this.view.until());
      waited += await this.inner.acquire(tokens, signal);
      const left = (await this.view.until()) - Date.now();
      if (left <= 0) return waited;
      // A pause landed while this call waited its turn: give the start back and queue again behind the pause,
      // so the calls it held back resume at the limiter's pace rather than all at once.
      this.inner.settle(tokens, 0);
      this.inner.pause(left);
      signal?.throwIfAborted();
    }
  }

  settle(estimatedTokens: number, actualTokens: number): void {
    this.inner.settle(estimatedTokens, actualTokens);
  }

  pause(ms: number): void {
    this.inner.pause(ms);
    void this.view.publish(Date.now() + ms);
  }

  private pauseFor(until: number): void {
    const left = until - Date.now();
    if (left > 0) this.inner.pause(left);
  }
}
