/**
 * A small deterministic generator for the soak's plan: a 32-bit counter pushed through a multiply-xorshift mixer.
 * Not for anything secret; its only job is that the same seed gives the same soak.
 */
export class Prng {
  private readonly seed: number;
  private state: number;

  constructor(seed: number) {
    this.seed = mix32(seed >>> 0);
    this.state = this.seed;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(this.state) / 0x1_0000_0000;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Uniform in [lo, hi). */
  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Whole number in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[Math.min(items.length - 1, Math.floor(this.next() * items.length))]!;
  }

  /** A key of `weights`, drawn in proportion to its weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as Array<[K, number]>;
    const total = entries.reduce((s, [, w]) => s + Math.max(0, w), 0);
    if (total <= 0) throw new Error('weights must not all be zero');
    let r = this.next() * total;
    for (const [k, w] of entries) {
      r -= Math.max(0, w);
      if (r < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }

  /** An independent stream named by `label`: the same for the same seed and label, whatever was drawn before. */
  fork(label: number): Prng {
    return new Prng((this.seed ^ mix32(Math.imul(label + 1, 0x27d4eb2f) >>> 0)) >>> 0);
  }
}

function mix32(x: number): number {
  let z = x >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}
