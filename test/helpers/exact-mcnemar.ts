/**
 * The exact two-sided McNemar p-value by rational arithmetic, for tests of lib/registry/gate.ts: a different method
 * from the implementation's (no logarithm, no floating-point sum), so agreement means something.
 */

const bitLength = (x: bigint) => x.toString(2).length;

/**
 * min(1, 2·P(X ≤ min(b, c))) for X ~ Binomial(b + c, 1/2) as an exact rational, tail / 2^(n−1), rounded once to a
 * double: C(n, i) built by the integer recurrence, so no logarithm or floating-point sum is involved.
 */
export function exactP(b: number, c: number): number {
  const n = b + c;
  if (n === 0) return 1;
  let choose = 1n;
  let tail = 1n;
  for (let i = 1; i <= Math.min(b, c); i++) {
    choose = (choose * BigInt(n - i + 1)) / BigInt(i);
    tail += choose;
  }
  const num = 2n * tail;
  const den = 1n << BigInt(n);
  if (num >= den) return 1;
  // Scale so the integer quotient keeps 64 significant bits, then undo the scale in two steps (2^-shift alone can
  // underflow where the product does not).
  const shift = bitLength(den) - bitLength(num) + 64;
  const q = Number((num << BigInt(shift)) / den);
  const half = Math.floor(shift / 2);
  return q * 2 ** -half * 2 ** -(shift - half);
}
