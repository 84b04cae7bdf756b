const NULL = 0;
const ASIDE = 255;

/**
 * A nullable string per slot in `width` bytes (16 by default, at most 254): one of up to `width` - 1 Latin-1
 * characters (LiveKit's sids, `PA_` and 12; identities in 48) is kept inline as its length + 1 and its character
 * codes; any other is kept aside as a string. A V8 string costs 16 bytes plus its characters rounded up to 8, and
 * a pointer to it 8.
 */
export class ShortStrings {
  private bytes = new Uint8Array(0);
  private readonly aside = new Map<number, string>();

  constructor(private readonly width = 16) {}

  /** Room for slots below `capacity`. */
  grow(capacity: number): void {
    if (capacity * this.width <= this.bytes.length) return;
    const bytes = new Uint8Array(capacity * this.width);
    bytes.set(this.bytes);
    this.bytes = bytes;
  }

  set(slot: number, value: string | null): void {
    const at = slot * this.width;
    if (this.bytes[at] === ASIDE) this.aside.delete(slot);
    if (value === null) {
      this.bytes[at] = NULL;
      return;
    }
    if (value.length < this.width && fitsLatin1(value)) {
      this.bytes[at] = value.length + 1;
      for (let i = 0; i < value.length; i++) this.bytes[at + 1 + i] = value.charCodeAt(i);
      return;
    }
    this.bytes[at] = ASIDE;
    this.aside.set(slot, value);
  }

  get(slot: number): string | null {
    const at = slot * this.width;
    const head = this.bytes[at]!;
    if (head === NULL) return null;
    if (head === ASIDE) return this.aside.get(slot)!;
    return String.fromCharCode(...this.bytes.subarray(at + 1, at + head));
  }

  /** True when the slot holds `value` (without building the held string). */
  equals(slot: number, value: string | null): boolean {
    const at = slot * this.width;
    const head = this.bytes[at]!;
    if (head === NULL || value === null) return head === NULL && value === null;
    if (head === ASIDE) return this.aside.get(slot) === value;
    if (value.length !== head - 1) return false;
    for (let i = 0; i < value.length; i++) if (this.bytes[at + 1 + i] !== value.charCodeAt(i)) return false;
    return true;
  }
}

function fitsLatin1(value: string): boolean {
  for (let i = 0; i < value.length; i++) if (value.charCodeAt(i) > 0xff) return false;
  return true;
}
