/**
 * Shared copies of values that many live objects repeat (a million delegations then hold one copy of each room name
 * or homeserver URL, not a million). An entry outlives its last user until the owner sweeps the table, keeping only
 * the keys its live objects still name.
 */
export class InternTable<V> {
  private map = new Map<string, V>();

  get size(): number {
    return this.map.size;
  }

  get(key: string, make: (key: string) => V): V {
    let v = this.map.get(key);
    if (v === undefined) this.map.set(key, (v = make(key)));
    return v;
  }

  /** Keeps the keys `live` yields and forgets the rest. */
  sweep(live: Iterable<string>): void {
    const old = this.map;
    this.map = new Map();
    for (const key of live) {
      if (this.map.has(key)) continue;
      const v = old.get(key);
      if (v !== undefined) this.map.set(key, v);
    }
  }
}
