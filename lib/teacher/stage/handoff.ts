/**
 * The slots teacher shards hand on inside one worker process. A shard started in another's tail holds part of its
 * share only as that other shard frees it (see `TeacherShardInput.after`): each of the other's slots once its last call
 * is written, and every one once its activity has ended. When both shards run in the same worker, each slot is known
 * here the moment it frees up; from another worker the end is learnt from the stage (a query), later.
 */

/** How many ended shards are remembered: a successor starts within moments of its predecessor's tail. */
const REMEMBERED = 4096;

/** A shard of one run of a stage (`scope`: its workflow id and run id): `<scope>#<index>`. */
export const shardOf = (scope: string, index: number): string => `${scope}#${index}`;

export class ShardSlots {
  private readonly ended = new Set<string>();
  /** Slots each running shard has freed since its tail, not yet all handed on by its end. */
  private readonly freed = new Map<string, number>();
  private readonly takers = new Map<string, Set<(slots: number) => void>>();
  private readonly endWaiters = new Map<string, Set<() => void>>();

  /** `shard` freed `slots` for good after its tail: whoever took its tail may use them. */
  free(shard: string, slots: number): void {
    if (this.ended.has(shard)) return;
    this.freed.set(shard, (this.freed.get(shard) ?? 0) + slots);
    for (const take of this.takers.get(shard) ?? []) take(slots);
  }

  /**
   * Marks `shard` ended: all its slots are free. Only for an attempt that returned the shard's finished result, which
   * any later attempt of it finds stored, making no call.
   */
  end(shard: string): void {
    this.ended.add(shard);
    if (this.ended.size > REMEMBERED) this.ended.delete(this.ended.values().next().value!);
    this.freed.delete(shard);
    this.takers.delete(shard);
    for (const resolve of this.endWaiters.get(shard) ?? []) resolve();
    this.endWaiters.delete(shard);
  }

  /** Hands `take` the slots `shard` has freed so far, then each as it frees one, until `signal` aborts. */
  trickle(shard: string, take: (slots: number) => void, signal: AbortSignal): void {
    if (this.ended.has(shard) || signal.aborted) return;
    const already = this.freed.get(shard) ?? 0;
    if (already > 0) take(already);
    this.withdrawn(this.takers, shard, take, signal);
  }

  /** Resolves once `shard` has ended in this process; `signal` withdraws the wait (the promise then never settles). */
  whenEnded(shard: string, signal: AbortSignal): Promise<void> {
    if (this.ended.has(shard)) return Promise.resolve();
    return new Promise<void>((resolve) => this.withdrawn(this.endWaiters, shard, resolve, signal));
  }

  /** Adds `fn` to `shard`'s set in `sets`, and takes it out again when `signal` aborts. */
  private withdrawn<F>(sets: Map<string, Set<F>>, shard: string, fn: F, signal: AbortSignal): void {
    const set = sets.get(shard) ?? new Set<F>();
    set.add(fn);
    sets.set(shard, set);
    signal.addEventListener(
      'abort',
      () => {
        set.delete(fn);
        if (set.size === 0 && sets.get(shard) === set) sets.delete(shard);
      },
      { once: true }
    );
  }
}
