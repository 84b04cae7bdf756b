import type { Clock, TimerHandle } from '../clock.js';

/**
 * Where scheduled ids live: a number (slot) per id. The engine's open delegations already number theirs, so the
 * schedule keeps no string per id; `MapSlots` numbers ids for a schedule of its own.
 */
export interface ScheduleSlots {
  /** The id's slot, numbering it if needed. */
  claim(id: string): number;
  slotOf(id: string): number | undefined;
  idAt(slot: number): string | undefined;
  /** The schedule no longer needs the slot. */
  release(slot: number): void;
}

/** Slots numbered by the schedule itself, reused once unscheduled. */
class MapSlots implements ScheduleSlots {
  private readonly slots = new Map<string, number>();
  private readonly ids: Array<string | undefined> = [];
  private readonly free: number[] = [];

  claim(id: string): number {
    let slot = this.slots.get(id);
    if (slot === undefined) {
      slot = this.free.pop() ?? this.ids.length;
      this.slots.set(id, slot);
      this.ids[slot] = id;
    }
    return slot;
  }

  slotOf(id: string): number | undefined {
    return this.slots.get(id);
  }

  idAt(slot: number): string | undefined {
    return this.ids[slot];
  }

  release(slot: number): void {
    const id = this.ids[slot];
    if (id === undefined) return;
    this.slots.delete(id);
    this.ids[slot] = undefined;
    this.free.push(slot);
  }
}

/**
 * One timer for every delegation: an indexed binary min-heap of slots by due time, drained by a single clock timer.
 * Rescheduling moves a slot's one entry in place (its heap position is kept per slot), so nothing goes stale and the
 * heap never holds more entries than scheduled ids. Typed arrays throughout: 16 bytes a slot, no object per entry.
 */
export class Schedule {
  private due = new Float64Array(1024);
  /** Per slot: its index in `heap`, or -1 when not scheduled. */
  private pos = new Int32Array(1024).fill(-1);
  private heap = new Int32Array(1024);
  private length = 0;
  private timer: TimerHandle | null = null;
  private timerAt = Infinity;
  private stopped = false;

  constructor(
    private readonly clock: Clock,
    private readonly onDue: (id: string) => void,
    private readonly slots: ScheduleSlots = new MapSlots(),
  ) {}

  /** Due at `at` (ms epoch), replacing any earlier schedule for the id; null unschedules. */
  set(id: string, at: number | null): void {
    if (at === null) {
      const slot = this.slots.slotOf(id);
      if (slot !== undefined && slot < this.pos.length && this.pos[slot]! >= 0) {
        this.removeAt(this.pos[slot]!);
        this.slots.release(slot);
      }
      return;
    }
    const slot = this.slots.claim(id);
    this.ensureSlot(slot);
    const i = this.pos[slot]!;
    if (i < 0) {
      this.ensureHeap();
      const j = this.length++;
      this.heap[j] = slot;
      this.pos[slot] = j;
      this.due[slot] = at;
      this.up(j);
    } else {
      const old = this.due[slot]!;
      this.due[slot] = at;
      if (at < old) this.up(i);
      else this.down(i);
    }
    this.arm();
  }

  get size(): number {
    return this.length;
  }

  /** When the id is due, or null when it is not scheduled. */
  dueAt(id: string): number | null {
    const slot = this.slots.slotOf(id);
    return slot !== undefined && slot < this.pos.length && this.pos[slot]! >= 0 ? this.due[slot]! : null;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
  }

  private arm(): void {
    if (this.stopped) return;
    const at = this.length === 0 ? Infinity : this.due[this.heap[0]!]!;
    if (at === this.timerAt && this.timer) return;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (at === Infinity) return;
    this.timer = this.clock.setTimeout(() => this.fire(), at - this.clock.now());
  }

  private fire(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const now = this.clock.now();
    const due: string[] = [];
    while (this.length > 0 && this.due[this.heap[0]!]! <= now) {
      const slot = this.heap[0]!;
      this.removeAt(0);
      const id = this.slots.idAt(slot);
      this.slots.release(slot);
      if (id !== undefined) due.push(id);
    }
    this.arm();
    for (const id of due) this.onDue(id);
  }

  private removeAt(i: number): void {
    const slot = this.heap[i]!;
    const last = --this.length;
    this.pos[slot] = -1;
    if (i === last) return;
    const moved = this.heap[last]!;
    this.heap[i] = moved;
    this.pos[moved] = i;
    this.up(i);
    this.down(this.pos[moved]!);
  }

  private ensureSlot(slot: number): void {
    if (slot < this.pos.length) return;
    let size = this.pos.length;
    while (size <= slot) size *= 2;
    const due = new Float64Array(size);
    due.set(this.due);
    const pos = new Int32Array(size).fill(-1);
    pos.set(this.pos);
    this.due = due;
    this.pos = pos;
  }

  private ensureHeap(): void {
    if (this.length < this.heap.length) return;
    const heap = new Int32Array(this.heap.length * 2);
    heap.set(this.heap);
    this.heap = heap;
  }

  private up(start: number): void {
    const { heap, due, pos } = this;
    let i = start;
    const slot = heap[i]!;
    const at = due[slot]!;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent]!;
      if (due[p]! <= at) break;
      heap[i] = p;
      pos[p] = i;
      i = parent;
    }
    heap[i] = slot;
    pos[slot] = i;
  }

  private down(start: number): void {
    const { heap, due, pos, length } = this;
    let i = start;
    const slot = heap[i]!;
    const at = due[slot]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= length) break;
      const r = l + 1;
      const c = r < length && due[heap[r]!]! < due[heap[l]!]! ? r : l;
      const child = heap[c]!;
      if (due[child]! >= at) break;
      heap[i] = child;
      pos[child] = i;
      i = c;
    }
    heap[i] = slot;
    pos[slot] = i;
  }
}
