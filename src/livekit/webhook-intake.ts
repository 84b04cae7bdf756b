import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { DelegationEngine } from '../delegations/engine.js';
import type { Store, WebhookRecord } from '../store/store.js';

/** How long an event id is remembered, and how old an event may be before it is ignored as stale. */
export const DEDUPE_WINDOW_MS = 10 * 60_000;

/**
 * Durable intake of verified webhooks: records arriving in the same event-loop turn are committed together
 * (group commit), each request is answered only once its record is durable, and records are then applied to the
 * delegations strictly in arrival order. Records left unprocessed by a crash are applied again at start-up.
 */
export class WebhookIntake {
  private batch: Array<{ rec: WebhookRecord; resolve: (isNew: boolean) => void; reject: (err: unknown) => void }> = [];
  private flushScheduled = false;
  private processing: Promise<void> = Promise.resolve();
  private pruneAt = 0;

  constructor(
    private readonly deps: { store: Store; engine: DelegationEngine; clock: Clock; logger: Logger },
  ) {}

  /** Resolves true for a new event, false for a duplicate, once the record is durable; rejects if it is not. */
  record(rec: WebhookRecord): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.batch.push({ rec, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  /** Applies a recorded event after its acknowledgement. */
  enqueue(rec: WebhookRecord): void {
    this.processing = this.processing.then(() => this.apply(rec));
  }

  /** Re-applies records a previous process acknowledged but did not finish. */
  async recover(): Promise<number> {
    const pending = await this.deps.store.pendingWebhooks();
    for (const rec of pending) this.enqueue(rec);
    await this.processing;
    return pending.length;
  }

  /** Resolves when every enqueued record has been applied. */
  idle(): Promise<void> {
    return this.processing;
  }

  private async flush(): Promise<void> {
    this.flushScheduled = false;
    const batch = this.batch;
    this.batch = [];
    try {
      const fresh = await this.deps.store.recordWebhooks(batch.map((b) => b.rec));
      batch.forEach((b, i) => b.resolve(fresh[i] ?? false));
    } catch (err) {
      this.deps.logger.error({ err }, 'could not record webhooks');
      for (const b of batch) b.reject(err);
    }
    const now = this.deps.clock.now();
    if (now >= this.pruneAt) {
      this.pruneAt = now + 60_000;
      await this.deps.store.pruneWebhooks(now - DEDUPE_WINDOW_MS - 60_000).catch((err) => this.deps.logger.warn({ err }, 'could not prune webhook records'));
    }
  }

  private async apply(rec: WebhookRecord): Promise<void> {
    try {
      await this.deps.engine.processWebhook(rec);
      await this.deps.store.markWebhooksProcessed([rec.id]);
    } catch (err) {
      // Left unprocessed in the store: the next start-up applies it again.
      this.deps.logger.error({ err, event_id: rec.id }, 'could not apply a webhook');
    }
  }
}
