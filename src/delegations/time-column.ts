const NULL = -0x80000000;
/** The slot's value did not fit (too far from the base, or not whole milliseconds): it is in `far`. */
const FAR = -0x7fffffff;

/**
 * A column of times (ms) or null, four bytes a slot: whole milliseconds as an offset from the first value stored,
 * which covers ±24 days around it; anything else is kept exactly beside the column. Half of a Float64Array.
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
    const offset = v - this.base;
    if (Number.isInteger(offset) && offset > FAR && offset <= 0x7fffffff) {
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

  grow(size: number): void {
    const values = new Int32Array(size);
    values.set(this.values);
    this.values = values;
  }
}
