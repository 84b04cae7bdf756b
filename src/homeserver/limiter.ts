import type { Clock, TimerHandle } from '../clock.js';
import { MinHeap } from '../lib/min-heap.js';

/**
 * Lower runs first: actions (0) before refreshes (1), and those before refreshes of delegations the homeserver never
 * accepted (2), so bogus delegations only get what the others leave over; within a class, the earliest expiry first.
 */
export interface CallPriority {
  rank: 0 | 1 | 2;
  deadline: number;
}

interface Waiting {
  priority: CallPriority;
  seq: number;
  start: () => void;
}

const QUIET_PERIOD_MS = 60_000;
const MIN_RATE_FRACTION = 1 / 64;
const THROTTLE_SETTLE_MS = 1_000;

/**
 * One homeserver origin's adaptive token bucket (contract section 2): `rate` calls/s with a burst of 5x, halved on a
 * 429 and doubled back towards the setting after each quiet minute. Waiting calls are released by priority.
 */
export class OriginLimiter {
  private tokens: number;
  private rate: number;
  private lastRefill: number;
  private lastThrottle = -Infinity;
  private lastRecover: number;
  private seq = 0;
  private timer: TimerHandle | null = null;
  private readonly queue = new MinHeap<Waiting>((a, b) =>
    a.priority.rank !== b.priority.rank
      ? a.priority.rank < b.priority.rank
      : a.priority.deadline !== b.priority.deadline
        ? a.priority.deadline < b.priority.deadline
        : a.seq < b.seq,
  );

  constructor(
    private readonly configuredRate: number,
    private readonly clock: Clock,
  ) {
    this.rate = configuredRate;
    this.tokens = this.burst;
    this.lastRefill = clock.now();
    this.lastRecover = clock.now();
  }

  get backlog(): number {
    return this.queue.size;
  }

  get currentRate(): number {
    return this.rate;
  }

  private get burst(): number {
    return Math.max(1, 5 * this.configuredRate);
  }

  /** Resolves when the call may go out. */
  acquire(priority: CallPriority): Promise<void> {
    return new Promise((resolve) => {
      this.queue.push({ priority, seq: this.seq++, start: resolve });
      this.drain();
    });
  }

  /**
   * The homeserver said 429: slow down. Calls already in flight when the first 429 came back are answered the same
   * way, so the rate is halved at most once per second: one burst is one signal, not one halving per answer.
   */
  throttle(): void {
    const now = this.clock.now();
    this.refill(now);
    if (now - this.lastThrottle >= THROTTLE_SETTLE_MS) this.rate = Math.max(this.configuredRate * MIN_RATE_FRACTION, this.rate / 2);
    this.tokens = Math.min(this.tokens, 1);
    this.lastThrottle = now;
    this.lastRecover = now;
  }

  /** Estimated wait (ms) for a new refresh-class call, for admission control. */
  estimatedWaitMs(): number {
    return (this.queue.size / this.rate) * 1000;
  }

  private refill(now: number): void {
    if (this.rate < this.configuredRate && now - this.lastThrottle >= QUIET_PERIOD_MS && now - this.lastRecover >= QUIET_PERIOD_MS) {
      this.rate = Math.min(this.configuredRate, this.rate * 2);
      this.lastRecover = now;
    }
    const elapsed = Math.max(0, now - this.lastRefill) / 1000;
    this.tokens = Math.min(this.burst, this.tokens + elapsed * this.rate);
    this.lastRefill = now;
  }

  private drain(): void {
    const now = this.clock.now();
    this.refill(now);
    while (this.queue.size > 0 && this.tokens >= 1) {
      this.tokens -= 1;
      this.queue.pop()!.start();
    }
    if (this.queue.size > 0 && this.timer === null) {
      const waitMs = Math.max(1, Math.ceil(((1 - this.tokens) / this.rate) * 1000));
      this.timer = this.clock.setTimeout(() => {
        this.timer = null;
        this.drain();
      }, waitMs);
    }
  }

  /** Stops the timer and lets every waiting call go, so nothing waits forever on a closed limiter. */
  close(): void {
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    for (let w = this.queue.pop(); w; w = this.queue.pop()) w.start();
  }
}
