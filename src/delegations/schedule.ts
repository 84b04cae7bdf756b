import type { Clock, TimerHandle } from '../clock.js';

/**
 * One timer for every delegation: a binary min-heap of (due time, id, generation) drained by a single clock timer.
 * Rescheduling an id bumps its generation; older heap entries are skipped when they surface (lazy deletion). The
 * heap lives in parallel arrays rather than one object per entry: at a million delegations that is 20 bytes an
 * entry instead of about 56.
 */
export class Schedule {
  private ats = new Float64Array(1024);
  private entryGens = new Int32Array(1024);
  private ids: string[] = [];
  private length = 0;
  private readonly gens = new Map<string, number>();
  private nextGen = 1;
  private timer: TimerHandle | null = null;
  private timerAt = Infinity;
  private stopped = false;

  constructor(
    private readonly clock: Clock,
    private readonly onDue: (id: string) => void,
  ) {}

  /** Due at `at` (ms epoch), replacing any earlier schedule for the id; null unschedules. */
  set(id: string, at: number | null): void {
    if (at === null) {
      this.gens.delete(id);
      return;
    }
    const gen = this.nextGen++ & 0x7fffffff;
    this.gens.set(id, gen);
    this.push(at, gen, id);
    if (at < this.timerAt) this.arm();
    // Lazy deletion lets stale entries pile up when ids are rescheduled often; rebuild before they dominate.
    if (this.length > 2 * this.gens.size + 1024) this.compact();
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
    if (this.length === 0) return;
    this.timerAt = this.ats[0]!;
    this.timer = this.clock.setTimeout(() => this.fire(), this.timerAt - this.clock.now());
  }

  private fire(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const now = this.clock.now();
    const due: string[] = [];
    while (this.length > 0 && this.ats[0]! <= now) {
      const id = this.ids[0]!;
      const gen = this.entryGens[0]!;
      this.pop();
      if (this.gens.get(id) !== gen) continue;
      this.gens.delete(id);
      due.push(id);
    }
    this.arm();
    for (const id of due) this.onDue(id);
  }

  private compact(): void {
    let n = 0;
    for (let i = 0; i < this.length; i++) {
      const id = this.ids[i]!;
      if (this.gens.get(id) !== this.entryGens[i]) continue;
      this.ats[n] = this.ats[i]!;
      this.entryGens[n] = this.entryGens[i]!;
      this.ids[n] = id;
      n++;
    }
    this.length = n;
    this.ids.length = n;
    for (let i = (n >> 1) - 1; i >= 0; i--) this.down(i);
  }

  private push(at: number, gen: number, id: string): void {
    if (this.length === this.ats.length) {
      const ats = new Float64Array(this.ats.length * 2);
      ats.set(this.ats);
      const gens = new Int32Array(this.entryGens.length * 2);
      gens.set(this.entryGens);
      this.ats = ats;
      this.entryGens = gens;
    }
    let i = this.length++;
    this.ats[i] = at;
    this.entryGens[i] = gen;
    this.ids[i] = id;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.ats[parent]! <= this.ats[i]!) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  private pop(): void {
    const last = --this.length;
    if (last > 0) {
      this.ats[0] = this.ats[last]!;
      this.entryGens[0] = this.entryGens[last]!;
      this.ids[0] = this.ids[last]!;
      this.down(0);
    }
    this.ids.length = this.length;
  }

  private down(start: number): void {
    let i = start;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < this.length && this.ats[l]! < this.ats[m]!) m = l;
      if (r < this.length && this.ats[r]! < this.ats[m]!) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  private swap(a: number, b: number): void {
    const at = this.ats[a]!;
    this.ats[a] = this.ats[b]!;
    this.ats[b] = at;
    const g = this.entryGens[a]!;
    this.entryGens[a] = this.entryGens[b]!;
    this.entryGens[b] = g;
    const id = this.ids[a]!;
    this.ids[a] = this.ids[b]!;
    this.ids[b] = id;
  }
}
