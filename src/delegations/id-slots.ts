/**
 * Our delegation ids are `dg_` and 12 random bytes in base64url: 16 characters, no padding, so every such text is
 * canonical and is kept as three words (decoded by hand: no regular expression or buffer per lookup).
 */
const PREFIX = 'dg_';
const ID_LENGTH = PREFIX.length + 16;
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
/** Character code to its 6 bits; -1 for a character outside base64url. */
const SEXTET = new Int8Array(128).fill(-1);
for (let i = 0; i < B64URL.length; i++) SEXTET[B64URL.charCodeAt(i)] = i;
/** Slots per hash-table entry at most (the table doubles beyond): linear probes stay short. */
const MAX_LOAD = 0.5;
const EMPTY = 0;
const PACKED = 1;
const FOREIGN = 2;

/** Mixes an id's three words into a table index (murmur3's finaliser over their sum, rotated per word). */
export function mixIdWords(a: number, b: number, c: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((b << 13) | (b >>> 19), 0xc2b2ae35) ^ c;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Delegation ids by slot and slots by id, without a string or a `Map` entry per delegation: an id of our format is kept
 * as its 12 random bytes (three words per slot), found through an open-addressing table of slot numbers (linear
 * probing, deletion by backward shift, so no tombstones). About 20 bytes per id instead of about 110. Ids of any
 * other shape (tests, stores written by hand) are kept as strings in a side map; they never reach the table.
 */
export class IdSlots {
  private words = new Uint32Array(0);
  private kind = new Uint8Array(0);
  /** Slot + 1 per entry; 0 is empty. Its length is a power of two. */
  private table = new Int32Array(0);
  private packed = 0;
  private readonly foreign = new Map<string, number>();
  private readonly foreignAt = new Map<number, string>();
  /** The last decoded id's words, and scratch for decoding. */
  private a = 0;
  private b = 0;
  private c = 0;
  private readonly groups = [0, 0, 0, 0];

  /** `hash`: the table's hash of an id's words (replaceable so that tests can force collisions). */
  constructor(private readonly hash: (a: number, b: number, c: number) => number = mixIdWords) {}

  get size(): number {
    return this.packed + this.foreign.size;
  }

  /** Room for slots below `capacity`. */
  grow(capacity: number): void {
    if (capacity * 3 <= this.words.length) return;
    const words = new Uint32Array(capacity * 3);
    words.set(this.words);
    const kind = new Uint8Array(capacity);
    kind.set(this.kind);
    this.words = words;
    this.kind = kind;
  }

  /** Records `id` at the free `slot` (below the grown capacity). An id already held must be deleted first. */
  set(id: string, slot: number): void {
    if (!this.decode(id)) {
      this.foreign.set(id, slot);
      this.foreignAt.set(slot, id);
      this.kind[slot] = FOREIGN;
      return;
    }
    this.words[slot * 3] = this.a;
    this.words[slot * 3 + 1] = this.b;
    this.words[slot * 3 + 2] = this.c;
    this.kind[slot] = PACKED;
    if ((this.packed + 1) > this.table.length * MAX_LOAD) this.rehash(Math.max(1024, this.table.length * 2));
    this.place(slot);
    this.packed++;
  }

  slotOf(id: string): number | undefined {
    if (!this.decode(id)) return this.foreign.get(id);
    if (this.packed === 0) return undefined;
    const { a, b, c } = this;
    const mask = this.table.length - 1;
    for (let i = this.hash(a, b, c) & mask; ; i = (i + 1) & mask) {
      const entry = this.table[i]!;
      if (entry === 0) return undefined;
      const s = (entry - 1) * 3;
      if (this.words[s] === a && this.words[s + 1] === b && this.words[s + 2] === c) return entry - 1;
    }
  }

  idAt(slot: number): string | undefined {
    const kind = this.kind[slot];
    if (kind === FOREIGN) return this.foreignAt.get(slot);
    if (kind !== PACKED) return undefined;
    const a = this.words[slot * 3]!;
    const b = this.words[slot * 3 + 1]!;
    const c = this.words[slot * 3 + 2]!;
    return PREFIX + quad(a & 0xffffff) + quad((a >>> 24) | ((b & 0xffff) << 8)) + quad((b >>> 16) | ((c & 0xff) << 16)) + quad(c >>> 8);
  }

  has(slot: number): boolean {
    return slot < this.kind.length && this.kind[slot] !== EMPTY;
  }

  /** Forgets the slot's id. */
  delete(slot: number): void {
    const kind = this.kind[slot];
    this.kind[slot] = EMPTY;
    if (kind === FOREIGN) {
      this.foreign.delete(this.foreignAt.get(slot)!);
      this.foreignAt.delete(slot);
      return;
    }
    if (kind !== PACKED) return;
    this.packed--;
    const mask = this.table.length - 1;
    let i = this.indexOf(slot);
    // Backward shift: pull later entries of the probe run into the hole unless that would put one before its home.
    for (let j = (i + 1) & mask; this.table[j] !== 0; j = (j + 1) & mask) {
      const home = this.home(this.table[j]! - 1);
      // The entry at j may fill the hole at i when its home is not cyclically within (i, j].
      if (((j - home) & mask) >= ((j - i) & mask)) {
        this.table[i] = this.table[j]!;
        i = j;
      }
    }
    this.table[i] = 0;
  }

  /** Sets `a`, `b`, `c` to the id's 96 bits (four groups of 24 packed into three words); false if not our format. */
  private decode(id: string): boolean {
    if (id.length !== ID_LENGTH || !id.startsWith(PREFIX)) return false;
    const g: number[] = this.groups;
    for (let q = 0; q < 4; q++) {
      let v = 0;
      for (let k = 0; k < 4; k++) {
        const code = id.charCodeAt(PREFIX.length + q * 4 + k);
        const bits = code < 128 ? SEXTET[code]! : -1;
        if (bits < 0) return false;
        v = (v << 6) | bits;
      }
      g[q] = v;
    }
    this.a = (g[0]! | (g[1]! << 24)) >>> 0;
    this.b = ((g[1]! >>> 8) | (g[2]! << 16)) >>> 0;
    this.c = ((g[2]! >>> 16) | (g[3]! << 8)) >>> 0;
    return true;
  }

  private home(slot: number): number {
    const s = slot * 3;
    return this.hash(this.words[s]!, this.words[s + 1]!, this.words[s + 2]!) & (this.table.length - 1);
  }

  private indexOf(slot: number): number {
    const mask = this.table.length - 1;
    for (let i = this.home(slot); ; i = (i + 1) & mask) if (this.table[i] === slot + 1) return i;
  }

  private place(slot: number): void {
    const mask = this.table.length - 1;
    let i = this.home(slot);
    while (this.table[i] !== 0) i = (i + 1) & mask;
    this.table[i] = slot + 1;
  }

  private rehash(size: number): void {
    const old = this.table;
    this.table = new Int32Array(size);
    for (const entry of old) if (entry !== 0) this.place(entry - 1);
  }
}

/** 24 bits as four base64url characters. */
function quad(v: number): string {
  return B64URL[v >>> 18]! + B64URL[(v >>> 12) & 63]! + B64URL[(v >>> 6) & 63]! + B64URL[v & 63]!;
}
