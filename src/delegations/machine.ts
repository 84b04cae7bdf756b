/**
 * The delegation lifecycle as a pure function: (delegation, event, context) -> (delegation', effects, changes).
 * No I/O, no timers: the engine feeds it events and the current time and carries out what it returns.
 */
import {
  REFRESHING_STATES,
  isTerminal,
  type ActionKind,
  type Delegation,
  type DelegationState,
  type Departure,
  type LifecycleChange,
} from './model.js';
import type { HomeserverOutcome } from '../homeserver/outcome.js';

export interface MachineSettings {
  reconnectGraceMs: number;
  joinTimeoutMs: number;
  /** Fraction of the timeout after which to refresh (SIDECAR_REFRESH_AT); the bound for short timeouts. */
  refreshAt: number;
  /**
   * The `time_left` policy (SIDECAR_REFRESH_MARGIN_MS): refresh when this much time is left before the expiry, the
   * homeserver outage a delegation survives; null is the `fraction` policy (refreshAt alone).
   */
  refreshMarginMs: number | null;
}

export interface MachineContext {
  now: number;
  settings: MachineSettings;
  /** Uniform in [0, 1); injected so tests are deterministic. */
  random: () => number;
}

export type DelegationEvent =
  | { type: 'joined'; sid: string }
  | { type: 'departed'; sid: string | null; departure: Departure; at: number }
  | { type: 'room_finished'; at: number }
  | { type: 'tick'; busy: { refresh: boolean; action: boolean } }
  | { type: 'refresh_result'; outcome: HomeserverOutcome }
  | { type: 'action_result'; outcome: HomeserverOutcome }
  | { type: 'revoke' };

export type Effect = { type: 'refresh' } | { type: 'action'; action: ActionKind };

export interface Transition {
  delegation: Delegation;
  effects: Effect[];
  changes: LifecycleChange[];
  /** Why the state changed, for the log line (never a secret). */
  reason?: string;
}

const BACKOFF_BASE_MS = 1_000;
const BACKOFF_CAP_MS = 60_000;
const MIN_RETRY_MS = 250;

/** A new delegation: its first refresh is due at once. */
export function registerDelegation(
  init: Omit<
    Delegation,
    | 'state'
    | 'updatedAt'
    | 'expiresAt'
    | 'lastRefreshAt'
    | 'nextRefreshAt'
    | 'refreshFailures'
    | 'joinDeadline'
    | 'graceDeadline'
    | 'disconnectedAt'
    | 'pendingAction'
    | 'nextActionAt'
    | 'actionFailures'
    | 'outcome'
  >,
  ctx: MachineContext,
  connectedSid: string | null,
): Transition {
  const d: Delegation = {
    ...init,
    sid: connectedSid,
    state: connectedSid ? 'connected' : 'awaiting_join',
    updatedAt: ctx.now,
    expiresAt: init.createdAt + init.timeoutMs,
    lastRefreshAt: null,
    nextRefreshAt: ctx.now,
    refreshFailures: 0,
    joinDeadline: connectedSid ? null : ctx.now + ctx.settings.joinTimeoutMs,
    graceDeadline: null,
    disconnectedAt: null,
    pendingAction: null,
    nextActionAt: null,
    actionFailures: 0,
    outcome: null,
  };
  return { delegation: d, effects: [], changes: connectedSid ? ['registered', 'connected'] : ['registered'] };
}

export function transition(d: Delegation, event: DelegationEvent, ctx: MachineContext): Transition {
  switch (event.type) {
    case 'joined':
      return onJoined(d, event.sid, ctx);
    case 'departed':
      return onDeparted(d, event, ctx);
    case 'room_finished':
      if (d.sid === null || (d.state !== 'connected' && d.state !== 'grace')) return unchanged(d);
      return onDeparted(d, { type: 'departed', sid: d.sid, departure: 'connection_lost', at: event.at }, ctx);
    case 'tick':
      return onTick(d, event.busy, ctx);
    case 'refresh_result':
      return onRefreshResult(d, event.outcome, ctx);
    case 'action_result':
      return onActionResult(d, event.outcome, ctx);
    case 'revoke':
      if (isTerminal(d.state)) return unchanged(d);
      return finish(d, 'revoked', 'revoked', ctx, 'revoked by the participant or an admin');
  }
}

/**
 * The earliest time at which a `tick` could change something, or null when nothing is pending. A refresh or action
 * that was started (its next time cleared) but is no longer in flight is due at once: its answer was never recorded
 * (a crash, a store outage), so it has to be made again.
 */
export function nextDueAt(d: Delegation, busy: { refresh: boolean; action: boolean } = { refresh: false, action: false }): number | null {
  if (isTerminal(d.state)) return null;
  let due = Infinity;
  if (d.state === 'firing') {
    if (d.nextActionAt !== null) due = Math.min(due, d.nextActionAt);
    else if (!busy.action) due = 0;
    if (d.actionFailures > 0) due = Math.min(due, d.expiresAt);
    return due === Infinity ? null : due;
  }
  if (d.nextRefreshAt !== null) due = Math.min(due, d.nextRefreshAt);
  else if (!busy.refresh) due = 0;
  due = Math.min(due, d.expiresAt);
  if (d.state === 'awaiting_join' && d.joinDeadline !== null) due = Math.min(due, d.joinDeadline);
  if (d.state === 'grace' && d.graceDeadline !== null) due = Math.min(due, d.graceDeadline);
  return due;
}

function onJoined(d: Delegation, sid: string, ctx: MachineContext): Transition {
  if (d.state === 'awaiting_join' || d.state === 'grace') {
    const next = { ...d, state: 'connected' as const, sid, joinDeadline: null, graceDeadline: null, disconnectedAt: null, updatedAt: ctx.now };
    return { delegation: next, effects: [], changes: ['connected'], reason: d.state === 'grace' ? 'rejoined within the grace' : 'joined' };
  }
  if (d.state === 'connected' && d.sid !== sid) {
    // A new session of the same identity replaces the old one (duplicate identity, joined seen before the old left).
    return { delegation: { ...d, sid, updatedAt: ctx.now }, effects: [], changes: [], reason: 'rebound to a new session' };
  }
  return unchanged(d);
}

function onDeparted(d: Delegation, event: Extract<DelegationEvent, { type: 'departed' }>, ctx: MachineContext): Transition {
  if (!REFRESHING_STATES.has(d.state)) return unchanged(d);
  if (d.sid !== null && event.sid !== null && d.sid !== event.sid) return unchanged(d);
  if (d.state === 'grace' && event.departure === 'connection_lost') return unchanged(d);
  switch (event.departure) {
    case 'leave':
      return startFiring(d, 'leave', event.at, ctx, 'left on purpose');
    case 'connection_lost':
      return {
        delegation: {
          ...d,
          state: 'grace',
          graceDeadline: event.at + ctx.settings.reconnectGraceMs,
          disconnectedAt: event.at,
          updatedAt: ctx.now,
        },
        effects: [],
        changes: ['grace'],
        reason: 'connection lost, waiting for a reconnect',
      };
    case 'continues':
      return {
        delegation: {
          ...d,
          state: 'awaiting_join',
          sid: null,
          joinDeadline: ctx.now + ctx.settings.joinTimeoutMs,
          graceDeadline: null,
          disconnectedAt: null,
          updatedAt: ctx.now,
        },
        effects: [],
        changes: [],
        reason: 'session replaced (migration or duplicate identity), waiting for the new one',
      };
  }
}

function onTick(d: Delegation, busy: { refresh: boolean; action: boolean }, ctx: MachineContext): Transition {
  const now = ctx.now;
  if (isTerminal(d.state)) return unchanged(d);
  if (d.state === 'firing') {
    if (busy.action) return unchanged(d);
    if (d.actionFailures > 0 && now >= d.expiresAt) {
      return finish(d, 'expired', 'expired', ctx, 'the homeserver was unreachable until the future expired; its timeout fired');
    }
    if ((d.nextActionAt === null || d.nextActionAt <= now) && d.pendingAction) {
      return { delegation: { ...d, nextActionAt: null }, effects: [{ type: 'action', action: d.pendingAction }], changes: [] };
    }
    return unchanged(d);
  }
  if (d.state === 'awaiting_join' && d.joinDeadline !== null && d.joinDeadline <= now) {
    return startFiring(d, 'connection_lost', d.joinDeadline, ctx, 'never joined before the join deadline');
  }
  if (d.state === 'grace' && d.graceDeadline !== null && d.graceDeadline <= now) {
    return startFiring(d, 'connection_lost', d.disconnectedAt ?? d.graceDeadline, ctx, 'did not reconnect within the grace');
  }
  if (!busy.refresh && now >= d.expiresAt) {
    return finish(d, 'expired', 'expired', ctx, 'not refreshed before the future expired');
  }
  if (!busy.refresh && (d.nextRefreshAt === null || d.nextRefreshAt <= now)) {
    return { delegation: { ...d, nextRefreshAt: null }, effects: [{ type: 'refresh' }], changes: [] };
  }
  return unchanged(d);
}

function onRefreshResult(d: Delegation, outcome: HomeserverOutcome, ctx: MachineContext): Transition {
  const now = ctx.now;
  if (outcome.kind === 'ok') {
    const expiresAt = Math.max(d.expiresAt, outcome.sentAt + d.timeoutMs);
    const base: Delegation = { ...d, expiresAt, lastRefreshAt: outcome.sentAt, refreshFailures: 0, updatedAt: now };
    if (!REFRESHING_STATES.has(d.state)) return { delegation: base, effects: [], changes: [] };
    // The phase may be shared after the first refresh, after retries, or after a refresh held past its point (a
    // restart, a backlog): see refreshDelay.
    const spread = d.lastRefreshAt === null || d.refreshFailures > 0 || outcome.sentAt - d.lastRefreshAt > steadyRefreshIntervalMs(d.timeoutMs, ctx.settings) + LATE_MS_PER_TIMEOUT_MS * d.timeoutMs;
    return { delegation: { ...base, nextRefreshAt: outcome.sentAt + refreshDelay(d.timeoutMs, ctx, spread) }, effects: [], changes: ['refreshed'] };
  }
  if (!REFRESHING_STATES.has(d.state)) return unchanged(d);
  switch (outcome.kind) {
    case 'finalised':
      return finish(d, 'invalidated', 'invalidated', ctx, `the homeserver no longer knows the token (${outcome.detail})`, outcome.detail);
    case 'permanent':
      return finish(d, 'failed', 'failed', ctx, `refresh refused (${outcome.detail})`, outcome.detail);
    case 'retry': {
      const failures = d.refreshFailures + 1;
      if (now >= d.expiresAt) return finish(d, 'expired', 'expired', ctx, 'not refreshed before the future expired', outcome.detail);
      const next = now + retryDelay(failures, d.expiresAt - now, outcome.retryAfterMs, ctx);
      return { delegation: { ...d, refreshFailures: failures, nextRefreshAt: next, updatedAt: now }, effects: [], changes: [], reason: `refresh will be retried (${outcome.detail})` };
    }
  }
}

function onActionResult(d: Delegation, outcome: HomeserverOutcome, ctx: MachineContext): Transition {
  const now = ctx.now;
  if (d.state !== 'firing') return unchanged(d);
  switch (outcome.kind) {
    case 'ok':
      return finish(d, 'fired', 'fired', ctx, `${d.pendingAction} sent`, 'sent');
    case 'finalised':
      return finish(d, 'fired', 'fired', ctx, `${d.pendingAction} already finalised (${outcome.detail})`, 'already_finalised');
    case 'permanent':
      return finish(d, 'failed', 'failed', ctx, `${d.pendingAction} refused (${outcome.detail})`, outcome.detail);
    case 'retry': {
      const failures = d.actionFailures + 1;
      if (now >= d.expiresAt) return finish(d, 'expired', 'expired', ctx, 'the homeserver was unreachable until the future expired; its timeout fired', outcome.detail);
      const next = now + retryDelay(failures, d.expiresAt - now, outcome.retryAfterMs, ctx);
      return { delegation: { ...d, actionFailures: failures, nextActionAt: next, updatedAt: now }, effects: [], changes: [], reason: `action will be retried (${outcome.detail})` };
    }
  }
}

function startFiring(d: Delegation, action: ActionKind, disconnectedAt: number, ctx: MachineContext, reason: string): Transition {
  return {
    delegation: {
      ...d,
      state: 'firing',
      pendingAction: action,
      nextActionAt: ctx.now,
      nextRefreshAt: null,
      joinDeadline: null,
      graceDeadline: null,
      disconnectedAt: d.disconnectedAt ?? disconnectedAt,
      updatedAt: ctx.now,
    },
    effects: [],
    changes: [],
    reason,
  };
}

function finish(
  d: Delegation,
  state: DelegationState,
  change: LifecycleChange,
  ctx: MachineContext,
  reason: string,
  outcome: string | null = null,
): Transition {
  return {
    delegation: {
      ...d,
      state,
      outcome: outcome ?? (state === 'revoked' ? 'revoked' : null),
      nextRefreshAt: null,
      nextActionAt: null,
      joinDeadline: null,
      graceDeadline: null,
      updatedAt: ctx.now,
    },
    effects: [],
    changes: [change],
    reason,
  };
}

function unchanged(d: Delegation): Transition {
  return { delegation: d, effects: [], changes: [] };
}

/**
 * Time from a successful refresh to the next one. Under the `time_left` policy the next refresh comes when
 * `refreshMarginMs` is left before the expiry, as long as that is later than the fraction's point (short timeouts
 * keep the fraction, so they are never refreshed more often than under it). `spread` draws the point up to 10 % of
 * the timeout earlier (but not before the fraction's point), never later: the engine asks for it when the phase may be shared with other delegations (the
 * first refresh after registration, the first success after retries, e.g. once a homeserver is back), so that
 * futures registered or recovered together fall due apart; later refreshes keep their own phase, so the steady rate
 * is one call per (timeout - margin). Under the `fraction` policy every point is drawn from
 * [refreshAt - 0.1, refreshAt] of the timeout.
 */
export function refreshDelay(timeoutMs: number, ctx: MachineContext, spread = true): number {
  const interval = marginInterval(timeoutMs, ctx.settings);
  if (interval === null) return fractionDelay(timeoutMs, ctx);
  // Never earlier than the fraction's point: the spread is what lies between it and the margin's, at most 10 %.
  const room = Math.min(MARGIN_SPREAD * timeoutMs, interval - ctx.settings.refreshAt * timeoutMs);
  return Math.round(spread ? interval - room * ctx.random() : interval);
}

/** A refresh sent later than its steady point by more than this share of the timeout was held (see onRefreshResult). */
const LATE_MS_PER_TIMEOUT_MS = 0.01;

/** The share of a timeout over which the `time_left` policy spreads the refreshes that may share a phase. */
const MARGIN_SPREAD = 0.1;

/** Time from a success to the next refresh under the `time_left` policy, or null when the fraction bounds it. */
function marginInterval(timeoutMs: number, settings: MachineSettings): number | null {
  if (settings.refreshMarginMs === null) return null;
  const interval = timeoutMs - settings.refreshMarginMs;
  return interval >= settings.refreshAt * timeoutMs ? interval : null;
}

function fractionDelay(timeoutMs: number, ctx: MachineContext): number {
  const hi = ctx.settings.refreshAt;
  const lo = Math.max(0.05, hi - 0.1);
  return Math.round(timeoutMs * (lo + (hi - lo) * ctx.random()));
}

/** The mean time between two refreshes of one delegation in steady state, as admission control counts it. */
export function steadyRefreshIntervalMs(timeoutMs: number, settings: MachineSettings): number {
  return marginInterval(timeoutMs, settings) ?? Math.max(0.05, settings.refreshAt - 0.05) * timeoutMs;
}

/**
 * Exponential backoff with jitter (1 s doubling to 60 s, drawn from [50 %, 100 %]), never later than halfway to
 * the expiry so that the last attempts still land before it; a homeserver's retry-after wins when it asks for longer.
 */
export function retryDelay(failures: number, msToExpiry: number, retryAfterMs: number | undefined, ctx: MachineContext): number {
  const exp = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 16));
  const jittered = exp * (0.5 + 0.5 * ctx.random());
  const bounded = Math.min(jittered, Math.max(MIN_RETRY_MS, msToExpiry / 2));
  return Math.round(Math.max(bounded, retryAfterMs ?? 0));
}
