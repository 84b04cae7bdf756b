import type { WebhookEventInput, WebhookSender } from '../fakes/livekit.js';
import { Prng } from './prng.js';

/**
 * LiveKit's webhook delivery as its ResourceURLNotifier does it (livekit-facts.md section 1), made lossy:
 * one FIFO queue and one worker per room; each event is POSTed with go-retryablehttp's defaults (5 attempts, waits of
 * 1, 2, 4, 8 s, retried on connection errors, 429 and 5xx, anything else counts as delivered); an event that waited
 * more than 30 s in its queue, or that finds 200 already waiting, is dropped. On top of that, each event may be lost
 * outright, sent twice with the same id (a retry whose first answer went missing), or held back: the room's queue
 * stalls 50-500 ms before it, and an event of another participant produced meanwhile goes out first (two independent
 * participants whose changes raced at the SFU). The adversarial switch also lets an event overtake one of the same
 * participant, and sends some duplicates seconds later, behind newer events: orders LiveKit does not produce.
 */
export interface ChannelStats {
  /** Events the SFU produced. */
  emitted: number;
  /** Lost on purpose (the loss rate). */
  lost: number;
  delivered: number;
  /** Second deliveries of an event id. */
  duplicated: number;
  reordered: number;
  /** Attempts after the first, because the daemon was down or answered 5xx. */
  retried: number;
  /** Dropped by LiveKit's own limits: retries exhausted, 30 s max age, 200 deep queue. */
  droppedRetries: number;
  droppedAge: number;
  droppedDepth: number;
  /** Answered with a 4xx other than 429 (LiveKit does not retry; it counts them as sent). */
  rejected: number;
}

type DeliveryStatus = 'queued' | 'delivered' | 'lost' | 'dropped' | 'rejected';

export interface Delivery {
  id: string;
  event: string;
  sid: string | null;
  status: DeliveryStatus;
  emittedAt: number;
  deliveredAt: number | null;
  attempts: number;
}

export interface Fault {
  lost: boolean;
  dup: boolean;
  swap: boolean;
}

interface Item {
  input: WebhookEventInput & { id: string };
  /** Stall of the room's queue before this event, in ms; 0 once served. */
  holdMs: number;
  identity: string;
  sid: string | null;
  enqueuedAt: number;
  dup: boolean;
  delivery: Delivery;
}

const RETRY_WAITS_MS = [1_000, 2_000, 4_000, 8_000];
const MAX_AGE_MS = 30_000;
const MAX_DEPTH = 200;

export class LiveKitChannel {
  readonly stats: ChannelStats = { emitted: 0, lost: 0, delivered: 0, duplicated: 0, reordered: 0, retried: 0, droppedRetries: 0, droppedAge: 0, droppedDepth: 0, rejected: 0 };
  private readonly queues = new Map<string, Item[]>();
  private readonly working = new Set<string>();
  private readonly late = new Set<NodeJS.Timeout>();
  private readonly idleWaiters: Array<() => void> = [];
  private closed = false;

  constructor(
    private readonly sender: WebhookSender,
    private readonly opts: { adversarial: boolean; rng: Prng },
  ) {}

  /** Queues one event of `room`; what happens to it is decided by `fault`. */
  emit(room: string, identity: string, input: WebhookEventInput & { id: string }, fault: Fault): Delivery {
    this.stats.emitted++;
    const sid = input.participant?.sid ?? null;
    const delivery: Delivery = { id: input.id, event: input.event, sid, status: 'queued', emittedAt: Date.now(), deliveredAt: null, attempts: 0 };
    if (fault.lost) {
      this.stats.lost++;
      delivery.status = 'lost';
      return delivery;
    }
    let queue = this.queues.get(room);
    if (!queue) this.queues.set(room, (queue = []));
    if (queue.length >= MAX_DEPTH) {
      this.stats.droppedDepth++;
      delivery.status = 'dropped';
      return delivery;
    }
    const item: Item = { input, identity, sid, enqueuedAt: Date.now(), dup: fault.dup, delivery, holdMs: fault.swap ? this.opts.rng.int(50, 500) : 0 };
    const last = queue[queue.length - 1];
    if (last && last.holdMs > 0 && (this.opts.adversarial || (last.identity !== identity && last.identity !== '' && identity !== ''))) {
      queue.splice(queue.length - 1, 0, item);
      this.stats.reordered++;
    } else {
      queue.push(item);
    }
    if (!this.working.has(room)) void this.work(room);
    return delivery;
  }

  /** Events still queued or in flight. */
  get backlog(): number {
    let n = this.working.size;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }

  /** Resolves once every queue is empty and no worker runs. */
  idle(): Promise<void> {
    if (this.backlog === 0 && this.late.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  close(): void {
    this.closed = true;
    for (const t of this.late) clearTimeout(t);
    this.late.clear();
    this.wakeIdle();
  }

  private async work(room: string): Promise<void> {
    this.working.add(room);
    try {
      for (;;) {
        const queue = this.queues.get(room);
        const head = queue?.[0];
        if (!queue || !head || this.closed) break;
        if (head.holdMs > 0) {
          await sleep(head.holdMs);
          head.holdMs = 0;
          continue;
        }
        queue.shift();
        await this.deliver(room, head);
      }
    } finally {
      this.working.delete(room);
      if (this.queues.get(room)?.length === 0) this.queues.delete(room);
      this.wakeIdle();
    }
  }

  private async deliver(room: string, item: Item): Promise<void> {
    if (Date.now() - item.enqueuedAt > MAX_AGE_MS) {
      this.stats.droppedAge++;
      item.delivery.status = 'dropped';
      return;
    }
    for (let attempt = 0; attempt <= RETRY_WAITS_MS.length; attempt++) {
      if (attempt > 0) {
        this.stats.retried++;
        await sleep(RETRY_WAITS_MS[attempt - 1]!);
      }
      if (this.closed) return;
      item.delivery.attempts++;
      const status = await this.post(item);
      if (status >= 200 && status < 300) {
        this.stats.delivered++;
        item.delivery.status = 'delivered';
        item.delivery.deliveredAt = Date.now();
        if (item.dup) await this.duplicate(room, item);
        return;
      }
      if (status >= 400 && status < 500 && status !== 429) {
        this.stats.rejected++;
        item.delivery.status = 'rejected';
        return;
      }
    }
    this.stats.droppedRetries++;
    item.delivery.status = 'dropped';
  }

  private async duplicate(room: string, item: Item): Promise<void> {
    this.stats.duplicated++;
    if (!this.opts.adversarial || this.opts.rng.chance(0.5)) {
      await this.post(item);
      return;
    }
    const t = setTimeout(() => {
      this.late.delete(t);
      if (this.closed) return;
      let queue = this.queues.get(room);
      if (!queue) this.queues.set(room, (queue = []));
      queue.push({ ...item, dup: false, holdMs: 0, enqueuedAt: Date.now(), delivery: { ...item.delivery } });
      if (!this.working.has(room)) void this.work(room);
    }, this.opts.rng.int(500, 5_000));
    this.late.add(t);
  }

  private async post(item: Item): Promise<number> {
    try {
      return (await this.sender.send(item.input, { id: item.input.id })).status;
    } catch {
      return 0;
    }
  }

  private wakeIdle(): void {
    if (!this.closed && (this.backlog > 0 || this.late.size > 0)) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
