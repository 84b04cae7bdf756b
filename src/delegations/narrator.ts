import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { CallResult } from '../homeserver/client.js';
import { describeOutcome, type HomeserverOutcome } from '../homeserver/outcome.js';
import { RollingCount } from '../lib/rolling-count.js';
import type { Metrics } from '../metrics.js';
import { HistoryStore, type HistoryEntry } from './history.js';
import type { HistoryJournal } from './history-journal.js';
import type { Effect } from './machine.js';
import { isTerminal, type Delegation, type Dialect, type LifecycleChange, type LifecycleEvent } from './model.js';

/**
 * Tells everyone who watches what happened to a delegation, in one place: its history for the console, one log line
 * per state change, lifecycle events for the watch stream, metrics, and the rolling counts of the console's totals.
 * Decides nothing.
 */
export class Narrator {
  readonly history: HistoryStore;
  private readonly listeners = new Set<(e: LifecycleEvent) => void>();
  private readonly refreshesLastMinute = new RollingCount();
  private readonly actionsLastMinute = new RollingCount();

  /**
   * The state-change line's own logger, without the redaction pass: its fields (ids, states, reasons, outcomes) carry
   * no secret by construction, and at one line per webhook the wildcard paths' pass was a visible share of intake.
   */
  private readonly stateLog: Logger;

  constructor(private readonly deps: { clock: Clock; logger: Logger; metrics: Metrics; history?: HistoryStore; journal?: HistoryJournal }) {
    this.history = deps.history ?? new HistoryStore();
    this.stateLog = deps.logger.child({}, { redact: [] });
  }

  onLifecycle(listener: (e: LifecycleEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** What happened to a delegation, oldest first. */
  historyOf(id: string): HistoryEntry[] {
    return this.history.get(id);
  }

  note(d: Delegation, what: string): void {
    const entry = this.history.add(d.id, this.deps.clock.now(), what, d.state);
    this.deps.journal?.add(d.id, entry);
  }

  registration(dialect: Dialect, outcome: 'created' | 'existing' | 'forbidden' | 'limited' | 'overloaded'): void {
    this.deps.metrics.registered.inc({ dialect, outcome });
  }

  /** A transition the store took: its history line (if `what` is given), log line, lifecycle events and metrics. */
  changed(before: Delegation | null, after: Delegation, changes: LifecycleChange[], reason: string, what?: string): void {
    if (what !== undefined) this.note(after, what);
    if (!before || before.state !== after.state) {
      this.stateLog.info(
        { delegation_id: after.id, from: before?.state ?? null, state: after.state, reason, ...(after.outcome ? { outcome: after.outcome } : {}) },
        'delegation state changed',
      );
    }
    for (const type of changes) {
      this.deps.metrics.lifecycle.inc({ change: type });
      const e: LifecycleEvent = { type, delegation_id: after.id, state: after.state, at: this.deps.clock.now(), ...(after.outcome && isTerminal(after.state) ? { outcome: after.outcome } : {}) };
      for (const l of this.listeners) l(e);
    }
  }

  /** A homeserver call answered; `latest` is the delegation as it is now (for the disconnect-to-action time). */
  answered(d: Delegation, effect: Effect, result: CallResult, latest: Delegation | undefined): void {
    const now = this.deps.clock.now();
    const { outcome } = result;
    if (effect.type === 'refresh') {
      this.deps.metrics.refreshes.inc({ outcome: outcomeLabel(outcome) });
      this.refreshesLastMinute.add(now);
      this.note(d, `refresh answered: ${describeOutcome(outcome)}${result.accessTokenRejected ? ' (access token refused, continuing without it)' : ''}`);
      return;
    }
    const { action } = effect;
    this.actionsLastMinute.add(now);
    this.note(d, `${action} (${d.dialect === 'futures' ? d.actions[action] : 'send'}) answered: ${describeOutcome(outcome)}`);
    this.deps.metrics.actions.inc({ action, outcome: outcome.kind === 'ok' ? 'sent' : outcome.kind === 'finalised' ? 'already_finalised' : outcomeLabel(outcome) });
    if ((outcome.kind === 'ok' || outcome.kind === 'finalised') && latest?.disconnectedAt != null) {
      this.deps.metrics.disconnectToAction.observe({ action }, Math.max(0, now - latest.disconnectedAt) / 1000);
    }
  }

  /** A state change LiveKit's RoomService found that the webhooks had not told. */
  correction(kind: 'joined' | 'rejoined' | 'rebound' | 'lost'): void {
    this.deps.metrics.reconcileCorrections.inc({ kind });
  }

  refreshesInLastMinute(): number {
    return this.refreshesLastMinute.total(this.deps.clock.now());
  }

  actionsInLastMinute(): number {
    return this.actionsLastMinute.total(this.deps.clock.now());
  }
}

function outcomeLabel(outcome: HomeserverOutcome): string {
  return { ok: 'ok', finalised: 'finalised', retry: 'retry', permanent: 'failed' }[outcome.kind];
}
