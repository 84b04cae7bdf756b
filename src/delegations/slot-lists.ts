/**
 * Lists of slots under small integer keys, linked through typed arrays: a slot is in at most two lists (`link` 0 and
 * 1: a delegation's own room or participant, and Element Call's legacy one), and costs 8 bytes per link whatever the
 * list's length. Replaces a Map or Set per key: with a million delegations those cost tens of bytes per entry and
 * give the collector a million objects to trace. The links 1 are kept apart and grown only as far as the highest
 * slot that uses one (delegations without a legacy name cost nothing for it).
 */
export class SlotLists {
  private head = new Int32Array(0);
  private sizes = new Uint32Array(0);
  /** Per link and slot: the next and previous entry (slot * 2 + link) in its list, -1 at the ends. */
  private readonly next: [Int32Array<ArrayBuffer>, Int32Array<ArrayBuffer>] = [new Int32Array(0), new Int32Array(0)];
  private readonly prev: [Int32Array<ArrayBuffer>, Int32Array<ArrayBuffer>] = [new Int32Array(0), new Int32Array(0)];

  link(key: number, slot: number, link: 0 | 1): void {
    this.ensureKey(key);
    this.ensureSlot(slot, link);
    const e = slot * 2 + link;
    const first = this.head[key]!;
    this.next[link][slot] = first;
    this.prev[link][slot] = -1;
    if (first >= 0) this.prev[first & 1]![first >> 1] = e;
    this.head[key] = e;
    this.sizes[key]!++;
  }

  unlink(key: number, slot: number, link: 0 | 1): void {
    const n = this.next[link][slot]!;
    const p = this.prev[link][slot]!;
    if (p >= 0) this.next[p & 1]![p >> 1] = n;
    else this.head[key] = n;
    if (n >= 0) this.prev[n & 1]![n >> 1] = p;
    this.sizes[key]!--;
  }

  count(key: number): number {
    return key < this.sizes.length ? this.sizes[key]! : 0;
  }

  /** The entries (slot * 2 + link) under the key. */
  *entries(key: number): Iterable<number> {
    if (key >= this.head.length) return;
    for (let e = this.head[key]!; e >= 0; e = this.next[e & 1]![e >> 1]!) yield e;
  }

  /** Empties every list (before they are linked again). */
  clear(keys: number): void {
    this.head = new Int32Array(keys).fill(-1);
    this.sizes = new Uint32Array(keys);
  }

  private ensureKey(key: number): void {
    if (key < this.head.length) return;
    const size = Math.max(key + 1, this.head.length * 2, 64);
    const head = new Int32Array(size).fill(-1);
    head.set(this.head);
    const sizes = new Uint32Array(size);
    sizes.set(this.sizes);
    this.head = head;
    this.sizes = sizes;
  }

  private ensureSlot(slot: number, link: 0 | 1): void {
    const have = this.next[link];
    if (slot < have.length) return;
    const size = Math.max(slot + 1, have.length * 2, 1024);
    const next = new Int32Array(size);
    next.set(have);
    const prev = new Int32Array(size);
    prev.set(this.prev[link]);
    this.next[link] = next;
    this.prev[link] = prev;
  }
}
