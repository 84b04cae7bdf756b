const WIDTH = 16;
const NULL = 0;
const ASIDE = 255;

/**
 * A nullable string per slot, 16 bytes each: one of up to 15 Latin-1 characters (LiveKit's sids, `PA_` and 12) is kept
 * inline as its length + 1 and its character codes; any other is kept aside as a string. A string of that length
 * costs about 40 bytes of heap and a pointer.
 */
export class ShortStrings {
  private bytes = new Uint8Array(0);
  private readonly aside = new Map<number, string>();

  /** Room for slots below `capacity`. */
  grow(capacity: number): void {
    if (capacity * WIDTH <= this.bytes.length) return;
    const bytes = new Uint8Array(capacity * WIDTH);
    bytes.set(this.bytes);
    this.bytes = bytes;
  }

  set(slot: number, value: string | null): void {
    const at = slot * WIDTH;
    if (this.bytes[at] === ASIDE) this.aside.delete(slot);
    if (value === null) {
      this.bytes[at] = NULL;
      return;
    }
    if (value.length < WIDTH && fitsLatin1(value)) {
      this.bytes[at] = value.length + 1;
      for (let i = 0; i < value.length; i++) this.bytes[at + 1 + i] = value.charCodeAt(i);
      return;
    }
    this.bytes[at] = ASIDE;
    this.aside.set(slot, value);
  }

  get(slot: number): string | null {
    const at = slot * WIDTH;
    const head = this.bytes[at]!;
    if (head === NULL) return null;
    if (head === ASIDE) return this.aside.get(slot)!;
    return String.fromCharCode(...this.bytes.subarray(at + 1, at + head));
  }

  /** True when the slot holds `value` (without building the held string). */
  equals(slot: number, value: string | null): boolean {
    const at = slot * WIDTH;
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
