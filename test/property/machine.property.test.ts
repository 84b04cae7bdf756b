import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  nextDueAt,
  transition,
  type DelegationEvent,
  type MachineContext,
  type MachineSettings,
  type Transition,
} from '../../src/delegations/machine.js';
import { REFRESHING_STATES, isTerminal, type Delegation, type Departure } from '../../src/delegations/model.js';
import type { HomeserverOutcome } from '../../src/homeserver/outcome.js';
import { aDelegation } from '../helpers/delegation.js';
import { fcParams, seededRandom } from './support.js';

/**
 * The pure state machine against random event sequences, driven by a caller that behaves like the engine: an
 * effect is outstanding until its result is fed back, and `busy` says so (plus, at random, more than that).
 */

type OutcomeKind = HomeserverOutcome['kind'];

interface OutcomeChoice {
  kind: OutcomeKind;
  retryAfterMs: number | null;
  /** Where in [emitted, now] the call left, for `sentAt` of an ok. */
  sentFraction: number;
}

type Step =
  | { kind: 'advance'; ms: number }
  | { kind: 'advance_to_due' }
  | { kind: 'joined'; sid: string }
  | { kind: 'departed'; sid: string | null; departure: Departure; lateMs: number }
  | { kind: 'room_finished'; lateMs: number }
  | { kind: 'tick'; extraBusy: { refresh: boolean; action: boolean } }
  | { kind: 'refresh_result'; outcome: OutcomeChoice }
  | { kind: 'action_result'; outcome: OutcomeChoice }
  | { kind: 'revoke' };

interface Scenario {
  settings: MachineSettings;
  timeoutMs: number;
  connectedAtStart: boolean;
  seed: number;
  steps: Step[];
}

const SIDS = ['S0', 'S1', 'S2'];

const outcomeArb = (weights: Record<OutcomeKind, number>): fc.Arbitrary<OutcomeChoice> =>
  fc.record({
    kind: fc.oneof(...(Object.entries(weights) as Array<[OutcomeKind, number]>).map(([kind, weight]) => ({ weight, arbitrary: fc.constant(kind) }))),
    retryAfterMs: fc.option(fc.integer({ min: 0, max: 120_000 }), { nil: null }),
    sentFraction: fc.double({ min: 0, max: 1, noNaN: true }),
  });

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ kind: fc.constant('advance' as const), ms: fc.oneof(fc.integer({ min: 0, max: 2_000 }), fc.integer({ min: 0, max: 700_000 })) }) },
  { weight: 12, arbitrary: fc.constant({ kind: 'advance_to_due' as const }) },
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('joined' as const), sid: fc.constantFrom(...SIDS) }) },
  {
    weight: 9,
    arbitrary: fc.record({
      kind: fc.constant('departed' as const),
      sid: fc.option(fc.constantFrom(...SIDS), { nil: null }),
      departure: fc.constantFrom<Departure>('leave', 'connection_lost', 'continues'),
      lateMs: fc.integer({ min: 0, max: 5_000 }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('room_finished' as const), lateMs: fc.integer({ min: 0, max: 5_000 }) }) },
  { weight: 9, arbitrary: fc.record({ kind: fc.constant('tick' as const), extraBusy: fc.record({ refresh: fc.boolean(), action: fc.boolean() }) }) },
  { weight: 9, arbitrary: fc.record({ kind: fc.constant('refresh_result' as const), outcome: outcomeArb({ ok: 6, retry: 3, finalised: 1, permanent: 1 }) }) },
  { weight: 9, arbitrary: fc.record({ kind: fc.constant('action_result' as const), outcome: outcomeArb({ ok: 3, retry: 3, finalised: 1, permanent: 1 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'revoke' as const }) },
);

const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  settings: fc.record({
    reconnectGraceMs: fc.integer({ min: 0, max: 30_000 }),
    joinTimeoutMs: fc.integer({ min: 1_000, max: 300_000 }),
    refreshAt: fc.double({ min: 0.05, max: 0.9, noNaN: true }),
    // Both policies: the fraction alone, and margins below, near and above the timeouts drawn.
    refreshMarginMs: fc.option(fc.integer({ min: 1_000, max: 900_000 }), { nil: null }),
  }),
  timeoutMs: fc.integer({ min: 1_000, max: 600_000 }),
  connectedAtStart: fc.boolean(),
  seed: fc.integer(),
  steps: fc.array(stepArb, { minLength: 1, maxLength: 80 }),
});

const T0 = 1_700_000_000_000;

interface Outstanding {
  emittedAt: number;
}

/** What the caller knows, and what has happened so far that later transitions must respect. */
class Caller {
  d: Delegation;
  now = T0;
  readonly refreshes: Outstanding[] = [];
  readonly actions: Outstanding[] = [];
  revoked = false;
  /** An action result ok / finalised was fed back: the action is done for good. */
  actionSettled = false;
  /** The latest participant event was a join that came while the delegation was still refreshing (not firing). */
  joinHolds = false;
  actionEffects = 0;
  readonly problems: string[] = [];
  private readonly random: () => number;

  constructor(
    readonly s: Scenario,
    /** Tick with the caller's true busy flags OR'ed with random ones (true), or with random flags only (false). */
    readonly honest: boolean,
  ) {
    this.random = seededRandom(s.seed);
    this.d = aDelegation({ id: 'dg_prop', timeoutMs: s.timeoutMs, createdAt: T0 }, { ctx: this.ctx(), sid: s.connectedAtStart ? 'S0' : null });
    this.joinHolds = s.connectedAtStart;
  }

  ctx(): MachineContext {
    return { now: this.now, settings: this.s.settings, random: this.random };
  }

  busy(extra: { refresh: boolean; action: boolean }): { refresh: boolean; action: boolean } {
    if (!this.honest) return extra;
    return { refresh: this.refreshes.length > 0 || extra.refresh, action: this.actions.length > 0 || extra.action };
  }

  outcome(choice: OutcomeChoice, pending: Outstanding): HomeserverOutcome {
    switch (choice.kind) {
      case 'ok':
        return { kind: 'ok', sentAt: pending.emittedAt + Math.floor(choice.sentFraction * (this.now - pending.emittedAt)) };
      case 'finalised':
        return { kind: 'finalised', detail: '404_M_NOT_FOUND' };
      case 'retry':
        return choice.retryAfterMs === null ? { kind: 'retry', detail: 'status_502' } : { kind: 'retry', detail: 'rate_limited', retryAfterMs: choice.retryAfterMs };
      case 'permanent':
        return { kind: 'permanent', detail: 'M_FORBIDDEN' };
    }
  }

  step(step: Step): void {
    switch (step.kind) {
      case 'advance':
        this.now += step.ms;
        return;
      case 'advance_to_due': {
        const due = nextDueAt(this.d);
        if (due !== null) this.now = Math.max(this.now, due);
        this.apply({ type: 'tick', busy: this.busy({ refresh: false, action: false }) });
        return;
      }
      case 'joined': {
        const live = REFRESHING_STATES.has(this.d.state);
        this.apply({ type: 'joined', sid: step.sid });
        if (live && this.d.state !== 'connected') this.problems.push(`a join left the delegation ${this.d.state} instead of connected`);
        this.joinHolds = live;
        return;
      }
      case 'departed':
        this.joinHolds = false;
        this.apply({ type: 'departed', sid: step.sid, departure: step.departure, at: this.now - step.lateMs });
        return;
      case 'room_finished':
        this.joinHolds = false;
        this.apply({ type: 'room_finished', at: this.now - step.lateMs });
        return;
      case 'tick':
        this.apply({ type: 'tick', busy: this.busy(step.extraBusy) });
        return;
      case 'refresh_result': {
        const pending = this.refreshes.shift();
        if (!pending) return;
        this.apply({ type: 'refresh_result', outcome: this.outcome(step.outcome, pending) });
        return;
      }
      case 'action_result': {
        const pending = this.actions.shift();
        if (!pending) return;
        const outcome = this.outcome(step.outcome, pending);
        this.apply({ type: 'action_result', outcome });
        if (outcome.kind === 'ok' || outcome.kind === 'finalised') this.actionSettled = true;
        return;
      }
      case 'revoke':
        this.apply({ type: 'revoke' });
        this.revoked = true;
        return;
    }
  }

  private apply(event: DelegationEvent): void {
    const before = this.d;
    const due = nextDueAt(before);
    const t = transition(before, event, this.ctx());
    this.check(before, event, t, due);
    this.d = t.delegation;
    for (const e of t.effects) {
      if (e.type === 'refresh') this.refreshes.push({ emittedAt: this.now });
      else {
        this.actions.push({ emittedAt: this.now });
        this.actionEffects++;
      }
    }
    if (!isTerminal(this.d.state) && this.refreshes.length === 0 && this.actions.length === 0 && nextDueAt(this.d) === null) {
      this.problem(event, `${this.d.state} with nothing outstanding has no due time: it would never move again`);
    }
  }

  /**
   * The contract's schedule (section 4): under the time_left policy the next refresh leaves at least the margin before
   * the expiry and at most the margin plus a tenth of the timeout (the spread), never sooner than the fraction's
   * point, unless the fraction bounds it (short
   * timeouts), which draws it from [refreshAt - 0.1, refreshAt] of the timeout.
   */
  private checkNextRefresh(event: DelegationEvent, sentAt: number, after: Delegation): void {
    const { refreshAt, refreshMarginMs } = this.s.settings;
    const timeout = after.timeoutMs;
    const delay = (after.nextRefreshAt ?? Infinity) - sentAt;
    const byMargin = refreshMarginMs !== null && timeout - refreshMarginMs >= refreshAt * timeout;
    const [lo, hi] = byMargin ? [Math.max(timeout - refreshMarginMs - 0.1 * timeout, refreshAt * timeout), timeout - refreshMarginMs] : [Math.max(0.05, refreshAt - 0.1) * timeout, refreshAt * timeout];
    if (delay < lo - 1 || delay > hi + 1) this.problem(event, `next refresh ${delay} ms after the success, outside [${lo}, ${hi}] (${byMargin ? 'time_left' : 'fraction'})`);
  }

  private problem(event: DelegationEvent, what: string): void {
    this.problems.push(`${what} (event ${JSON.stringify(event)}, state ${this.d.state})`);
  }

  private check(before: Delegation, event: DelegationEvent, t: Transition, dueBefore: number | null): void {
    const after = t.delegation;
    const actions = t.effects.filter((e) => e.type === 'action');
    const refreshes = t.effects.filter((e) => e.type === 'refresh');
    if (isTerminal(before.state)) {
      if (after.state !== before.state) this.problem(event, `left terminal state ${before.state} for ${after.state}`);
      if (t.effects.length > 0) this.problem(event, `effects from terminal state ${before.state}`);
      if (t.changes.length > 0) this.problem(event, `lifecycle changes from terminal state ${before.state}`);
    }
    if (after.expiresAt < before.expiresAt) this.problem(event, `expiresAt went back from ${before.expiresAt} to ${after.expiresAt}`);
    if (actions.length > 1 || refreshes.length > 1) this.problem(event, 'more than one effect of a kind in one transition');
    if (actions.length > 0) {
      if (before.state !== 'firing' || after.state !== 'firing') this.problem(event, `action effect outside firing (${before.state} -> ${after.state})`);
      if (this.revoked) this.problem(event, 'action effect after revoke');
      if (this.actionSettled) this.problem(event, 'action effect after the action was answered ok / finalised');
      if (this.joinHolds) this.problem(event, 'action effect while the latest participant event is a join that connected it');
      if (this.honest && this.actions.length > 0) this.problem(event, 'a second action effect while one is outstanding');
    }
    if (refreshes.length > 0) {
      if (!REFRESHING_STATES.has(before.state) || !REFRESHING_STATES.has(after.state)) this.problem(event, `refresh effect outside the refreshing states (${before.state} -> ${after.state})`);
      if (this.honest && this.refreshes.length > 0) this.problem(event, 'a second refresh effect while one is outstanding');
    }
    if (event.type === 'refresh_result' && event.outcome.kind === 'ok' && t.changes.includes('refreshed')) this.checkNextRefresh(event, event.outcome.sentAt, after);
    if (after.state === 'fired' && before.state !== 'fired') {
      const ok = event.type === 'action_result' && (event.outcome.kind === 'ok' || event.outcome.kind === 'finalised');
      if (!ok || this.actionEffects === 0) this.problem(event, 'fired without an answered action call');
    }
    if (event.type === 'tick' && dueBefore !== null && this.now < dueBefore && after !== before) {
      this.problem(event, `a tick before nextDueAt (${dueBefore - this.now} ms early) changed the delegation`);
    }
    if (dueBefore === null && !isTerminal(before.state) && event.type === 'tick' && after !== before) {
      this.problem(event, 'a tick changed a delegation that had no due time');
    }
  }
}

function runScenario(s: Scenario, honest: boolean): Caller {
  const caller = new Caller(s, honest);
  for (const step of s.steps) {
    caller.step(step);
    if (caller.problems.length) break;
  }
  return caller;
}

describe('the delegation state machine under random event sequences', () => {
  it('never fires twice, after revoke, or while a join holds; terminal states absorb; expiry never goes back', () => {
    fc.assert(
      fc.property(scenarioArb, (s) => {
        const caller = runScenario(s, true);
        expect(caller.problems).toEqual([]);
      }),
      fcParams({ numRuns: 3000 }),
    );
  });

  it('keeps the same guarantees when the caller reports random busy flags', () => {
    fc.assert(
      fc.property(scenarioArb, (s) => {
        const caller = runScenario(s, false);
        expect(caller.problems).toEqual([]);
      }),
      fcParams({ numRuns: 2000 }),
    );
  });

  it('reaches a terminal state once the participant is gone and every call is answered', () => {
    fc.assert(
      fc.property(scenarioArb, fc.constantFrom<Departure>('leave', 'connection_lost'), (s, departure) => {
        const caller = runScenario(s, true);
        expect(caller.problems).toEqual([]);
        caller.step({ kind: 'departed', sid: null, departure, lateMs: 0 });
        const answer: OutcomeChoice = { kind: 'ok', retryAfterMs: null, sentFraction: 1 };
        for (let i = 0; i < 5_000 && !isTerminal(caller.d.state); i++) {
          caller.step({ kind: 'refresh_result', outcome: answer });
          caller.step({ kind: 'action_result', outcome: answer });
          caller.step({ kind: 'advance_to_due' });
        }
        expect(caller.problems).toEqual([]);
        expect(isTerminal(caller.d.state)).toBe(true);
      }),
      fcParams({ numRuns: 500 }),
    );
  });
});
