/** What the benches share: each figure's median over rounds or runs with its spread, and the machine's CPU. */
import { readFileSync } from 'node:fs';

/** The median of a non-empty list (the mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** `x` to `digits` decimals, as a number (what the JSON line carries). */
export const round = (x: number, digits = 1): number => Number(x.toFixed(digits));

/** Median, min and max of a non-empty list, each to `digits` decimals. */
export function spread(xs: readonly number[], digits = 1): { median: number; min: number; max: number } {
  return {
    median: round(median(xs), digits),
    min: round(Math.min(...xs), digits),
    max: round(Math.max(...xs), digits),
  };
}

/**
 * `/proc/cpuinfo`: every processor's block, and the first block's fields and flags (all empty off Linux: the machine
 * figures then stay unknown).
 */
export function cpuinfo(): { field: (name: string) => string | undefined; flags: Set<string>; blocks: string[] } {
  let text = '';
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    // Not Linux.
  }
  const blocks = text.split(/\n\s*\n/).filter((b) => /^processor\s*:/m.test(b));
  const field = (name: string): string | undefined =>
    new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(blocks[0] ?? '')?.[1]?.trim();
  return { field, flags: new Set((field('flags') ?? '').split(/\s+/)), blocks };
}

/**
 * The share of the machine's CPU time that its hypervisor gave to other guests (`steal` in `/proc/stat`) since the
 * meter was made: on a shared VM a figure measured while a neighbour took a fifth of the cores is not comparable
 * with one measured while none did, and neither side of a ratio can tell. Undefined off Linux or on kernels that do
 * not count steal.
 */
export function stealMeter(): () => number | undefined {
  const read = (): { steal: number; total: number } | undefined => {
    try {
      const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
      // cpu user nice system idle iowait irq softirq steal ...: steal is the eighth count.
      const counts = line.trim().split(/\s+/).slice(1).map(Number);
      if (counts.length < 8 || counts.some((n) => !Number.isFinite(n))) return undefined;
      // guest and guest_nice (9th, 10th) are already inside user and nice.
      return { steal: counts[7], total: counts.slice(0, 8).reduce((a, b) => a + b, 0) };
    } catch {
      return undefined;
    }
  };
  const start = read();
  return () => {
    const now = read();
    if (!start || !now || now.total === start.total) return undefined;
    return round((now.steal - start.steal) / (now.total - start.total), 3);
  };
}
