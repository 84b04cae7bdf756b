/**
 * Lists of slots under small integer keys, linked through typed arrays: a slot is in at most two lists (`link` 0 and
 * 1: a delegation's own room or participant, and Element Call's legacy one), and costs 8 bytes per link whatever the
 * list's length. Replaces a Map or Set per key: with a million delegations those cost tens of bytes per entry and
 * give the collector a million objects to trace.
 */
export class SlotLists {
  private head = new Int32Array(0);
  private sizes = new Uint32Array(0);
  /** Per entry (slot * 2 + link): the next and previous entry in its list, -1 at the ends. */
  private next = new Int32Array(0);
  private prev = new Int32Array(0);

  link(key: number, slot: number, link: 0 | 1): void {
    this.ensureKey(key);
    this.ensureSlot(slot);
    const e = slot * 2 + link;
    const first = this.head[key]!;
    this.next[e] = first;
    this.prev[e] = -1;
    if (first >= 0) this.prev[first] = e;
    this.head[key] = e;
    this.sizes[key]!++;
  }

  unlink(key: number, slot: number, link: 0 | 1): void {
    const e = slot * 2 + link;
    const n = this.next[e]!;
    const p = this.prev[e]!;
    if (p >= 0) this.next[p] = n;
    else this.head[key] = n;
    if (n >= 0) this.prev[n] = p;
    this.sizes[key]!--;
  }

  count(key: number): number {
    return key < this.sizes.length ? this.sizes[key]! : 0;
  }

  /** The entries (slot * 2 + link) under the key. */
  *entries(key: number): Iterable<number> {
    if (key >= this.head.length) return;
    for (let e = this.head[key]!; e >= 0; e = this.next[e]!) yield e;
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

  private ensureSlot(slot: number): void {
    if (slot * 2 + 1 < this.next.length) return;
    const size = Math.max(slot * 2 + 2, this.next.length * 2, 2048);
    const next = new Int32Array(size);
    next.set(this.next);
    const prev = new Int32Array(size);
    prev.set(this.prev);
    this.next = next;
    this.prev = prev;
  }
}
