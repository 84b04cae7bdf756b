import { describe, expect, it } from 'vitest';
import { nextDueAt, retryDelay, steadyRefreshIntervalMs, transition, type DelegationEvent, type MachineContext } from '../../src/delegations/machine.js';
import type { Delegation, DelegationState } from '../../src/delegations/model.js';
import { aDelegation } from '../helpers/delegation.js';

const settings = { reconnectGraceMs: 10_000, joinTimeoutMs: 300_000, refreshAt: 0.5, refreshMarginMs: null };
const T0 = 1_000_000;
const TIMEOUT = 7_200_000;

function ctx(now: number, random = 0.5): MachineContext {
  return { now, settings, random: () => random };
}

function fresh(sid: string | null = null): Delegation {
  return aDelegation({ timeoutMs: TIMEOUT, createdAt: T0 }, { sid, ctx: ctx(T0) });
}

function inState(state: DelegationState): Delegation {
  const base = fresh('S1');
  switch (state) {
    case 'awaiting_join':
      return fresh(null);
    case 'connected':
      return base;
    case 'grace':
      return transition(base, { type: 'departed', sid: 'S1', departure: 'connection_lost', at: T0 }, ctx(T0)).delegation;
    case 'firing':
      return transition(base, { type: 'departed', sid: 'S1', departure: 'leave', at: T0 }, ctx(T0)).delegation;
    default:
      return { ...base, state, nextRefreshAt: null };
  }
}

const idle = { refresh: false, action: false };

describe('registration', () => {
  it('starts awaiting its join with the first refresh due at once', () => {
    const d = fresh();
    expect(d.state).toBe('awaiting_join');
    expect(d.nextRefreshAt).toBe(T0);
    expect(d.joinDeadline).toBe(T0 + settings.joinTimeoutMs);
    expect(d.expiresAt).toBe(T0 + TIMEOUT);
    expect(nextDueAt(d)).toBe(T0);
  });

  it('starts connected when the participant is already present', () => {
    const d = fresh('S1');
    expect(d.state).toBe('connected');
    expect(d.sid).toBe('S1');
    expect(d.joinDeadline).toBeNull();
  });
});

describe('departures', () => {
  it('fires leave at once for an intentional leave', () => {
    const t = transition(inState('connected'), { type: 'departed', sid: 'S1', departure: 'leave', at: T0 + 5 }, ctx(T0 + 5));
    expect(t.delegation.state).toBe('firing');
    expect(t.delegation.pendingAction).toBe('leave');
    expect(t.delegation.nextActionAt).toBe(T0 + 5);
    expect(t.delegation.disconnectedAt).toBe(T0 + 5);
  });

  it('waits the reconnect grace after a lost connection, measured from receipt', () => {
    const t = transition(inState('connected'), { type: 'departed', sid: 'S1', departure: 'connection_lost', at: T0 + 100 }, ctx(T0 + 200));
    expect(t.delegation.state).toBe('grace');
    expect(t.delegation.graceDeadline).toBe(T0 + 100 + settings.reconnectGraceMs);
    expect(t.changes).toEqual(['grace']);
  });

  it('fires connection_lost when the grace runs out', () => {
    const g = inState('grace');
    const t = transition(g, { type: 'tick', busy: idle }, ctx(g.graceDeadline!));
    expect(t.delegation.state).toBe('firing');
    expect(t.delegation.pendingAction).toBe('connection_lost');
  });

  it('cancels the grace when the identity joins again', () => {
    const t = transition(inState('grace'), { type: 'joined', sid: 'S2' }, ctx(T0 + 3000));
    expect(t.delegation.state).toBe('connected');
    expect(t.delegation.sid).toBe('S2');
    expect(t.delegation.graceDeadline).toBeNull();
  });

  it('waits for the next session after a migration or duplicate identity, with a new join deadline', () => {
    const t = transition(inState('connected'), { type: 'departed', sid: 'S1', departure: 'continues', at: T0 + 50 }, ctx(T0 + 50));
    expect(t.delegation.state).toBe('awaiting_join');
    expect(t.delegation.sid).toBeNull();
    expect(t.delegation.joinDeadline).toBe(T0 + 50 + settings.joinTimeoutMs);
    expect(t.delegation.pendingAction).toBeNull();
  });

  it('ignores the departure of another session', () => {
    const c = inState('connected');
    const t = transition(c, { type: 'departed', sid: 'OTHER', departure: 'leave', at: T0 }, ctx(T0));
    expect(t.delegation).toBe(c);
  });

  it('fires connection_lost when the participant never joins before the deadline', () => {
    const d = fresh();
    const t = transition(d, { type: 'tick', busy: idle }, ctx(d.joinDeadline!));
    expect(t.delegation.state).toBe('firing');
    expect(t.delegation.pendingAction).toBe('connection_lost');
  });

  it('treats room_finished as a lost connection for a bound session and leaves unjoined delegations alone', () => {
    expect(transition(inState('connected'), { type: 'room_finished', at: T0 }, ctx(T0)).delegation.state).toBe('grace');
    const waiting = fresh();
    expect(transition(waiting, { type: 'room_finished', at: T0 }, ctx(T0)).delegation).toBe(waiting);
  });
});

describe('refreshing', () => {
  it('emits a refresh when due and schedules the next one within [0.4, 0.5] of the timeout after success', () => {
    const d = inState('connected');
    const t = transition(d, { type: 'tick', busy: idle }, ctx(T0));
    expect(t.effects).toEqual([{ type: 'refresh' }]);
    for (const random of [0, 0.5, 0.999]) {
      const r = transition(t.delegation, { type: 'refresh_result', outcome: { kind: 'ok', sentAt: T0 + 10 } }, ctx(T0 + 20, random));
      expect(r.delegation.expiresAt).toBe(T0 + 10 + TIMEOUT);
      expect(r.delegation.nextRefreshAt! - (T0 + 10)).toBeGreaterThanOrEqual(0.4 * TIMEOUT);
      expect(r.delegation.nextRefreshAt! - (T0 + 10)).toBeLessThanOrEqual(0.5 * TIMEOUT);
      expect(r.changes).toEqual(['refreshed']);
    }
  });

  describe('by the time left before the expiry (time_left policy, 24 min margin)', () => {
    const MARGIN = 24 * 60_000;
    const marginCtx = (now: number, random = 0.5): MachineContext => ({ now, settings: { ...settings, refreshMarginMs: MARGIN }, random: () => random });
    const succeed = (d: Delegation, sentAt: number, random = 0.5): Delegation => {
      const due = transition(d, { type: 'tick', busy: idle }, marginCtx(sentAt, random));
      expect(due.effects).toEqual([{ type: 'refresh' }]);
      return transition(due.delegation, { type: 'refresh_result', outcome: { kind: 'ok', sentAt } }, marginCtx(sentAt + 5, random)).delegation;
    };

    it('spreads the first refresh after registration over the tenth of the timeout before the margin', () => {
      const first = (random: number) => succeed(inState('connected'), T0, random).nextRefreshAt! - T0;
      expect(first(0)).toBe(TIMEOUT - MARGIN);
      expect(first(0.999)).toBeGreaterThanOrEqual(TIMEOUT - MARGIN - 0.1 * TIMEOUT);
      expect(first(0.999)).toBeLessThan(first(0.5));
    });

    it('then keeps its phase: each on-time refresh comes when the margin is left, whatever the randomness', () => {
      let d = succeed(inState('connected'), T0, 0.7);
      for (const random of [0, 0.3, 0.999]) {
        const sentAt = d.nextRefreshAt!;
        d = succeed(d, sentAt, random);
        expect(d.nextRefreshAt! - sentAt).toBe(TIMEOUT - MARGIN);
        expect(d.expiresAt - d.nextRefreshAt!).toBe(MARGIN);
      }
    });

    it('spreads again after retries and after a refresh held well past its point', () => {
      const steady = succeed(succeed(inState('connected'), T0, 0), T0 + TIMEOUT - MARGIN);
      const sentAt = steady.nextRefreshAt!;
      const retried = transition(transition(steady, { type: 'tick', busy: idle }, marginCtx(sentAt)).delegation, { type: 'refresh_result', outcome: { kind: 'retry', detail: 'status_503' } }, marginCtx(sentAt + 5)).delegation;
      const later = sentAt + 60_000;
      expect(succeed(retried, later, 0.999).nextRefreshAt! - later).toBeLessThan(TIMEOUT - MARGIN - 0.09 * TIMEOUT);
      const held = sentAt + 0.02 * TIMEOUT;
      expect(succeed(steady, held, 0.999).nextRefreshAt! - held).toBeLessThan(TIMEOUT - MARGIN - 0.09 * TIMEOUT);
      expect(succeed(steady, sentAt + 1_000, 0.999).nextRefreshAt! - (sentAt + 1_000)).toBe(TIMEOUT - MARGIN);
    });

    it('keeps the fraction for timeouts too short for the margin (never refreshing more often than under it)', () => {
      const short = { ...inState('connected'), timeoutMs: 30 * 60_000, expiresAt: T0 + 30 * 60_000 };
      for (const random of [0, 0.999]) {
        const next = succeed(short, T0, random).nextRefreshAt! - T0;
        expect(next).toBeGreaterThanOrEqual(0.4 * 30 * 60_000);
        expect(next).toBeLessThanOrEqual(0.5 * 30 * 60_000);
      }
    });

    it('counts the steady rate admission control charges by the same policy', () => {
      expect(steadyRefreshIntervalMs(TIMEOUT, { ...settings, refreshMarginMs: MARGIN })).toBe(TIMEOUT - MARGIN);
      expect(steadyRefreshIntervalMs(TIMEOUT, settings)).toBe(0.45 * TIMEOUT);
      expect(steadyRefreshIntervalMs(30 * 60_000, { ...settings, refreshMarginMs: MARGIN })).toBe(0.45 * 30 * 60_000);
    });
  });

  it('does not start a second refresh while one is in flight', () => {
    const d = inState('connected');
    expect(transition(d, { type: 'tick', busy: { refresh: true, action: false } }, ctx(T0)).effects).toEqual([]);
  });

  it('invalidates on a finalised token and fails on a permanent error', () => {
    const d = inState('connected');
    expect(transition(d, { type: 'refresh_result', outcome: { kind: 'finalised', detail: '404' } }, ctx(T0)).delegation.state).toBe('invalidated');
    expect(transition(d, { type: 'refresh_result', outcome: { kind: 'permanent', detail: 'M_FORBIDDEN' } }, ctx(T0)).delegation.state).toBe('failed');
  });

  it('retries transient failures with backoff before the expiry and expires after it', () => {
    const d = inState('connected');
    const r = transition(d, { type: 'refresh_result', outcome: { kind: 'retry', detail: 'status_503' } }, ctx(T0 + 1000));
    expect(r.delegation.state).toBe('connected');
    expect(r.delegation.refreshFailures).toBe(1);
    expect(r.delegation.nextRefreshAt).toBeGreaterThan(T0 + 1000);
    expect(r.delegation.nextRefreshAt!).toBeLessThan(d.expiresAt);
    const late = transition(d, { type: 'refresh_result', outcome: { kind: 'retry', detail: 'status_503' } }, ctx(d.expiresAt));
    expect(late.delegation.state).toBe('expired');
  });

  it('honours a homeserver retry-after', () => {
    const d = inState('connected');
    const r = transition(d, { type: 'refresh_result', outcome: { kind: 'retry', detail: 'rate_limited', retryAfterMs: 30_000 } }, ctx(T0));
    expect(r.delegation.nextRefreshAt).toBe(T0 + 30_000);
  });

  it('keeps the expiry of a refresh that lands after firing started, without scheduling another', () => {
    const f = inState('firing');
    const r = transition(f, { type: 'refresh_result', outcome: { kind: 'ok', sentAt: T0 + 5 } }, ctx(T0 + 6));
    expect(r.delegation.state).toBe('firing');
    expect(r.delegation.expiresAt).toBe(T0 + 5 + TIMEOUT);
    expect(r.delegation.nextRefreshAt).toBeNull();
  });
});

describe('actions', () => {
  it('sends the pending action once and records the outcome', () => {
    const f = inState('firing');
    const t = transition(f, { type: 'tick', busy: idle }, ctx(T0));
    expect(t.effects).toEqual([{ type: 'action', action: 'leave' }]);
    expect(transition(t.delegation, { type: 'tick', busy: { refresh: false, action: true } }, ctx(T0)).effects).toEqual([]);
    const done = transition(t.delegation, { type: 'action_result', outcome: { kind: 'ok', sentAt: T0 } }, ctx(T0 + 1));
    expect(done.delegation.state).toBe('fired');
    expect(done.delegation.outcome).toBe('sent');
    expect(done.changes).toEqual(['fired']);
  });

  it('counts an already finalised token as fired', () => {
    const r = transition(inState('firing'), { type: 'action_result', outcome: { kind: 'finalised', detail: '409' } }, ctx(T0));
    expect(r.delegation.state).toBe('fired');
    expect(r.delegation.outcome).toBe('already_finalised');
  });

  it('retries a failed action until the expiry, then gives up as expired', () => {
    const f = inState('firing');
    const r = transition(f, { type: 'action_result', outcome: { kind: 'retry', detail: 'network_error' } }, ctx(T0 + 1));
    expect(r.delegation.state).toBe('firing');
    expect(r.delegation.nextActionAt).toBeGreaterThan(T0 + 1);
    const e = transition(r.delegation, { type: 'tick', busy: idle }, ctx(f.expiresAt));
    expect(e.delegation.state).toBe('expired');
  });
});

describe('revocation and terminal states', () => {
  it('revokes any open delegation without an effect', () => {
    for (const s of ['awaiting_join', 'connected', 'grace', 'firing'] as const) {
      const t = transition(inState(s), { type: 'revoke' }, ctx(T0));
      expect(t.delegation.state).toBe('revoked');
      expect(t.effects).toEqual([]);
    }
  });

  const events: DelegationEvent[] = [
    { type: 'joined', sid: 'S9' },
    { type: 'departed', sid: 'S1', departure: 'leave', at: T0 },
    { type: 'room_finished', at: T0 },
    { type: 'tick', busy: idle },
    { type: 'refresh_result', outcome: { kind: 'finalised', detail: '404' } },
    { type: 'action_result', outcome: { kind: 'ok', sentAt: T0 } },
    { type: 'revoke' },
  ];
  for (const s of ['fired', 'revoked', 'invalidated', 'expired', 'failed'] as const) {
    it(`changes nothing once ${s}`, () => {
      const d = inState(s);
      for (const e of events) {
        const t = transition(d, e, ctx(T0 + 10 * TIMEOUT));
        expect(t.delegation.state).toBe(s);
        expect(t.effects).toEqual([]);
      }
      expect(nextDueAt(d)).toBeNull();
    });
  }
});

describe('retryDelay', () => {
  it('grows exponentially, is capped, and never waits past half the time left', () => {
    const c = ctx(0, 1);
    expect(retryDelay(1, 1e9, undefined, c)).toBe(1000);
    expect(retryDelay(3, 1e9, undefined, c)).toBe(4000);
    expect(retryDelay(20, 1e9, undefined, c)).toBe(60_000);
    expect(retryDelay(20, 10_000, undefined, c)).toBe(5000);
    expect(retryDelay(1, 100, undefined, c)).toBe(250);
  });
});
