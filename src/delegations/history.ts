import type { DelegationState } from './model.js';

/** One line of a delegation's history, for the operator console (never a secret). */
export interface HistoryEntry {
  at: number;
  what: string;
  state: DelegationState;
}

export interface HistoryLimits {
  /** Lines kept per delegation (the oldest go first). */
  perDelegation: number;
  /** Delegations whose history is kept (the oldest are forgotten first). */
  delegations: number;
  /** Estimated bytes of all histories together: participants choose some of the text (action names). */
  bytes: number;
}

export const DEFAULT_HISTORY_LIMITS: HistoryLimits = { perDelegation: 50, delegations: 20_000, bytes: 32 * 1024 * 1024 };

/** A line longer than this is cut: no single line may take a large part of the budget. */
const MAX_LINE_CHARS = 512;
/** V8's cost of an entry object and its array slot, and of a delegation's map entry, id and array. */
const ENTRY_OVERHEAD_BYTES = 64;
const DELEGATION_OVERHEAD_BYTES = 160;

/**
 * What happened to recent delegations, in memory, bounded by lines per delegation, by delegations and by bytes
 * (string lengths counted at two bytes a character, so the estimate is never below what V8 holds).
 */
export class HistoryStore {
  private readonly byId = new Map<string, { entries: HistoryEntry[]; bytes: number }>();
  /**
   * The ids of `byId` in insertion order from `head` on, so the oldest is found without iterating the Map: V8
   * walks past every entry deleted at a Map's front on each `entries().next()`, which made an add that evicts cost
   * several microseconds (one per webhook once 20,000 delegations have a history).
   */
  private order: string[] = [];
  private head = 0;
  private total = 0;

  constructor(private readonly limits: HistoryLimits = DEFAULT_HISTORY_LIMITS) {}

  get size(): number {
    return this.byId.size;
  }

  get bytes(): number {
    return this.total;
  }

  /** Oldest first. */
  get(id: string): HistoryEntry[] {
    return [...(this.byId.get(id)?.entries ?? [])];
  }

  /** Adds a line (cut to `MAX_LINE_CHARS`) and returns it as kept. */
  add(id: string, at: number, what: string, state: DelegationState): HistoryEntry {
    const line = what.length > MAX_LINE_CHARS ? `${what.slice(0, MAX_LINE_CHARS)}...` : what;
    let h = this.byId.get(id);
    if (!h) {
      this.byId.set(id, (h = { entries: [], bytes: DELEGATION_OVERHEAD_BYTES + id.length * 2 }));
      this.order.push(id);
      this.total += h.bytes;
    }
    const cost = ENTRY_OVERHEAD_BYTES + line.length * 2;
    const entry = { at, what: line, state };
    h.entries.push(entry);
    h.bytes += cost;
    this.total += cost;
    while (h.entries.length > this.limits.perDelegation) {
      const dropped = ENTRY_OVERHEAD_BYTES + h.entries.shift()!.what.length * 2;
      h.bytes -= dropped;
      this.total -= dropped;
    }
    while (this.byId.size > 1 && (this.byId.size > this.limits.delegations || this.total > this.limits.bytes)) {
      const oldest = this.order[this.head]!;
      if (oldest === id) break;
      this.head++;
      this.total -= this.byId.get(oldest)!.bytes;
      this.byId.delete(oldest);
    }
    if (this.head > 1024 && this.head * 2 > this.order.length) {
      this.order = this.order.slice(this.head);
      this.head = 0;
    }
    return entry;
  }
}
