/**
 * Shared copies of values that many live objects repeat (a million delegations then hold one copy of each room name
 * or homeserver URL, not a million). Entries outlive their last user until the next sweep, which keeps only what the
 * live objects still name; a sweep waits until the table has grown by at least as many entries as the sweep walks,
 * so its cost is spread over the insertions, and what ended objects leave behind stays bounded.
 */
export class InternTable<V> {
  private map = new Map<string, V>();
  private sweepAt: number;

  constructor(private readonly minSweepSize = 1024) {
    this.sweepAt = minSweepSize;
  }

  get size(): number {
    return this.map.size;
  }

  get(key: string, make: (key: string) => V): V {
    let v = this.map.get(key);
    if (v === undefined) this.map.set(key, (v = make(key)));
    return v;
  }

  get sweepDue(): boolean {
    return this.map.size >= this.sweepAt;
  }

  /** Keeps the keys `live` yields (from `walked` live objects) and forgets the rest. */
  sweep(live: Iterable<string>, walked: number): void {
    const old = this.map;
    this.map = new Map();
    for (const key of live) {
      if (this.map.has(key)) continue;
      const v = old.get(key);
      if (v !== undefined) this.map.set(key, v);
    }
    this.sweepAt = Math.max(this.minSweepSize, 2 * this.map.size, this.map.size + walked);
  }
}
