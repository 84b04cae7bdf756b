import type { Clock, TimerHandle } from '../clock.js';
import { MinHeap } from '../lib/min-heap.js';

interface Entry {
  at: number;
  id: string;
  gen: number;
}

/**
 * One timer for every delegation: a min-heap of (due time, id) drained by a single clock timer. Rescheduling an id
 * bumps its generation; older heap entries are skipped when they surface (lazy deletion).
 */
export class Schedule {
  private readonly heap = new MinHeap<Entry>((a, b) => a.at < b.at);
  private readonly gens = new Map<string, number>();
  private timer: TimerHandle | null = null;
  private timerAt = Infinity;
  private stopped = false;

  constructor(
    private readonly clock: Clock,
    private readonly onDue: (id: string) => void,
  ) {}

  /** Due at `at` (ms epoch), replacing any earlier schedule for the id; null unschedules. */
  set(id: string, at: number | null): void {
    const gen = (this.gens.get(id) ?? 0) + 1;
    if (at === null) {
      this.gens.delete(id);
      return;
    }
    this.gens.set(id, gen);
    this.heap.push({ at, id, gen });
    if (at < this.timerAt) this.arm();
  }

  get size(): number {
    return this.gens.size;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
  }

  private arm(): void {
    if (this.stopped) return;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
    const top = this.heap.peek();
    if (!top) return;
    this.timerAt = top.at;
    this.timer = this.clock.setTimeout(() => this.fire(), top.at - this.clock.now());
  }

  private fire(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const now = this.clock.now();
    const due: string[] = [];
    for (let top = this.heap.peek(); top && top.at <= now; top = this.heap.peek()) {
      this.heap.pop();
      if (this.gens.get(top.id) !== top.gen) continue;
      this.gens.delete(top.id);
      due.push(top.id);
    }
    this.arm();
    for (const id of due) this.onDue(id);
  }
}
