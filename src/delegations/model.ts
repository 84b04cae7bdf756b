import { createHash } from 'node:crypto';

export type Dialect = 'futures' | 'delayed_events';
export const DIALECTS: readonly Dialect[] = ['futures', 'delayed_events'];

export type DelegationState =
  | 'awaiting_join'
  | 'connected'
  | 'grace'
  | 'firing'
  | 'fired'
  | 'revoked'
  | 'invalidated'
  | 'expired'
  | 'failed';

export const DELEGATION_STATES: readonly DelegationState[] = [
  'awaiting_join',
  'connected',
  'grace',
  'firing',
  'fired',
  'revoked',
  'invalidated',
  'expired',
  'failed',
];

const TERMINAL_STATES: ReadonlySet<DelegationState> = new Set(['fired', 'revoked', 'invalidated', 'expired', 'failed']);
/** States in which the future is kept alive on the homeserver. */
export const REFRESHING_STATES: ReadonlySet<DelegationState> = new Set(['awaiting_join', 'connected', 'grace']);

export function isTerminal(state: DelegationState): boolean {
  return TERMINAL_STATES.has(state);
}

export type ActionKind = 'leave' | 'connection_lost';

/** What the participant's departure means, after classification of LiveKit's disconnect reason. */
export type Departure = 'leave' | 'connection_lost' | 'continues';
export const ACTION_KINDS: readonly ActionKind[] = ['leave', 'connection_lost'];

/**
 * The route a delegation arrived through: our own API (`/v1/delegations`), or one of lk-jwt-service's:
 * `compat` = `/delegate_delayed_leave`, `get_token` = `/get_token`, `sfu_get` = `/sfu/get` (delay fields),
 * `appservice` = MSC4195's `delegate_delayed_leave` proxied by the homeserver (either path).
 */
export type DelegationSource = 'api' | 'compat' | 'get_token' | 'sfu_get' | 'appservice';

/** The path each source names, as the admin API and the console show it. */
export const SOURCE_ROUTES: Readonly<Record<DelegationSource, string>> = {
  api: '/v1/delegations',
  compat: '/delegate_delayed_leave',
  get_token: '/get_token',
  sfu_get: '/sfu/get',
  appservice: '/_matrix/client/v1/rtc/livekit/delegate_delayed_leave',
};

/**
 * A delegation as the scheduler holds it. Secrets (the future token / delay id, an access token) are deliberately
 * not part of it: they stay in the store and are read only when a homeserver call needs them.
 */
export interface Delegation {
  id: string;
  dialect: Dialect;
  /** Homeserver base URL, normalised (no trailing slash). */
  homeserver: string;
  room: string;
  identity: string;
  /** A second identity that also counts as this participant (Element Call's legacy `<user>:<device>`). */
  altIdentity: string | null;
  /** Second room for the legacy identity form. */
  altRoom: string | null;
  /** The LiveKit session (participant sid) this delegation is bound to, when known. */
  sid: string | null;
  actions: { leave: string; connection_lost: string };
  timeoutMs: number;
  state: DelegationState;
  source: DelegationSource;
  createdAt: number;
  updatedAt: number;
  /** When the future would fire on the homeserver by itself: last 2xx refresh send time + timeout. */
  expiresAt: number;
  lastRefreshAt: number | null;
  nextRefreshAt: number | null;
  refreshFailures: number;
  joinDeadline: number | null;
  graceDeadline: number | null;
  /** When the participant was seen to go (webhook receipt or reconcile), for the disconnect-to-action histogram. */
  disconnectedAt: number | null;
  pendingAction: ActionKind | null;
  nextActionAt: number | null;
  actionFailures: number;
  /** Final outcome of a terminal delegation: `sent`, `already_finalised`, or an errcode / reason. */
  outcome: string | null;
  /**
   * The Matrix user whose delayed event this is, when its calls are made as that user (application-service mode:
   * our as_token with `user_id=`); absent for standalone delegations, whose calls carry no identity.
   */
  owner?: string;
}

export interface DelegationSecrets {
  token: string;
  accessToken: string | null;
}

/** Lifecycle changes as the watch stream and logs name them. */
export type LifecycleChange =
  | 'registered'
  | 'connected'
  | 'refreshed'
  | 'grace'
  | 'fired'
  | 'invalidated'
  | 'expired'
  | 'failed'
  | 'revoked';

/** The fields that say who a delegation's participant is, in a delegation or a registration request. */
export interface ParticipantNames {
  room: string;
  identity: string;
  altIdentity?: string | null;
  altRoom?: string | null;
}

/**
 * Every (room, identity) that counts as the delegation's participant: its own, and Element Call's legacy
 * `<user>:<device>` identity, in the legacy room when there is one.
 */
export function participantKeysOf(d: ParticipantNames): Array<{ room: string; identity: string }> {
  const keys = [{ room: d.room, identity: d.identity }];
  if (d.altIdentity) keys.push({ room: d.altRoom ?? d.room, identity: d.altIdentity });
  return keys;
}

/** A lifecycle change of one delegation, as the watch stream carries it. */
export interface LifecycleEvent {
  type: LifecycleChange;
  delegation_id: string;
  state: DelegationState;
  at: number;
  outcome?: string;
}

/** Stable idempotency key for (dialect, homeserver, token) that does not reveal the token. */
export function tokenKeyOf(dialect: Dialect, homeserver: string, token: string): string {
  return createHash('sha256').update(`${dialect}\u0000${homeserver}\u0000${token}`).digest('hex');
}
