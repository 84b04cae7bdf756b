/**
 * Numbered shared copies of strings that repeat across delegations (homeserver, room, action names): a column holds
 * the number, so a million delegations hold one copy of each string and four bytes each. Counted per user, so a
 * string is forgotten, and its number reused, when the last delegation that named it ends.
 */
export class StringPool<V = string> {
  private readonly numbers = new Map<string, number>();
  private readonly keys: string[] = [];
  private readonly values: V[] = [];
  private readonly users: number[] = [];
  private readonly free: number[] = [];

  constructor(private readonly make: (key: string) => V = (key) => key as unknown as V) {}

  get size(): number {
    return this.numbers.size;
  }

  /** The key's number, counted as one more user. */
  acquire(key: string): number {
    let n = this.numbers.get(key);
    if (n === undefined) {
      n = this.free.pop() ?? this.keys.length;
      this.numbers.set(key, n);
      this.keys[n] = key;
      this.values[n] = this.make(key);
      this.users[n] = 0;
    }
    this.users[n]!++;
    return n;
  }

  /** One user fewer; the last one's going forgets the key. */
  release(n: number): void {
    if (--this.users[n]! > 0) return;
    this.numbers.delete(this.keys[n]!);
    this.keys[n] = '';
    this.values[n] = undefined as V;
    this.free.push(n);
  }

  /** The key's number, if some user holds it. */
  numberOf(key: string): number | undefined {
    return this.numbers.get(key);
  }

  value(n: number): V {
    return this.values[n]!;
  }

  /** Keys in use. */
  *live(): Iterable<string> {
    yield* this.numbers.keys();
  }
}
