/**
 * One shard of the teacher stage: a few hundred or thousand examples, each asked `samples` times, with bounded
 * concurrency, every finished call journalled as it finishes, and the results folded into one response per example
 * (by majority vote when there are several samples). Pure library code: the activity around it supplies the
 * teacher, the journal, the budget and the cancellation signal.
 */
import { settledWithin } from '../wait';
import type { Usage } from './budget';
import type { Journal } from './journal';
import type { CallBudget, ChatMessage, RateLimitWaits, Teacher, TeacherRequest, TeacherResponse } from './types';

/** An example as a shard file holds it: enough to rebuild its prompt, never the prompt itself (that is 50x larger). */
export interface ShardExample {
  id: string;
  input: string;
  source?: { split: string; row: number };
}

/** One journalled call: example `i` of the shard, sample `s`. */
export interface CallRecord {
  i: number;
  s: number;
  id: string;
  promptHash: string;
  completion?: string;
  error?: string;
  cached?: boolean;
  attempts?: number;
  finishReason?: string;
  usage?: Usage;
  notSent?: 'budget';
  /** Waits on rate limits (see {@link TeacherResponse.rateLimit}); summed per stage like usage. */
  rateLimit?: RateLimitWaits;
  /** The stage execution that made the call: spending is charged to it alone. */
  stage?: string;
}

/** One line of the stage's responses artifact: what the teacher said about one example. */
export interface ShardResponse {
  id: string;
  /** The completion kept ('' when `error` is set). */
  completion: string;
  /** Every sample kept came from the response cache (no call was made for this example in this run). */
  cached: boolean;
  promptHash: string;
  error?: string;
  /** Self-consistency: samples asked, and how many parsed to each label. */
  samples?: number;
  votes?: Record<string, number>;
  /** Tokens spent on this example in this run (all samples and attempts). */
  usage?: Usage;
}

export interface ShardStats {
  examples: number;
  /** Calls this shard needed (examples × samples). */
  calls: number;
  /** Calls answered from an earlier attempt's journal: not sent again. */
  resumed: number;
  /** Calls answered from the cross-run response cache. */
  cached: number;
  /** Calls sent to the endpoint by this attempt (at least one HTTP request each). */
  sent: number;
  /** Calls that ended without a completion (after retries). */
  failed: number;
  /** Calls not sent because the budget ran out. */
  notSent: number;
  budgetStopped: boolean;
  usage: Usage;
}

/**
 * How a call of a shard ended, each call counted once: answered by the endpoint (`sent`), from the cross-run cache
 * (`cached`), from an earlier attempt's journal (`resumed`), or without a completion after its retries (`failed`).
 */
export type CallOutcome = 'sent' | 'cached' | 'resumed' | 'failed';

export interface RunShardOptions {
  examples: readonly ShardExample[];
  messagesFor: (example: ShardExample) => ChatMessage[];
  teacher: Teacher;
  /** Samples per example (self-consistency); 1 asks once, without a seed. */
  samples: number;
  concurrency: number;
  journal: Journal<CallRecord>;
  /** What earlier attempts journalled: successes are reused, failures are tried again. */
  prior: readonly CallRecord[];
  /** Tags every record this run journals (see {@link CallRecord.stage}). */
  stageId?: string;
  budget?: CallBudget & { exhausted: boolean };
  /** Maps a completion to its label for the vote; undefined when it does not parse. */
  labelOf?: (completion: string) => string | undefined;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /**
   * Told of calls as they end (`count` of them, with what they spent; the resumed ones at once, before any call), so
   * a worker can count them while the shard runs. Calls the budget refused are not counted.
   */
  onCalls?: (outcome: CallOutcome, count: number, usage?: Usage) => void;
  /**
   * Slots of `concurrency` that another shard still holds: the shard starts without them, takes up those `trickle`
   * hands back as the holder frees them, and the rest once `back` resolves (the holder has ended). It does not end
   * before `back`, so that whatever it hands on in turn is free by the time it has ended.
   */
  lent?: { slots: number; back: Promise<void>; trickle?: (take: (slots: number) => void) => void };
  /**
   * Told once, when the shard first has fewer slots at work than it holds and no call left to start: how many slots
   * can still have a call in flight from then on (those at work, and lent slots not yet back). The rest are free.
   */
  onTail?: (slots: number) => void;
  /** After the tail, told of each slot as it frees up for good: a slot's last call written, or a lent slot back. */
  onFreed?: (slots: number) => void;
  /**
   * Failures that earlier attempts journalled stand, and are not tried again: a shard that has handed its free slots
   * on keeps only those of its calls that have no record at all (see `lib/teacher/stage/direct.ts`).
   */
  keepFailures?: boolean;
}

/**
 * Runs the calls of one shard that no earlier attempt finished and folds everything into responses, one per example
 * in shard order. Stops taking new calls once the budget refuses one; calls in flight finish and are journalled.
 */
export async function runShard(opts: RunShardOptions): Promise<{ responses: ShardResponse[]; stats: ShardStats }> {
  const { examples, samples } = opts;
  const done = successesOf(opts.prior, opts.keepFailures ?? false);
  const { pending, resumed } = unfinishedCalls(examples.length, samples, done);
  const kept = [...done.values()].filter((r) => r.error !== undefined).length;
  const stats: ShardStats = {
    examples: examples.length,
    calls: examples.length * samples,
    resumed: resumed - kept,
    cached: 0,
    sent: 0,
    failed: kept,
    notSent: 0,
    budgetStopped: false,
    usage: { promptTokens: 0, completionTokens: 0 },
  };
  const records = new Map(done);
  opts.onProgress?.(stats.resumed, stats.calls);
  if (stats.resumed > 0) opts.onCalls?.('resumed', stats.resumed);
  const lookups = new Lookahead(opts, pending);
  const calls = new ShardCalls(opts, pending, lookups, stats, records);
  try {
    await calls.runSlots(opts.concurrency, opts.lent);
  } catch (err) {
    // The calls the other slots finished meanwhile are written down before the attempt fails, so its retry resumes
    // them rather than paying for them again, and no lookup is left running.
    const settled = Promise.allSettled([opts.journal.flush(), calls.background.drain(), lookups.settle()]);
    if (!opts.signal?.aborted) await settled;
    // A cancelled shard waits for the same writes, but only so long: a worker that drains cancels its shards and
    // exits once they end, and answers still being written then were lost, and paid for again by the retry
    // (multi-worker's test caught it). A store that is down does not hold the cancellation past the bound.
    else await settledWithin(settled, CANCELLED_WRITES_MS);
    throw err;
  }
  // Lookups no slot took (the budget stopped the shard) are reads only, but none is left running once it returns.
  await lookups.settle();
  await opts.journal.flush();
  await calls.background.drain();
  stats.budgetStopped = calls.stopped || (opts.budget?.exhausted ?? false);
  // Calls with no record at all: refused by the budget, or never reached after it stopped the shard.
  stats.notSent = stats.calls - records.size;
  return { responses: foldShard(examples, samples, records, opts.labelOf), stats };
}

/**
 * How long a cancelled shard waits for its journal and cache writes in flight: a journal segment's five tries back off
 * for 3 s in all, so a store that answers at all lands them well within it.
 */
export const CANCELLED_WRITES_MS = 5_000;

/** The successes earlier attempts journalled, by `i.s`, and their last failures too when `keepFailures`. */
function successesOf(prior: readonly CallRecord[], keepFailures: boolean): Map<string, CallRecord> {
  const done = new Map<string, CallRecord>();
  for (const r of prior) {
    const key = `${r.i}.${r.s}`;
    // A success is final; a later failure record never replaces it.
    const seen = done.get(key);
    if (seen && seen.error === undefined) continue;
    if (r.completion !== undefined && r.error === undefined) done.set(key, r);
    else if (keepFailures && r.error !== undefined) done.set(key, r);
  }
  return done;
}

/** The calls still to make, in shard order, and how many earlier attempts already finished. */
function unfinishedCalls(
  examples: number,
  samples: number,
  done: ReadonlyMap<string, CallRecord>
): { pending: { i: number; s: number }[]; resumed: number } {
  const pending: { i: number; s: number }[] = [];
  let resumed = 0;
  for (let i = 0; i < examples; i++) {
    for (let s = 0; s < samples; s++) {
      if (done.has(`${i}.${s}`)) resumed++;
      else pending.push({ i, s });
    }
  }
  return { pending, resumed };
}

/** The request for example `i`, sample `s`: seeded only when there are several samples to tell apart. */
function requestOf(opts: RunShardOptions, i: number, s: number): TeacherRequest {
  const example = opts.examples[i];
  return {
    id: example.id,
    messages: opts.messagesFor(example),
    source: example.source,
    ...(opts.samples > 1 ? { seed: s } : {}),
  };
}

/** A pending call's request, built once, and its response-cache hit if an earlier run made the call. */
interface LookedUp {
  request: TeacherRequest;
  hit?: TeacherResponse;
}

/**
 * Cache lookups started ahead of the slot that takes the oldest of them: a few dozen, as many as a re-run answered
 * from the cache needs in flight to go at the store's pace (its slots make no calls, they only wait on lookups).
 */
const LOOKAHEAD = 32;

/**
 * The shard's cache lookups, run ahead of the calls that need them. Looking the whole shard up before the first call
 * would hold every slot for a thousand store reads at each shard's start (most of a second on S3); kept
 * {@link LOOKAHEAD} ahead, a lookup has almost always landed by the time a slot takes its call, so a call still goes
 * straight to the endpoint and no slot waits on a store round-trip, from the first call on.
 */
class Lookahead {
  private readonly ahead = new Map<number, Promise<LookedUp>>();
  /** Next pending call to start a lookup for. */
  private started = 0;

  constructor(
    private readonly opts: RunShardOptions,
    private readonly pending: readonly { i: number; s: number }[]
  ) {}

  /** Call `k`'s request and cache hit; starts the lookups of the calls after it, up to the window. */
  take(k: number): Promise<LookedUp> {
    this.fill(k + 1 + LOOKAHEAD);
    const found = this.ahead.get(k)!;
    this.ahead.delete(k);
    return found;
  }

  /** Waits for the lookups no slot took, ignoring how they ended. */
  async settle(): Promise<void> {
    await Promise.allSettled(this.ahead.values());
    this.ahead.clear();
  }

  private fill(until: number): void {
    const end = Math.min(until, this.pending.length);
    for (; this.started < end; this.started++) {
      const looking = this.lookup(this.started);
      // Handled here so a lookup that fails after its shard gave up is not an unhandled rejection; the slot that
      // takes it still sees the failure.
      looking.catch(() => undefined);
      this.ahead.set(this.started, looking);
    }
  }

  private async lookup(k: number): Promise<LookedUp> {
    const { i, s } = this.pending[k];
    const request = requestOf(this.opts, i, s);
    const hit = await this.opts.teacher.lookup?.(request);
    return hit ? { request, hit } : { request };
  }
}

/** Response-cache writes in flight: started as each call finishes, awaited before the shard reports. */
class BackgroundWrites {
  private readonly inFlight = new Set<Promise<unknown>>();
  private error: unknown;

  /** Tracks a write; its failure is kept for {@link throwIfFailed} rather than left unhandled. */
  readonly add = (p: Promise<unknown>): void => {
    const tracked = p.catch((err: unknown) => {
      this.error ??= err;
    });
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  };

  get size(): number {
    return this.inFlight.size;
  }

  /** Settles when any write in flight has. */
  anySettled(): Promise<unknown> {
    return Promise.race(this.inFlight);
  }

  throwIfFailed(): void {
    if (this.error !== undefined) throw this.error;
  }

  /** Waits for every write in flight, then rethrows the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.inFlight);
    this.throwIfFailed();
  }
}

/** The pending calls of one shard, taken in order by concurrent slots that share the tallies. */
class ShardCalls {
  /** Set once the budget refuses a call: no slot takes another. */
  stopped = false;
  readonly background = new BackgroundWrites();
  /** The first error a slot met: no slot takes another call once it is set. */
  private failure: { error: unknown } | undefined;
  private next = 0;
  private finished: number;
  /** Slots waiting on the store (see {@link untilCancelled}), each by its rejection. */
  private readonly waiting = new Set<(reason: unknown) => void>();

  constructor(
    private readonly opts: RunShardOptions,
    private readonly pending: readonly { i: number; s: number }[],
    private readonly lookups: Lookahead,
    private readonly stats: ShardStats,
    private readonly records: Map<string, CallRecord>
  ) {
    this.finished = stats.resumed;
  }

  /**
   * Runs the shard's slots to the end: `concurrency` of them, less any still lent to another shard until they come
   * back, and never more than there are calls to start. The first error a slot meets stops the others from taking
   * another call (their calls in flight finish), and is thrown once every slot has ended: the attempt then fails with
   * no call of it still going, where a slot left running would keep sending calls that the attempt's retry sends again.
   */
  async runSlots(concurrency: number, lent?: RunShardOptions['lent']): Promise<void> {
    const { signal } = this.opts;
    // One listener for the shard, not one per wait: the signal lives as long as the activity.
    const onAbort = () => {
      for (const reject of this.waiting) reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const own = Math.max(0, concurrency - (lent?.slots ?? 0));
    let atWork = 0;
    /** Lent slots handed back so far (all of them once `back` resolves). */
    let returned = 0;
    let tailed = false;
    const tail = () => {
      if (tailed || this.stopped || this.failure) return false;
      tailed = true;
      this.opts.onTail?.(atWork + (lent ? lent.slots - returned : 0));
      return true;
    };
    const slots: Promise<void>[] = [];
    const start = (n: number) => {
      let k = Math.min(n, this.pending.length - this.next);
      // Slots with no call to take: past the tail they are free for good, and go on to whoever took the tail.
      if (tailed && n > k) this.opts.onFreed?.(n - k);
      for (; k > 0; k--) {
        atWork++;
        slots.push(
          this.run().then(
            () => {
              atWork--;
              // This slot found no call left to start: from here on the shard only gives slots up.
              if (!tail() && tailed) this.opts.onFreed?.(1);
            },
            (error: unknown) => {
              atWork--;
              this.failure ??= { error };
            }
          )
        );
      }
    };
    const takeBack = (n: number) => {
      const k = Math.min(n, lent!.slots - returned);
      returned += k;
      if (k > 0 && !this.stopped && !this.failure) start(k);
    };
    try {
      start(own);
      if (atWork < own) tail();
      // Lent slots join as their holder frees them, and all of them once it has ended.
      lent?.trickle?.(takeBack);
      const back = lent ? this.untilCancelled(lent.back).then(() => takeBack(lent.slots)) : undefined;
      back?.catch(() => undefined);
      for (let awaited = 0; awaited < slots.length;) {
        const batch = slots.slice(awaited);
        awaited = slots.length;
        await Promise.all(batch);
      }
      // The shard does not end while it may still be counting on lent slots: whatever it handed on includes them.
      if (back && !this.failure) {
        await back;
        await Promise.all(slots);
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    if (this.failure) throw this.failure.error;
  }

  /**
   * Waits for `p`, a store operation, unless the shard is cancelled first: a slot held up by a slow or dead store
   * still ends when its activity is cancelled, and runShard waits for the writes in flight only up to its bound.
   */
  private untilCancelled<T>(p: Promise<T>): Promise<T> {
    const { signal } = this.opts;
    if (!signal) return p;
    signal.throwIfAborted();
    return new Promise<T>((resolve, reject) => {
      this.waiting.add(reject);
      p.then(resolve, reject).finally(() => this.waiting.delete(reject));
    });
  }

  /** One slot: takes the next pending call until none is left, the budget stops the shard or another slot failed. */
  private async run(): Promise<void> {
    const { signal, journal } = this.opts;
    /** The slot's last record while its write is under way (see below); its failure surfaces where it is awaited. */
    let unwritten: Promise<void> | undefined;
    while (!this.stopped && !this.failure && this.next < this.pending.length) {
      signal?.throwIfAborted();
      const k = this.next++;
      const { i, s } = this.pending[k];
      const { request, hit } = await this.untilCancelled(this.lookups.take(k));
      signal?.throwIfAborted();
      // Another slot's call may have met the end of the budget, or failed, while this one waited on its lookup.
      if (this.stopped || this.failure) break;
      const response = hit ?? (await this.send(request));
      if (response.notSent) {
        this.stopped = true;
        // Refused by the budget after attempts the endpoint may have billed: journalled as a failure all the same,
        // so what those attempts spent is counted by this stage and by the next launch of the shard.
        if (!response.attempts) continue;
      }
      this.count(response);
      const record = toRecord(i, s, response, this.opts.stageId);
      // Cache hits need no journal entry to be free next time, but journalling them keeps resume O(journal).
      // A slot never has more than one answer that is not written down: it sends its next call while this record is
      // written, and waits for the write before it goes past that call's answer. A retry of this shard learns what
      // was spent from the journal and sets aside, per slot of a dead attempt, one unwritten answer and one call in
      // flight at their worst case (direct.ts); a killed worker's answered-but-unjournalled calls stay at one per slot
      // (without any wait, a kill mid-shard repeated calls: multi-worker's test caught it). Waiting for each record
      // before the next call instead idled every slot for a store round-trip per call: 11-14 ms per call at 1 s and
      // 250 ms latency on the filesystem store (fsync among the cache writes), more on S3.
      try {
        if (unwritten) await this.untilCancelled(unwritten);
      } catch (err) {
        // Cancelled while the slot's last record was being written: this answer goes to the journal all the same
        // (runShard waits for it, bounded), or the attempt's retry pays for it again.
        if (signal?.aborted) journal.append(record).catch(() => undefined);
        throw err;
      }
      unwritten = journal.append(record);
      unwritten.catch(() => undefined);
      // Cache writes in flight are bounded too, at two per slot: a store slower than the endpoint then holds the slots
      // back, instead of a queue of writes growing in memory.
      while (this.background.size > 2 * this.opts.concurrency) {
        await this.untilCancelled(this.background.anySettled());
      }
      this.background.throwIfFailed();
      this.records.set(`${i}.${s}`, record);
      this.opts.onProgress?.(++this.finished, this.stats.calls);
    }
    if (unwritten) await this.untilCancelled(unwritten);
  }

  private send(request: TeacherRequest): Promise<TeacherResponse> {
    const { teacher } = this.opts;
    return teacher.callOne(request, {
      signal: this.opts.signal,
      budget: this.opts.budget,
      skipLookup: teacher.lookup !== undefined,
      deferWrite: this.background.add,
    });
  }

  /** Adds a finished call (not one the budget refused) to the shard's figures. */
  private count(response: TeacherResponse): void {
    const { stats } = this;
    if (response.cached) stats.cached++;
    else if ((response.attempts ?? 0) > 0) stats.sent++;
    if (response.error !== undefined) stats.failed++;
    if (response.usage) {
      stats.usage.promptTokens += response.usage.promptTokens;
      stats.usage.completionTokens += response.usage.completionTokens;
    }
    const outcome = response.error !== undefined ? 'failed' : response.cached ? 'cached' : 'sent';
    this.opts.onCalls?.(outcome, 1, response.usage);
  }
}

/** Journal records as the fold takes them: the success for each (example, sample), else the latest failure. */
export function indexRecords(records: readonly CallRecord[]): Map<string, CallRecord> {
  const index = new Map<string, CallRecord>();
  for (const r of records) {
    const key = `${r.i}.${r.s}`;
    const seen = index.get(key);
    if (seen && seen.error === undefined) continue;
    index.set(key, r);
  }
  return index;
}

/**
 * One response per example from its samples' records. With one sample the record is the response. With several,
 * the label most samples parse to wins (ties go to the label seen first), and the first completion with that label
 * is kept, so the rationale agrees with the label it comes with. When no sample parses, the first completion is
 * kept and the validate stage drops it with the parse reason; when no sample succeeded, the response is an error.
 */
export function foldShard(
  examples: readonly ShardExample[],
  samples: number,
  records: Map<string, CallRecord>,
  labelOf?: (completion: string) => string | undefined
): ShardResponse[] {
  return examples.map((example, i) => {
    const got: CallRecord[] = [];
    for (let s = 0; s < samples; s++) {
      const r = records.get(`${i}.${s}`);
      if (r) got.push(r);
    }
    const usage = sumUsage(got);
    const base = { id: example.id, promptHash: got[0]?.promptHash ?? '', ...(usage ? { usage } : {}) };
    const ok = got.filter((r) => r.completion !== undefined && r.error === undefined);
    if (ok.length === 0) {
      const failure = got.find((r) => r.error !== undefined);
      return {
        ...base,
        completion: '',
        cached: false,
        error: failure?.error ?? 'not sent: the cost budget (teacher.maxCost) ran out before this example',
        ...(samples > 1 ? { samples } : {}),
      };
    }
    if (samples === 1) {
      return { ...base, completion: ok[0].completion!, cached: ok[0].cached === true, promptHash: ok[0].promptHash };
    }
    const votes: Record<string, number> = {};
    const labels = ok.map((r) => (labelOf ? labelOf(r.completion!) : undefined));
    for (const label of labels) if (label !== undefined) votes[label] = (votes[label] ?? 0) + 1;
    let winner: string | undefined;
    for (const label of labels) {
      if (label !== undefined && (winner === undefined || votes[label] > votes[winner])) winner = label;
    }
    const kept = winner === undefined ? ok[0] : ok[labels.indexOf(winner)];
    return {
      ...base,
      completion: kept.completion!,
      cached: ok.every((r) => r.cached === true),
      promptHash: kept.promptHash,
      samples,
      votes,
    };
  });
}

function toRecord(i: number, s: number, r: TeacherResponse, stage: string | undefined): CallRecord {
  return {
    ...(stage === undefined ? {} : { stage }),
    i,
    s,
    id: r.id,
    promptHash: r.promptHash,
    ...(r.error === undefined ? { completion: r.completion } : { error: r.error }),
    ...(r.cached ? { cached: true } : {}),
    ...(r.attempts ? { attempts: r.attempts } : {}),
    ...(r.finishReason ? { finishReason: r.finishReason } : {}),
    ...(r.usage ? { usage: r.usage } : {}),
    ...(r.rateLimit ? { rateLimit: r.rateLimit } : {}),
  };
}

function sumUsage(records: readonly CallRecord[]): Usage | undefined {
  let any = false;
  const total = { promptTokens: 0, completionTokens: 0 };
  for (const r of records) {
    if (!r.usage) continue;
    any = true;
    total.promptTokens += r.usage.promptTokens;
    total.completionTokens += r.usage.completionTokens;
  }
  return any ? total : undefined;
}
