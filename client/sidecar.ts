import { SidecarApiError, SidecarUnreachableError, UnexpectedResponseError } from './errors.js';
import type { Dialect } from './homeserver.js';
import { NetworkFailure, Transport, segment, trimBaseUrl, type HttpAnswer, type HttpRequest, type TransportOptions } from './transport.js';

/** A delegation's lifecycle state, as the sidecar reports it. */
export type DelegationState = 'awaiting_join' | 'connected' | 'grace' | 'firing' | 'fired' | 'revoked' | 'invalidated' | 'expired' | 'failed';

/** States after which the sidecar does nothing more for a delegation. */
export const TERMINAL_DELEGATION_STATES: ReadonlySet<DelegationState> = new Set(['fired', 'revoked', 'invalidated', 'expired', 'failed']);

/** What to hand over: the future's handle plus its timeout, as `POST /v1/delegations` takes them. */
export interface DelegationRequest {
  /** The homeserver's client-server API base URL (as the sidecar should call it). */
  homeserver: string;
  dialect: Dialect;
  /** The `future_token` or `delay_id`. */
  token: string;
  /** The future's timeout (futures) or delay (delayed events), in milliseconds. */
  timeoutMs: number;
  /** Futures only: the action names to fire; the sidecar defaults to `leave` and `connection_lost`. */
  actions?: { leave?: string; connection_lost?: string };
  /**
   * Delayed events only: an access token the sidecar sends with its calls. Optional (Synapse does not require one
   * for delayed-event management) and a full credential, so share it only when the homeserver insists.
   */
  accessToken?: string;
}

/** The sidecar's answer to a delegation. */
export interface DelegationSummary {
  delegationId: string;
  state: DelegationState;
  /** LiveKit room and identity from the access token the delegation was made with. */
  room: string;
  identity: string;
  /** When the future would fire by itself if nobody refreshed it again (ms since the epoch). */
  expiresAt: number;
}

/** A delegation as `GET` / `DELETE /v1/delegations/{id}` show it (never its token). */
export interface DelegationDetails extends DelegationSummary {
  dialect: Dialect;
  createdAt: number;
  nextRefreshAt: number | null;
  /** `leave` or `connection_lost` once the sidecar decided which action to fire. */
  pendingAction: 'leave' | 'connection_lost' | null;
  /** For a terminal delegation: `sent`, `already_finalised`, `revoked`, or an error code. */
  outcome: string | null;
}

export interface DelegationResult {
  delegation: DelegationSummary;
  /** False when the same token had been delegated before by this participant (the sidecar answered 200). */
  created: boolean;
}

export interface SidecarClientOptions extends TransportOptions {
  /** The sidecar's base URL, e.g. `https://sfu.example.org/futures-sidecar`. */
  baseUrl: string;
  /**
   * The participant's LiveKit access token (its `sub` and `video.room` bind the delegation), or a function that
   * returns the current one (LiveKit tokens are short-lived and get replaced).
   */
  liveKitToken: string | (() => string | Promise<string>);
}

/**
 * One participant's client for the sidecar's delegation API.
 *
 * @example
 * ```ts
 * const sidecar = new SidecarClient({ baseUrl: 'https://sfu.example.org/futures-sidecar', liveKitToken });
 * const { delegation } = await sidecar.delegate({ homeserver: hs.baseUrl, ...future.handle, timeoutMs });
 * await sidecar.revoke(delegation.delegationId);
 * ```
 */
export class SidecarClient {
  readonly baseUrl: string;
  private readonly liveKitToken: SidecarClientOptions['liveKitToken'];
  private readonly http: Transport;

  constructor(opts: SidecarClientOptions) {
    this.baseUrl = trimBaseUrl(opts.baseUrl);
    this.liveKitToken = opts.liveKitToken;
    this.http = new Transport(opts);
  }

  /**
   * `POST /v1/delegations`. Safe to repeat: the same token again by the same participant returns the existing
   * delegation (`created: false`), whatever its state.
   *
   * @throws {@link SidecarUnreachableError} when the sidecar cannot be reached or is unavailable.
   * @throws {@link SidecarApiError} when it refuses (403 another participant's token, 400 timeout out of range, ...).
   */
  async delegate(req: DelegationRequest, signal?: AbortSignal): Promise<DelegationResult> {
    if (req.dialect === 'delayed_events' && req.actions !== undefined) throw new TypeError('actions are only for the futures dialect');
    if (req.dialect === 'futures' && req.accessToken !== undefined) throw new TypeError('accessToken is only for the delayed_events dialect');
    if (!Number.isInteger(req.timeoutMs) || req.timeoutMs <= 0) throw new RangeError('timeoutMs must be a positive whole number of milliseconds');
    const body: Record<string, unknown> = { homeserver: req.homeserver, dialect: req.dialect, token: req.token, timeout_ms: req.timeoutMs };
    if (req.actions !== undefined) body['actions'] = req.actions;
    if (req.accessToken !== undefined) body['access_token'] = req.accessToken;
    const answer = await this.call('delegate', { method: 'POST', url: `${this.baseUrl}/v1/delegations`, body, idempotent: true, ...withSignal(signal) });
    return { delegation: summaryFrom('delegate', answer.body), created: answer.status === 201 };
  }

  /** `GET /v1/delegations/{id}`: its state, expiry, pending action and outcome. */
  async get(delegationId: string, signal?: AbortSignal): Promise<DelegationDetails> {
    const answer = await this.call('get delegation', { method: 'GET', url: `${this.baseUrl}/v1/delegations/${segment(delegationId)}`, idempotent: true, ...withSignal(signal) });
    return detailsFrom('get delegation', answer.body);
  }

  /**
   * `DELETE /v1/delegations/{id}`: the sidecar stops refreshing and fires nothing; the future itself stays on the
   * homeserver. Repeating it is harmless (a terminal delegation is returned as it is).
   */
  async revoke(delegationId: string, signal?: AbortSignal): Promise<DelegationDetails> {
    const answer = await this.call('revoke delegation', { method: 'DELETE', url: `${this.baseUrl}/v1/delegations/${segment(delegationId)}`, idempotent: true, ...withSignal(signal) });
    return detailsFrom('revoke delegation', answer.body);
  }

  private async call(what: string, req: HttpRequest): Promise<HttpAnswer> {
    const token = typeof this.liveKitToken === 'function' ? await this.liveKitToken() : this.liveKitToken;
    let answer: HttpAnswer;
    try {
      answer = await this.http.send({ ...req, headers: { ...req.headers, authorization: `Bearer ${token}` } });
    } catch (err) {
      if (err instanceof NetworkFailure) throw new SidecarUnreachableError(what, err.reason);
      throw err;
    }
    if (answer.status === 502 || answer.status === 503 || answer.status === 504) {
      throw new SidecarUnreachableError(what, answer.body, answer.status);
    }
    if (answer.status < 200 || answer.status >= 300) {
      throw new SidecarApiError(what, answer.status, answer.errcode, answer.error, answer.body, answer.retryAfterMs);
    }
    return answer;
  }
}

const STATES = new Set<string>(['awaiting_join', 'connected', 'grace', 'firing', 'fired', 'revoked', 'invalidated', 'expired', 'failed']);

function summaryFrom(what: string, body: unknown): DelegationSummary {
  const o = objectOf(what, body);
  return {
    delegationId: field(what, o, 'delegation_id', isString),
    state: field(what, o, 'state', (v): v is DelegationState => typeof v === 'string' && STATES.has(v)),
    room: field(what, o, 'room', isString),
    identity: field(what, o, 'identity', isString),
    expiresAt: field(what, o, 'expires_at', isNumber),
  };
}

function detailsFrom(what: string, body: unknown): DelegationDetails {
  const o = objectOf(what, body);
  return {
    ...summaryFrom(what, body),
    dialect: field(what, o, 'dialect', (v): v is Dialect => v === 'futures' || v === 'delayed_events'),
    createdAt: field(what, o, 'created_at', isNumber),
    nextRefreshAt: field(what, o, 'next_refresh_at', (v): v is number | null => v === null || isNumber(v)),
    pendingAction: field(what, o, 'pending_action', (v): v is 'leave' | 'connection_lost' | null => v === null || v === 'leave' || v === 'connection_lost'),
    outcome: field(what, o, 'outcome', (v): v is string | null => v === null || isString(v)),
  };
}

function objectOf(what: string, body: unknown): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new UnexpectedResponseError(what, 'the body is not a JSON object', body);
  return body as Record<string, unknown>;
}

function field<T>(what: string, o: Record<string, unknown>, key: string, ok: (v: unknown) => v is T): T {
  const v = o[key];
  if (!ok(v)) throw new UnexpectedResponseError(what, `field ${key} is missing or has the wrong type`, o);
  return v;
}

function isString(v: unknown): v is string {
  return typeof v === 'string';
}

function isNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function withSignal(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal ? { signal } : {};
}
