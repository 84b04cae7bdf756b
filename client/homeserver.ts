import { HomeserverUnreachableError, MatrixApiError, UnexpectedResponseError } from './errors.js';
import { NetworkFailure, Transport, segment, trimBaseUrl, type HttpAnswer, type HttpRequest, type TransportOptions } from './transport.js';

/** The two homeserver APIs the sidecar speaks: the 2024-05 futures draft, and Synapse's MSC4140 delayed events. */
export type Dialect = 'futures' | 'delayed_events';

/**
 * What identifies a future on its homeserver: a `future_token` (futures) or a `delay_id` (delayed events). Its
 * fields match the sidecar's delegation body, so it can be spread into {@link SidecarClient.delegate}.
 */
export interface FutureHandle {
  dialect: Dialect;
  token: string;
}

/** One event of a future: sent now, on timeout, or on an action. `stateKey` makes it a state event. */
export interface EventTemplate {
  type: string;
  content: Record<string, unknown>;
  stateKey?: string;
}

export interface CreateFutureInput {
  roomId: string;
  /** Sent as `m.timeout` in seconds (timeoutMs / 1000). */
  timeoutMs: number;
  /** `m.send_on_timeout`: sent when nobody refreshes the future in time. */
  onTimeout: EventTemplate;
  /** `m.send_on_action:{name}` per action name, e.g. `leave` and `connection_lost`. */
  actions?: Record<string, EventTemplate>;
  /** `m.send_now`: sent at once; for a state event the future lives only while this stays the current state. */
  sendNow?: EventTemplate;
  /** Transaction id; a retry with the same id returns the same future. Random when omitted. */
  txnId?: string;
}

/** The older draft's state form: every entry is a bare content for one (event type, state key). */
export interface CreateStateFutureInput {
  roomId: string;
  eventType: string;
  stateKey: string;
  timeoutMs: number;
  onTimeout: Record<string, unknown>;
  actions?: Record<string, Record<string, unknown>>;
  sendNow?: Record<string, unknown>;
}

export interface FutureCreated {
  handle: FutureHandle & { dialect: 'futures' };
  /** Event ids the homeserver reserved, as far as it named them. */
  eventIds: { onTimeout?: string; sendNow?: string; actions: Record<string, string> };
  /** The whole answer, for fields this kit does not know. */
  response: Record<string, unknown>;
}

export interface CreateDelayedEventInput {
  roomId: string;
  eventType: string;
  content: Record<string, unknown>;
  /** `org.matrix.msc4140.delay`, in milliseconds (a whole number). */
  delayMs: number;
  /** Makes it a delayed state event (`PUT .../state/{eventType}/{stateKey}`). */
  stateKey?: string;
  /** For the send variant: a retry with the same id returns the same delayed event. Random when omitted. */
  txnId?: string;
}

export interface DelayedEventCreated {
  handle: FutureHandle & { dialect: 'delayed_events' };
}

export interface HomeserverOptions extends TransportOptions {
  /** Client-server API base URL, e.g. `https://matrix.example.org`. */
  baseUrl: string;
  /** The user's Matrix access token, for creating futures and for delayed-event management. */
  accessToken: string;
}

const CLIENT_V3 = '/_matrix/client/v3';
const DELAYED_EVENTS = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';
const DELAY_PARAM = 'org.matrix.msc4140.delay';
const ACTION_PREFIX = 'm.send_on_action:';

/**
 * A user's view of one homeserver: create futures (either form) and delayed events, and manage them (refresh,
 * actions) in both dialects, with the dialects' endpoint fallbacks remembered per instance.
 *
 * @example
 * ```ts
 * const hs = new Homeserver({ baseUrl: 'https://matrix.example.org', accessToken });
 * const { handle } = await hs.createFuture({ roomId, timeoutMs: 2 * 3600_000, onTimeout: leaveEvent, actions: { leave: leaveEvent, connection_lost: leaveEvent } });
 * await hs.refresh(handle);
 * ```
 */
export class Homeserver {
  readonly baseUrl: string;
  private readonly accessToken: string;
  private readonly http: Transport;
  /** The later futures draft moved refresh and actions from PUT to POST; learnt from a 405 / M_UNRECOGNIZED. */
  private futuresMethod: 'PUT' | 'POST' = 'PUT';
  /** Synapse before the per-action endpoints only has `POST .../delayed_events/{id}` with `{action}`. */
  private delayedBodyAction = false;

  constructor(opts: HomeserverOptions) {
    this.baseUrl = trimBaseUrl(opts.baseUrl);
    this.accessToken = opts.accessToken;
    this.http = new Transport(opts);
  }

  /** `PUT /rooms/{roomId}/send/future/{txnId}`: the seed's form, each entry `{type, content, state_key?}`. */
  async createFuture(input: CreateFutureInput, signal?: AbortSignal): Promise<FutureCreated> {
    const entry = (t: EventTemplate) => ({ type: t.type, content: t.content, ...(t.stateKey !== undefined ? { state_key: t.stateKey } : {}) });
    const body: Record<string, unknown> = { 'm.timeout': timeoutSeconds(input.timeoutMs), 'm.send_on_timeout': entry(input.onTimeout) };
    for (const [name, t] of Object.entries(input.actions ?? {})) body[ACTION_PREFIX + name] = entry(t);
    if (input.sendNow) body['m.send_now'] = entry(input.sendNow);
    const txnId = input.txnId ?? randomTxnId();
    const path = `${CLIENT_V3}/rooms/${segment(input.roomId)}/send/future/${segment(txnId)}`;
    return this.futureFrom(await this.request('create future', { method: 'PUT', url: this.baseUrl + path, body, idempotent: true, ...withSignal(signal) }, true));
  }

  /**
   * `PUT /rooms/{roomId}/state/{eventType}/{stateKey}/future`: the draft's older state form, entries as bare
   * contents. Not idempotent (no transaction id), so it is only retried where the homeserver cannot have acted.
   */
  async createStateFuture(input: CreateStateFutureInput, signal?: AbortSignal): Promise<FutureCreated> {
    const body: Record<string, unknown> = { 'm.timeout': timeoutSeconds(input.timeoutMs), 'm.send_on_timeout': input.onTimeout };
    for (const [name, content] of Object.entries(input.actions ?? {})) body[ACTION_PREFIX + name] = content;
    if (input.sendNow) body['m.send_now'] = input.sendNow;
    const path = `${CLIENT_V3}/rooms/${segment(input.roomId)}/state/${segment(input.eventType)}/${segment(input.stateKey)}/future`;
    return this.futureFrom(await this.request('create state future', { method: 'PUT', url: this.baseUrl + path, body, idempotent: false, ...withSignal(signal) }, true));
  }

  /**
   * Synapse's delayed event: `PUT /rooms/{roomId}/state/{eventType}/{stateKey}?org.matrix.msc4140.delay={ms}`, or
   * the send variant `PUT /rooms/{roomId}/send/{eventType}/{txnId}?...` when no `stateKey` is given.
   */
  async createDelayedEvent(input: CreateDelayedEventInput, signal?: AbortSignal): Promise<DelayedEventCreated> {
    if (!Number.isInteger(input.delayMs) || input.delayMs <= 0) throw new RangeError('delayMs must be a positive whole number of milliseconds');
    const room = segment(input.roomId);
    const type = segment(input.eventType);
    const query = `?${DELAY_PARAM}=${input.delayMs}`;
    const isState = input.stateKey !== undefined;
    const path = isState
      ? `${CLIENT_V3}/rooms/${room}/state/${type}/${segment(input.stateKey!)}${query}`
      : `${CLIENT_V3}/rooms/${room}/send/${type}/${segment(input.txnId ?? randomTxnId())}${query}`;
    // A state PUT has no transaction id: a blind retry could leave a second delayed event that fires on its own.
    const answer = await this.request('create delayed event', { method: 'PUT', url: this.baseUrl + path, body: input.content, idempotent: !isState, ...withSignal(signal) }, true);
    const delayId = (answer.body as Record<string, unknown>)['delay_id'];
    if (typeof delayId !== 'string' || delayId === '') throw new UnexpectedResponseError('create delayed event', 'no delay_id', answer.body);
    return { handle: { dialect: 'delayed_events', token: delayId } };
  }

  /** A plain state event (e.g. the call membership itself, sent after its delayed leave); returns its event id. */
  async sendStateEvent(roomId: string, eventType: string, stateKey: string, content: Record<string, unknown>, signal?: AbortSignal): Promise<string> {
    const path = `${CLIENT_V3}/rooms/${segment(roomId)}/state/${segment(eventType)}/${segment(stateKey)}`;
    const answer = await this.request('send state event', { method: 'PUT', url: this.baseUrl + path, body: content, idempotent: true, ...withSignal(signal) }, true);
    const eventId = (answer.body as Record<string, unknown>)['event_id'];
    if (typeof eventId !== 'string') throw new UnexpectedResponseError('send state event', 'no event_id', answer.body);
    return eventId;
  }

  /** Restarts the future's timer, in its dialect. */
  refresh(handle: FutureHandle, signal?: AbortSignal): Promise<void> {
    return handle.dialect === 'futures' ? this.refreshFuture(handle.token, signal) : this.restartDelayedEvent(handle.token, signal);
  }

  /** `PUT /_matrix/client/v3/futures/refresh` `{future_token}`; POST when the homeserver speaks the later draft. */
  async refreshFuture(futureToken: string, signal?: AbortSignal): Promise<void> {
    await this.futuresCall('refresh future', '/futures/refresh', futureToken, signal);
  }

  /** `PUT /_matrix/client/v3/futures/action/{actionName}`: sends that action's event and ends the future. */
  async futureAction(futureToken: string, actionName: string, signal?: AbortSignal): Promise<void> {
    await this.futuresCall(`future action ${actionName}`, `/futures/action/${segment(actionName)}`, futureToken, signal);
  }

  /** `POST .../delayed_events/{delay_id}/restart`, falling back to the body-action endpoint. */
  async restartDelayedEvent(delayId: string, signal?: AbortSignal): Promise<void> {
    await this.delayedCall('restart', delayId, signal);
  }

  /** Sends the delayed event now (`.../send`). */
  async sendDelayedEvent(delayId: string, signal?: AbortSignal): Promise<void> {
    await this.delayedCall('send', delayId, signal);
  }

  /** Cancels the delayed event (`.../cancel`): it will never be sent. */
  async cancelDelayedEvent(delayId: string, signal?: AbortSignal): Promise<void> {
    await this.delayedCall('cancel', delayId, signal);
  }

  private async futuresCall(what: string, path: string, futureToken: string, signal: AbortSignal | undefined): Promise<void> {
    // No access token: in this draft the future_token alone is the credential, and it is all a delegate ever holds.
    const send = (method: 'PUT' | 'POST') =>
      this.raw(what, { method, url: `${this.baseUrl}${CLIENT_V3}${path}`, body: { future_token: futureToken }, idempotent: true, ...withSignal(signal) });
    let answer = await send(this.futuresMethod);
    if (isEndpointFault(answer)) {
      const other = this.futuresMethod === 'PUT' ? 'POST' : 'PUT';
      const retried = await send(other);
      if (!isEndpointFault(retried)) this.futuresMethod = other;
      answer = retried;
    }
    this.check(what, answer);
  }

  private async delayedCall(action: 'restart' | 'send' | 'cancel', delayId: string, signal: AbortSignal | undefined): Promise<void> {
    const what = `${action} delayed event`;
    const send = (bodyAction: boolean) =>
      this.raw(what, {
        method: 'POST',
        url: bodyAction ? `${this.baseUrl}${DELAYED_EVENTS}/${segment(delayId)}` : `${this.baseUrl}${DELAYED_EVENTS}/${segment(delayId)}/${action}`,
        headers: this.authHeader(),
        body: bodyAction ? { action } : {},
        // A send or cancel repeated after it took effect only earns a 404; a restart repeated is harmless.
        idempotent: true,
        ...withSignal(signal),
      });
    let answer = await send(this.delayedBodyAction);
    if (isEndpointFault(answer)) {
      const retried = await send(!this.delayedBodyAction);
      if (!isEndpointFault(retried)) this.delayedBodyAction = !this.delayedBodyAction;
      answer = retried;
    }
    this.check(what, answer);
  }

  private futureFrom(answer: HttpAnswer): FutureCreated {
    const response = answer.body as Record<string, unknown>;
    const token = response['future_token'];
    if (typeof token !== 'string' || token === '') throw new UnexpectedResponseError('create future', 'no future_token', answer.body);
    const idOf = (key: string): string | undefined => {
      const v = response[key];
      const id = v && typeof v === 'object' ? ((v as Record<string, unknown>)['eventId'] ?? (v as Record<string, unknown>)['event_id']) : undefined;
      return typeof id === 'string' ? id : undefined;
    };
    const actions: Record<string, string> = {};
    for (const key of Object.keys(response)) {
      const id = key.startsWith(ACTION_PREFIX) ? idOf(key) : undefined;
      if (id !== undefined) actions[key.slice(ACTION_PREFIX.length)] = id;
    }
    const onTimeout = idOf('m.send_on_timeout');
    const sendNow = idOf('m.send_now');
    return {
      handle: { dialect: 'futures', token },
      eventIds: { ...(onTimeout !== undefined ? { onTimeout } : {}), ...(sendNow !== undefined ? { sendNow } : {}), actions },
      response,
    };
  }

  private authHeader(): Record<string, string> {
    return { authorization: `Bearer ${this.accessToken}` };
  }

  /** Sends and checks: a 2xx JSON object, or a typed error. */
  private async request(what: string, req: HttpRequest, authenticated: boolean): Promise<HttpAnswer> {
    const answer = await this.raw(what, authenticated ? { ...req, headers: { ...req.headers, ...this.authHeader() } } : req);
    this.check(what, answer);
    if (answer.body === null || typeof answer.body !== 'object' || Array.isArray(answer.body)) {
      throw new UnexpectedResponseError(what, 'the body is not a JSON object', answer.body);
    }
    return answer;
  }

  private async raw(what: string, req: HttpRequest): Promise<HttpAnswer> {
    try {
      return await this.http.send(req);
    } catch (err) {
      if (err instanceof NetworkFailure) throw new HomeserverUnreachableError(what, err.reason);
      throw err;
    }
  }

  private check(what: string, answer: HttpAnswer): void {
    if (answer.status >= 200 && answer.status < 300) return;
    throw new MatrixApiError(what, answer.status, answer.errcode, answer.error, answer.body, answer.retryAfterMs);
  }
}

/** The endpoint does not exist in this form: 405, `M_UNRECOGNIZED`, or a 404 that is not a Matrix error. */
function isEndpointFault(a: HttpAnswer): boolean {
  return a.status === 405 || a.errcode === 'M_UNRECOGNIZED' || (a.status === 404 && a.errcode === null);
}

function timeoutSeconds(timeoutMs: number): number {
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError('timeoutMs must be a positive number of milliseconds');
  return timeoutMs / 1000;
}

function randomTxnId(): string {
  return `fsk_${globalThis.crypto.randomUUID()}`;
}

function withSignal(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal ? { signal } : {};
}
