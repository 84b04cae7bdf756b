import type { Logger } from 'pino';
import { sleep, type Clock } from '../clock.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { GroupCommit } from '../lib/group-commit.js';
import type { AppliedWebhooks, FeedMessage, Store, WebhookRecord } from '../store/store.js';

/** How long an event id is remembered, and how old an event may be before it is ignored as stale. */
export const DEDUPE_WINDOW_MS = 10 * 60_000;

/**
 * Durable intake of verified webhooks: records arriving in the same event-loop turn are committed together
 * (group commit), each request is answered only once its record is durable, and records are applied to the
 * delegations strictly in arrival order. Where this process applies what it records (a single node), each new
 * record's state change rides in the record's own commit, so an acknowledged webhook is already applied; records a
 * crash left unprocessed otherwise (an older version's journal) are applied again at start-up.
 */
export class WebhookIntake {
  private readonly records = new GroupCommit<WebhookRecord, boolean>((recs) => this.commit(recs));
  private processing: Promise<void> = Promise.resolve();
  private readonly started = new Set<Promise<void>>();
  private pruneAt = 0;
  private stopping = false;

  constructor(
    private readonly deps: {
      store: Store;
      engine: DelegationEngine;
      clock: Clock;
      logger: Logger;
      /**
       * Bookkeeping of applied records when this process applies what it records (`Topology.applied`); null when
       * every replica applies records from the shared stream instead.
       */
      applied: AppliedWebhooks | null;
    },
  ) {}

  /**
   * Resolves true for a new event, false for a duplicate, once the record is durable; rejects if it is not. A new
   * event is applied by this process (in the same commit) or by the owner of its delegations (from the stream).
   */
  record(rec: WebhookRecord): Promise<boolean> {
    return this.records.submit(rec);
  }

  /**
   * Applies a recorded event. Started at once, in arrival order: the engine makes each record's in-memory changes
   * before its first await, so order holds while the writes of many records share a commit. `replayed`: recorded
   * by an earlier process, so time has passed that the record's receive time does not show.
   */
  private enqueue(rec: WebhookRecord, applied: AppliedWebhooks, replayed: boolean): void {
    this.track(this.apply(rec, applied, replayed));
  }

  private track(work: Promise<void>): void {
    const done: Promise<void> = work.finally(() => this.started.delete(done));
    this.started.add(done);
  }

  /** Applies a message of the replicated store's stream, in stream order. */
  enqueueFeed(m: FeedMessage): Promise<void> {
    this.processing = this.processing.then(() => (m.kind === 'webhook' ? this.apply(m.record, null) : this.applyControl(m)));
    return this.processing;
  }

  /** Stop retrying: records not yet applied stay recorded for the next start (or the next owner). */
  stop(): void {
    this.stopping = true;
  }

  /** Re-applies records a previous process acknowledged but did not finish. */
  async recover(): Promise<number> {
    const applied = this.deps.applied;
    if (!applied) return 0;
    const pending = await applied.pendingWebhooks();
    for (const rec of pending) this.enqueue(rec, applied, true);
    await this.idle();
    return pending.length;
  }

  /** Resolves when every enqueued record has been applied. */
  async idle(): Promise<void> {
    await Promise.all([this.processing, ...this.started]);
  }

  private async commit(recs: WebhookRecord[]): Promise<boolean[]> {
    try {
      const applied = this.deps.applied;
      const fresh = applied ? await this.recordApplying(recs, applied) : await this.deps.store.recordWebhooks(recs);
      return recs.map((_, i) => fresh[i] ?? false);
    } catch (err) {
      this.deps.logger.error({ err }, 'could not record webhooks');
      throw err;
    } finally {
      void this.pruneIfDue();
    }
  }

  private async pruneIfDue(): Promise<void> {
    const now = this.deps.clock.now();
    if (!this.deps.applied || now < this.pruneAt) return;
    this.pruneAt = now + 60_000;
    await this.deps.applied.pruneWebhooks(now - DEDUPE_WINDOW_MS - 60_000).catch((err) => this.deps.logger.warn({ err }, 'could not prune webhook records'));
  }

  /**
   * Records and applies in one commit. An apply that failed (its commit did, or something after it) is retried like
   * any other even when the webhook was refused: presence already holds the event, so LiveKit's retry of it would
   * change nothing.
   */
  private async recordApplying(recs: WebhookRecord[], applied: AppliedWebhooks): Promise<boolean[]> {
    const applying: Array<{ rec: WebhookRecord; done: Promise<void> }> = [];
    const start = (rec: WebhookRecord): void => {
      const done = this.deps.engine.processWebhook(rec);
      done.catch(() => undefined);
      applying.push({ rec, done });
    };
    try {
      return await applied.recordApplying(recs, start);
    } finally {
      for (const { rec, done } of applying) this.track(done.catch((err: unknown) => this.retry(rec, err)));
    }
  }

  /** Applies a record; `applied`, when the record's bookkeeping is this process's, learns that it was. */
  private async apply(rec: WebhookRecord, applied: AppliedWebhooks | null, replayed = false): Promise<void> {
    try {
      await this.deps.engine.processWebhook(rec, replayed);
    } catch (err) {
      await this.retry(rec, err);
      if (this.stopping) return;
    }
    if (!applied) return;
    try {
      await applied.markWebhooksProcessed([rec.id]);
    } catch (err) {
      // Applying twice is harmless: the record is applied again at the next start.
      this.deps.logger.warn({ err: { message: (err as Error).message }, event_id: rec.id }, 'could not mark a webhook processed');
    }
  }

  private async retry(rec: WebhookRecord, err: unknown): Promise<void> {
    this.deps.logger.error({ err: { message: (err as Error).message }, event_id: rec.id }, 'could not apply a webhook; retrying');
    // Presence already holds the event, so a retry catches the participant's delegations up from it.
    for (let attempt = 1; !this.stopping; attempt++) {
      await sleep(this.deps.clock, Math.min(5_000, 250 * 2 ** attempt));
      try {
        await this.deps.engine.catchUpFor(rec);
        break;
      } catch (retryErr) {
        if (attempt % 10 === 0) this.deps.logger.error({ err: { message: (retryErr as Error).message }, event_id: rec.id }, 'still cannot apply a webhook');
      }
    }
  }

  private async applyControl(m: Exclude<FeedMessage, { kind: 'webhook' }>): Promise<void> {
    try {
      await this.deps.engine.onFeed(m);
    } catch (err) {
      this.deps.logger.error({ err: { message: (err as Error).message }, delegation_id: m.id }, `could not apply a ${m.kind} message`);
    }
  }
}
