const NULL = -0x80000000;
/** The slot's value did not fit (too far from the base, or not whole milliseconds): it is in `far`. */
const FAR = -0x7fffffff;
const MAX_OFFSET = 0x7fffffff;
/** A value past the range moves the base this far beyond it (12 days), so a daemon that runs for months rebases about every 12 days. */
const REBASE_AHEAD_MS = 12 * 86_400_000;

/**
 * A column of times (ms) or null, four bytes a slot: whole milliseconds as an offset from a base (the first value
 * stored, moved ahead when later values pass ±24 days from it); anything else is kept exactly beside the column. Half
 * of a Float64Array. Free slots must be set to null: their stale values would otherwise be carried along.
 */
export class TimeColumn {
  private values = new Int32Array(0);
  private base: number | null = null;
  private readonly far = new Map<number, number>();

  set(slot: number, v: number | null): void {
    if (v === null) {
      this.values[slot] = NULL;
      this.far.delete(slot);
      return;
    }
    this.base ??= v;
    let offset = v - this.base;
    // Times move forward: once they leave the range, every later one would be kept aside. Move the range instead (a
    // value far beyond it, which a running daemon never reaches step by step, is just kept aside).
    if (Number.isInteger(offset) && offset > MAX_OFFSET && offset <= 2 * MAX_OFFSET) {
      this.rebase(v + REBASE_AHEAD_MS);
      offset = v - this.base;
    }
    if (Number.isInteger(offset) && offset > FAR && offset <= MAX_OFFSET) {
      this.values[slot] = offset;
      this.far.delete(slot);
    } else {
      this.values[slot] = FAR;
      this.far.set(slot, v);
    }
  }

  get(slot: number): number | null {
    const offset = this.values[slot]!;
    if (offset === NULL) return null;
    if (offset === FAR) return this.far.get(slot)!;
    return this.base! + offset;
  }

  /** The value of a slot known to hold one. */
  value(slot: number): number {
    return this.get(slot)!;
  }

  /** Re-encodes every held value against a new base; values the new range does not cover are kept aside. */
  private rebase(base: number): void {
    const old = this.base!;
    this.base = base;
    for (let slot = 0; slot < this.values.length; slot++) {
      const offset = this.values[slot]!;
      if (offset === NULL) continue;
      const v = offset === FAR ? this.far.get(slot)! : old + offset;
      this.far.delete(slot);
      this.set(slot, v);
    }
  }

  grow(size: number): void {
    // New slots hold null, not a zero offset (a rebase reads every slot).
    const values = new Int32Array(size).fill(NULL);
    values.set(this.values);
    this.values = values;
  }
}
