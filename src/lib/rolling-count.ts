/** Counts events over the last `windowMs` in one-second buckets: O(1) per event, bounded memory. */
export class RollingCount {
  private readonly buckets: number[];
  private readonly stamps: number[];

  constructor(windowMs = 60_000) {
    const n = Math.ceil(windowMs / 1000);
    this.buckets = new Array<number>(n).fill(0);
    this.stamps = new Array<number>(n).fill(-1);
  }

  add(now: number, n = 1): void {
    const second = Math.floor(now / 1000);
    const i = second % this.buckets.length;
    if (this.stamps[i] !== second) {
      this.stamps[i] = second;
      this.buckets[i] = 0;
    }
    this.buckets[i]! += n;
  }

  total(now: number): number {
    const oldest = Math.floor(now / 1000) - this.buckets.length + 1;
    let sum = 0;
    for (let i = 0; i < this.buckets.length; i++) if (this.stamps[i]! >= oldest) sum += this.buckets[i]!;
    return sum;
  }
}
