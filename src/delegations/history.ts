import type { DelegationState } from './model.js';

/** One line of a delegation's history, for the operator console (never a secret). */
export interface HistoryEntry {
  at: number;
  what: string;
  state: DelegationState;
}

/** Per delegation, and how many delegations' histories are kept (the oldest are forgotten first). */
const HISTORY_ENTRIES = 50;
const HISTORY_DELEGATIONS = 20_000;

/** What happened to recent delegations, in memory and bounded. */
export class DelegationHistory {
  private readonly histories = new Map<string, HistoryEntry[]>();

  add(id: string, entry: HistoryEntry): void {
    let h = this.histories.get(id);
    if (!h) {
      if (this.histories.size >= HISTORY_DELEGATIONS) this.histories.delete(this.histories.keys().next().value!);
      this.histories.set(id, (h = []));
    }
    h.push(entry);
    if (h.length > HISTORY_ENTRIES) h.splice(0, h.length - HISTORY_ENTRIES);
  }

  /** Oldest first. */
  of(id: string): HistoryEntry[] {
    return [...(this.histories.get(id) ?? [])];
  }
}
