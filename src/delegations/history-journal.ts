import type { Logger } from 'pino';
import type { HistoryLine, Store } from '../store/store.js';
import type { HistoryEntry } from './history.js';

/**
 * Writes history lines to the store (issue 18: the console and the admin API show a delegation's history after a
 * restart or a takeover): the lines of one event-loop turn in one write, in order (each store applies its calls in
 * the order made; SQLite holds lines back briefly to write them with the next commit, so writes are not awaited one
 * by one). A history line is an account, not state: a write that fails is logged and dropped, never retried against
 * a state change.
 */
export class HistoryJournal {
  private pending: HistoryLine[] = [];
  private scheduled = false;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly deps: { store: Pick<Store, 'appendHistory'>; perDelegation: number; logger: Logger }) {}

  add(id: string, entry: HistoryEntry): void {
    this.pending.push({ id, entry });
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => void this.flush());
  }

  /** Resolves once every line added so far is written (or its write failed). */
  flush(): Promise<void> {
    this.scheduled = false;
    const batch = this.pending;
    if (batch.length > 0) {
      this.pending = [];
      const written = this.deps.store.appendHistory(batch, this.deps.perDelegation).catch((err: Error) => this.deps.logger.warn({ err: { message: err.message }, lines: batch.length }, 'writing history lines failed; they are kept in memory only'));
      this.chain = Promise.all([this.chain, written]).then(() => undefined);
    }
    return this.chain;
  }
}
