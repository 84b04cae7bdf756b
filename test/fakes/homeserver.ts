import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { listenOnLoopback, readRawBody } from './listen.js';

/** One event a future (or a plain send) carries: `{type, content, state_key?}` as in the futures draft. */
interface EventSpec {
  type: string;
  content: Record<string, unknown>;
  state_key?: string;
}

export type SentCause = 'send_now' | 'timeout' | 'action' | 'delayed' | 'direct';

export interface SentEvent {
  roomId: string;
  type: string;
  stateKey?: string;
  content: Record<string, unknown>;
  /**
   * `timeout`: a future's timer fired; `delayed`: a delayed event's timer fired; `action`: a futures action or a
   * delayed-event `send` (actionName `send`); `send_now`: sent with the future's creation; `direct`: plain send.
   */
  cause: SentCause;
  actionName?: string;
  /** The future_token or delay_id that caused the event; '' for direct sends. */
  handle: string;
  eventId: string;
  at: number;
}

export type CallOp = 'refresh' | 'action' | 'restart' | 'send' | 'cancel' | 'create' | 'other';

export interface CallRecord {
  method: string;
  /** Path without query; a delay_id in it is replaced by `<token>`. */
  path: string;
  op: CallOp;
  handle?: string;
  actionName?: string;
  /** 0 when the homeserver was down and the socket was destroyed. */
  status: number;
  at: number;
  authorization?: string;
  ip: string;
  /** The user the call was made as: `user_id=` with the as_token, or the client helpers' user with their token. */
  userId?: string;
  /** Made on MSC4140's stable `/_matrix/client/v1/delayed_events` path. */
  stable?: boolean;
}

export type HandleStatus = 'pending' | 'timed_out' | 'actioned' | 'sent' | 'cancelled' | 'invalidated' | 'unknown';

export type FuturesMethod = 'PUT' | 'POST' | 'both';

export type FailOp = 'refresh' | 'action' | 'any';

export interface FailReply {
  status: number;
  errcode?: string;
  retryAfterMs?: number;
  retryAfterHeaderSeconds?: number;
  nonJson?: boolean;
  /** Only calls for this future token / delay id fail; others pass. */
  handle?: string;
}

export interface RateLimit {
  perSecond: number;
  burst: number;
}

export interface FakeHomeserverOptions {
  futuresMethod?: FuturesMethod;
  perActionEndpoints?: boolean;
  rejectAccessToken?: boolean;
  latencyMs?: number;
  rateLimit?: RateLimit | null;
  /** Access token the client helpers (`createFuture`, ...) send. */
  clientAccessToken?: string;
  /** The user that access token belongs to. */
  clientUserId?: string;
  /** An application service is registered with this as_token: it may act as any user with `user_id=` (MSC4140 as merged). */
  appservice?: { asToken: string };
  /** Serve MSC4140's stable `v1` management and lookup paths, and advertise them in `/versions`. */
  stableDelayedEvents?: boolean;
  /** Serve the single delayed-event lookup (GET .../delayed_events/{id}); without it only the user's list (Synapse 1.157). */
  singleDelayLookup?: boolean;
  /** Management calls need authentication (MSC4140 as merged); unauthenticated ones answer 401 M_MISSING_TOKEN. */
  requireManagementAuth?: boolean;
  /** This homeserver's server name, sent as `X-Matrix-Origin` by its federation proxy. */
  serverName?: string;
}

/** Where MSC4512's `fed_proxy` delivers for a destination: that server's application service, as its homeserver would. */
interface FederationPeer {
  url: string;
  hsToken: string;
}

export interface CreateFutureInput {
  roomId: string;
  timeoutSeconds: number;
  onTimeout: EventSpec;
  actions?: Record<string, EventSpec>;
  sendNow?: EventSpec;
  /**
   * Use the older `PUT /rooms/{roomId}/state/{eventType}/{stateKey}/future` path. Entries are then sent as bare
   * contents (as that draft did); their `type`/`state_key` come from here.
   */
  stateForm?: { eventType: string; stateKey: string };
  txnId?: string;
}

export interface CreateFutureResult {
  future_token: string;
  response: Record<string, unknown>;
}

export interface CreateDelayedEventInput {
  /** Scheduled as this user through the application service (as_token + `user_id=`) instead of the client's token. */
  asUser?: string;
  roomId: string;
  eventType: string;
  content: Record<string, unknown>;
  delayMs: number;
  stateKey?: string;
}

export interface SendStateInput {
  roomId: string;
  eventType: string;
  stateKey: string;
  content: Record<string, unknown>;
}

const CLIENT_V3 = ['_matrix', 'client', 'v3'] as const;
const MSC4140_STABLE = ['_matrix', 'client', 'v1', 'delayed_events'] as const;
const MSC4502_UNSTABLE = ['_matrix', 'client', 'unstable', 'io.element.msc4502', 'rooms'] as const;
const MSC4140_UNSTABLE = ['_matrix', 'client', 'unstable', 'org.matrix.msc4140'] as const;
const DELAY_QUERY_PARAM = 'org.matrix.msc4140.delay';
const SEND_NOW_TEMPLATE = '$m.send_now.event_id';
const ACTION_KEY_PREFIX = 'm.send_on_action:';
const MAX_TIMER_MS = 2 ** 31 - 1;

type DelayedAction = 'restart' | 'send' | 'cancel';
const DELAYED_ACTIONS: readonly DelayedAction[] = ['restart', 'send', 'cancel'];

interface PreparedEvent {
  spec: EventSpec;
  eventId: string;
}

interface FutureRecord {
  kind: 'future';
  handle: string;
  roomId: string;
  timeoutMs: number;
  onTimeout: PreparedEvent;
  actions: Map<string, PreparedEvent>;
  sendNow?: PreparedEvent;
  status: HandleStatus;
  expiresAt: number;
  timer?: NodeJS.Timeout;
}

interface DelayedRecord {
  kind: 'delayed';
  handle: string;
  roomId: string;
  type: string;
  stateKey?: string;
  content: Record<string, unknown>;
  delayMs: number;
  status: HandleStatus;
  expiresAt: number;
  timer?: NodeJS.Timeout;
  /** Who scheduled it; only that user may see or manage it when the call says who it is. */
  owner?: string;
}

type HandleRecord = FutureRecord | DelayedRecord;

type Route =
  | { kind: 'unrecognized'; status: 404 | 405 }
  | { kind: 'createFuture'; roomId: string; stateForm?: { eventType: string; stateKey: string } }
  | { kind: 'send'; roomId: string; eventType: string; txnId: string }
  | { kind: 'state'; roomId: string; eventType: string; stateKey: string }
  | { kind: 'futuresRefresh' }
  | { kind: 'futuresAction'; actionName: string }
  | { kind: 'delayedPerAction'; delayId: string; action: DelayedAction }
  | { kind: 'delayedBodyAction'; delayId: string };

type ManagementRoute = Extract<Route, { kind: 'futuresRefresh' | 'futuresAction' | 'delayedPerAction' | 'delayedBodyAction' }>;

type ParsedBody = { kind: 'empty' } | { kind: 'object'; value: Record<string, unknown> } | { kind: 'invalid' };

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
  nonJson?: boolean;
}

interface FailRule {
  op: FailOp;
  remaining: number;
  reply: FailReply;
}

interface Bucket {
  tokens: number;
  updatedAt: number;
}

interface Knobs {
  futuresMethod: FuturesMethod;
  perActionEndpoints: boolean;
  rejectAccessToken: boolean;
  latencyMs: number;
  rateLimit: RateLimit | null;
  down: boolean;
  stableDelayedEvents: boolean;
  singleDelayLookup: boolean;
  requireManagementAuth: boolean;
  membershipDown: boolean;
}

function randomToken(bytes: number): string {
  return randomBytes(bytes).toString('base64url');
}

function newEventId(): string {
  return `$${randomToken(32)}`;
}

const ASCII_LETTERS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';

/** Synapse: `"syd_" + random_string(20)` over ASCII letters. */
function newDelayId(): string {
  const bytes = randomBytes(20);
  let id = 'syd_';
  for (const byte of bytes) id += ASCII_LETTERS[byte % ASCII_LETTERS.length];
  return id;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseBody(raw: Buffer): ParsedBody {
  if (raw.length === 0) return { kind: 'empty' };
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    return { kind: 'invalid' };
  }
  return isPlainObject(value) ? { kind: 'object', value } : { kind: 'invalid' };
}

function matrixError(status: number, errcode: string, error: string, extra?: Record<string, unknown>): Reply {
  return { status, body: { errcode, error, ...extra } };
}

function defaultErrcode(status: number): string {
  switch (status) {
    case 401:
      return 'M_UNKNOWN_TOKEN';
    case 403:
      return 'M_FORBIDDEN';
    case 404:
      return 'M_NOT_FOUND';
    case 429:
      return 'M_LIMIT_EXCEEDED';
    default:
      return 'M_UNKNOWN';
  }
}

function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  return match?.[1];
}

function substituteSendNow(value: unknown, sendNowEventId: string): unknown {
  if (typeof value === 'string') return value.replaceAll(SEND_NOW_TEMPLATE, sendNowEventId);
  if (Array.isArray(value)) return value.map((item) => substituteSendNow(item, sendNowEventId));
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) out[key] = substituteSendNow(item, sendNowEventId);
    return out;
  }
  return value;
}

function startsWith(segments: readonly string[], prefix: readonly string[]): boolean {
  return prefix.every((part, index) => segments[index] === part);
}

function stateKeyOf(roomId: string, type: string, stateKey: string): string {
  return JSON.stringify([roomId, type, stateKey]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isManagement(route: Route): route is ManagementRoute {
  return (
    route.kind === 'futuresRefresh' ||
    route.kind === 'futuresAction' ||
    route.kind === 'delayedPerAction' ||
    route.kind === 'delayedBodyAction'
  );
}

function failRuleMatches(rule: FailOp, op: CallOp): boolean {
  switch (rule) {
    case 'any':
      return true;
    case 'refresh':
      return op === 'refresh' || op === 'restart';
    case 'action':
      return op === 'action' || op === 'send';
  }
}

function isDelayedAction(value: unknown): value is DelayedAction {
  return typeof value === 'string' && (DELAYED_ACTIONS as readonly string[]).includes(value);
}

function isManagementPath(segments: readonly string[]): boolean {
  return startsWith(segments, [...CLIENT_V3, 'futures']) || startsWith(segments, [...MSC4140_UNSTABLE, 'delayed_events']);
}

function decodeSegments(pathname: string): string[] | undefined {
  try {
    return pathname.split('/').slice(1).map((segment) => decodeURIComponent(segment));
  } catch {
    return undefined;
  }
}

type CallLabel = Pick<CallRecord, 'op' | 'handle' | 'actionName'> & { path?: string };

/** Names a call by what its path means, whatever the knobs made of it (a 405 PUT refresh is still a refresh). */
function labelCall(url: URL, segments: readonly string[], body: ParsedBody): CallLabel {
  const bodyObject = body.kind === 'object' ? body.value : undefined;
  if (startsWith(segments, [...CLIENT_V3, 'futures'])) {
    const token = bodyObject?.['future_token'];
    const handle = typeof token === 'string' ? { handle: token } : {};
    if (segments.length === 5 && segments[4] === 'refresh') return { op: 'refresh', ...handle };
    if (segments.length === 6 && segments[4] === 'action') return { op: 'action', actionName: segments[5] ?? '', ...handle };
    return { op: 'other' };
  }
  if (startsWith(segments, [...MSC4140_UNSTABLE, 'delayed_events']) && (segments.length === 6 || segments.length === 7)) {
    const delayId = segments[5] ?? '';
    const rawSegments = url.pathname.split('/');
    rawSegments[6] = '<token>';
    const path = rawSegments.join('/');
    const action = segments.length === 7 ? segments[6] : bodyObject?.['action'];
    return { op: isDelayedAction(action) ? action : 'other', handle: delayId, path };
  }
  if (startsWith(segments, [...CLIENT_V3, 'rooms'])) {
    const verb = segments[5];
    const rest = segments.slice(6);
    const isFuture = (verb === 'send' && rest.length === 2 && rest[0] === 'future') || (verb === 'state' && rest.length === 3 && rest[2] === 'future');
    if (isFuture || url.searchParams.has(DELAY_QUERY_PARAM)) return { op: 'create' };
  }
  return { op: 'other' };
}

/**
 * A Matrix homeserver speaking both the 2024-05 "futures" draft (the seed) and Synapse's MSC4140 delayed events, in
 * real time, with fault knobs. Its `sent` and `calls` logs are the homeserver's own truth for tests.
 */
export class FakeHomeserver {
  readonly sent: SentEvent[] = [];
  readonly calls: CallRecord[] = [];

  private readonly server: Server;
  private readonly initialKnobs: Knobs;
  private knobs: Knobs;
  private failRules: FailRule[] = [];
  /** Management calls currently held back by the latency knob. */
  inFlight = 0;
  private buckets = new Map<string, Bucket>();
  private readonly records = new Map<string, HandleRecord>();
  private readonly roomState = new Map<string, { eventId: string; content: Record<string, unknown> }>();
  private readonly txnResponses = new Map<string, Reply>();
  private readonly clientAccessToken: string;
  private readonly clientUserId: string;
  private readonly asToken: string | null;
  private readonly serverName: string;
  private readonly peers = new Map<string, FederationPeer>();
  /** `room\0@user:server` and `room\0server-name` of whoever is joined (MSC4502's two questions). */
  private readonly joined = new Set<string>();
  private baseUrl = '';
  private closed = false;

  constructor(opts: FakeHomeserverOptions = {}) {
    this.initialKnobs = {
      futuresMethod: opts.futuresMethod ?? 'PUT',
      perActionEndpoints: opts.perActionEndpoints ?? true,
      rejectAccessToken: opts.rejectAccessToken ?? false,
      latencyMs: opts.latencyMs ?? 0,
      rateLimit: opts.rateLimit ?? null,
      down: false,
      stableDelayedEvents: opts.stableDelayedEvents ?? false,
      singleDelayLookup: opts.singleDelayLookup ?? true,
      requireManagementAuth: opts.requireManagementAuth ?? false,
      membershipDown: false,
    };
    this.clientUserId = opts.clientUserId ?? '@fake-client:localhost';
    this.asToken = opts.appservice?.asToken ?? null;
    this.serverName = opts.serverName ?? 'localhost';
    this.knobs = { ...this.initialKnobs };
    this.clientAccessToken = opts.clientAccessToken ?? 'fake-client-access-token';
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        const message = err instanceof Error ? err.message : String(err);
        if (res.headersSent) {
          res.destroy(err instanceof Error ? err : new Error(message));
          return;
        }
        this.writeReply(res, matrixError(500, 'M_UNKNOWN', `fake homeserver error: ${message}`));
      });
    });
  }

  /** @internal use startFakeHomeserver */
  async listen(): Promise<void> {
    this.baseUrl = await listenOnLoopback(this.server);
  }

  get url(): string {
    return this.baseUrl;
  }

  status(handle: string): HandleStatus {
    return this.records.get(handle)?.status ?? 'unknown';
  }

  expiresAt(handle: string): number | undefined {
    const record = this.records.get(handle);
    return record?.status === 'pending' ? record.expiresAt : undefined;
  }

  currentState(roomId: string, type: string, stateKey: string): { eventId: string; content: Record<string, unknown> } | undefined {
    return this.roomState.get(stateKeyOf(roomId, type, stateKey));
  }

  failNext(op: FailOp, count: number, reply: FailReply): void {
    if (count > 0) this.failRules.push({ op, remaining: count, reply });
  }

  setLatency(ms: number): void {
    this.knobs.latencyMs = ms;
  }

  setDown(down: boolean): void {
    this.knobs.down = down;
  }

  setRateLimit(limit: RateLimit | null): void {
    this.knobs.rateLimit = limit;
    this.buckets = new Map();
  }

  setFuturesMethod(method: FuturesMethod): void {
    this.knobs.futuresMethod = method;
  }

  setPerActionEndpoints(enabled: boolean): void {
    this.knobs.perActionEndpoints = enabled;
  }

  /** Only rooms whose memberships the test set (setJoined) know who left: elsewhere every owner may send. */
  private leftTheRoom(record: DelayedRecord): boolean {
    if (record.owner === undefined || this.joined.has(`${record.roomId}\u0000${record.owner}`)) return false;
    for (const key of this.joined) if (key.startsWith(`${record.roomId}\u0000`)) return true;
    return false;
  }

  /** The user (an mxid) or server (a name) joins or leaves the room, as MSC4502's `is_joined` answers. */
  setJoined(roomId: string, who: string, joined: boolean): void {
    if (joined) this.joined.add(`${roomId}\u0000${who}`);
    else this.joined.delete(`${roomId}\u0000${who}`);
  }

  /**
   * `fed_proxy` to `destination` reaches `peer` (its application service's URL and hs_token), as if that server's
   * homeserver had checked our signature and proxied the request with `X-Matrix-Origin`.
   */
  setFederationPeer(destination: string, peer: FederationPeer): void {
    this.peers.set(destination, peer);
  }

  /** `is_joined` answers 500 while down. */
  setMembershipDown(down: boolean): void {
    this.knobs.membershipDown = down;
  }

  setStableDelayedEvents(enabled: boolean): void {
    this.knobs.stableDelayedEvents = enabled;
  }

  setRequireManagementAuth(required: boolean): void {
    this.knobs.requireManagementAuth = required;
  }

  setRejectAccessToken(reject: boolean): void {
    this.knobs.rejectAccessToken = reject;
  }

  /** Restores every knob to the start options; keeps futures, delayed events and the logs. */
  reset(): void {
    this.knobs = { ...this.initialKnobs };
    this.failRules = [];
    this.buckets = new Map();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const record of this.records.values()) clearTimeout(record.timer);
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((err) => (err ? reject(err) : resolve())));
  }

  async createFuture(input: CreateFutureInput): Promise<CreateFutureResult> {
    const body: Record<string, unknown> = { 'm.timeout': input.timeoutSeconds };
    const entry = (spec: EventSpec): unknown => (input.stateForm ? spec.content : spec);
    body['m.send_on_timeout'] = entry(input.onTimeout);
    for (const [name, spec] of Object.entries(input.actions ?? {})) body[`${ACTION_KEY_PREFIX}${name}`] = entry(spec);
    if (input.sendNow) body['m.send_now'] = entry(input.sendNow);
    const room = encodeURIComponent(input.roomId);
    const path = input.stateForm
      ? `/_matrix/client/v3/rooms/${room}/state/${encodeURIComponent(input.stateForm.eventType)}/${encodeURIComponent(input.stateForm.stateKey)}/future`
      : `/_matrix/client/v3/rooms/${room}/send/future/${encodeURIComponent(input.txnId ?? randomToken(12))}`;
    const response = await this.clientRequest('PUT', path, body);
    const token = response['future_token'];
    if (typeof token !== 'string') throw new Error(`future creation answered without future_token: ${JSON.stringify(response)}`);
    return { future_token: token, response };
  }

  async createDelayedEvent(input: CreateDelayedEventInput): Promise<string> {
    const room = encodeURIComponent(input.roomId);
    const type = encodeURIComponent(input.eventType);
    const query = `?${DELAY_QUERY_PARAM}=${input.delayMs}${input.asUser ? `&user_id=${encodeURIComponent(input.asUser)}` : ''}`;
    const path =
      input.stateKey === undefined
        ? `/_matrix/client/v3/rooms/${room}/send/${type}/${randomToken(12)}${query}`
        : `/_matrix/client/v3/rooms/${room}/state/${type}/${encodeURIComponent(input.stateKey)}${query}`;
    const response = await this.clientRequest('PUT', path, input.content, input.asUser ? this.asToken ?? undefined : undefined);
    const delayId = response['delay_id'];
    if (typeof delayId !== 'string') throw new Error(`delayed event answered without delay_id: ${JSON.stringify(response)}`);
    return delayId;
  }

  /** A plain state event, as a client would send it; returns its event id. */
  async sendStateEvent(input: SendStateInput): Promise<string> {
    const path = `/_matrix/client/v3/rooms/${encodeURIComponent(input.roomId)}/state/${encodeURIComponent(input.eventType)}/${encodeURIComponent(input.stateKey)}`;
    const response = await this.clientRequest('PUT', path, input.content);
    const eventId = response['event_id'];
    if (typeof eventId !== 'string') throw new Error(`state send answered without event_id: ${JSON.stringify(response)}`);
    return eventId;
  }

  private async clientRequest(method: string, path: string, body: unknown, token = this.clientAccessToken): Promise<Record<string, unknown>> {
    const response = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (response.status !== 200) throw new Error(`${method} ${path} -> ${response.status} ${text}`);
    const parsed: unknown = JSON.parse(text);
    if (!isPlainObject(parsed)) throw new Error(`${method} ${path} answered a non-object: ${text}`);
    return parsed;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const at = Date.now();
    const method = req.method ?? 'GET';
    const requested = new URL(req.url ?? '/', 'http://fake-homeserver');
    const raw = await readRawBody(req);
    let segments = decodeSegments(requested.pathname);
    // MSC4140's stable paths are the unstable ones under another prefix, when served at all.
    const stable = this.knobs.stableDelayedEvents && segments !== undefined && startsWith(segments, MSC4140_STABLE);
    const url = stable ? new URL(requested.pathname.replace('/_matrix/client/v1/', '/_matrix/client/unstable/org.matrix.msc4140/') + requested.search, requested) : requested;
    if (stable) segments = decodeSegments(url.pathname);
    const body = parseBody(raw);
    const route = segments ? this.resolve(method, segments) : ({ kind: 'unrecognized', status: 404 } as const);
    const authorization = req.headers.authorization;
    const userId = this.callerOf(authorization, requested);
    const label = labelCall(url, segments ?? [], body);
    const call: CallRecord = {
      method,
      path: requested.pathname,
      status: 0,
      at,
      ip: req.socket.remoteAddress ?? '',
      ...(authorization !== undefined ? { authorization } : {}),
      ...(userId !== undefined ? { userId } : {}),
      ...(stable ? { stable } : {}),
      ...label,
      ...(label.path !== undefined && stable ? { path: label.path.replace('/_matrix/client/unstable/org.matrix.msc4140/', '/_matrix/client/v1/') } : {}),
    };
    if (segments?.join('/') === '_matrix/client/unstable/io.element.msc4512/appservice/fed_proxy') {
      this.finish(res, await this.fedProxy(method, call, body), call);
      return;
    }
    const appservice = segments ? this.appserviceReply(method, url, segments, call) : undefined;
    if (appservice) {
      if (segments && isManagementPath(segments) && !(await this.passDownAndLatency(call, req))) return;
      this.finish(res, appservice, call);
      return;
    }

    if (segments && isManagementPath(segments)) {
      const reachable = await this.passDownAndLatency(call, req);
      if (!reachable) return;
    }
    if (isManagement(route)) {
      this.finish(res, this.managementReply(route, body, call), call);
      return;
    }
    this.finish(res, this.handleOther(route, url, body, call), call);
  }

  /** Who a call is made as: the application service's `user_id=`, or the client helpers' user. */
  private callerOf(authorization: string | undefined, url: URL): string | undefined {
    const token = bearerToken(authorization);
    if (token === undefined) return undefined;
    if (this.asToken !== null && token === this.asToken) return url.searchParams.get('user_id') ?? undefined;
    return token === this.clientAccessToken ? this.clientUserId : undefined;
  }

  /** MSC4512's outgoing federation proxy, for the application service only. */
  private async fedProxy(method: string, call: CallRecord, body: ParsedBody): Promise<Reply> {
    if (method !== 'POST') return matrixError(405, 'M_UNRECOGNIZED', 'Unrecognized request');
    if (this.asToken === null || bearerToken(call.authorization) !== this.asToken) return matrixError(403, 'M_FORBIDDEN', 'Only application services may use the federation proxy');
    if (body.kind !== 'object') return matrixError(400, 'M_NOT_JSON', 'Content not JSON.');
    const { destination, path } = body.value;
    if (typeof destination !== 'string' || typeof path !== 'string') return matrixError(400, 'M_MISSING_PARAM', 'destination and path are required');
    if (!path.startsWith('/_matrix/federation/')) return matrixError(403, 'IO.ELEMENT.MSC4512.M_FEDPROXY_PATH_NOT_ALLOWED', 'Path not allowed');
    const peer = this.peers.get(destination);
    if (!peer) return matrixError(502, 'IO.ELEMENT.MSC4512.M_FEDPROXY_CONNECTION_FAILED', 'Could not reach the destination');
    const res = await fetch(`${peer.url}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${peer.hsToken}`, 'x-matrix-origin': this.serverName, 'content-type': 'application/json' },
      body: JSON.stringify(body.value.body ?? {}),
    });
    const text = await res.text();
    let content: unknown;
    try {
      content = JSON.parse(text);
    } catch {
      content = null;
    }
    return { status: 200, body: { status: res.status, content } };
  }

  /** `/versions`, MSC4502's `is_joined`, and the delayed-event lookup and list; undefined for every other call. */
  private appserviceReply(method: string, url: URL, segments: readonly string[], call: CallRecord): Reply | undefined {
    if (method === 'GET' && segments.join('/') === '_matrix/client/versions') {
      return {
        status: 200,
        body: {
          versions: ['v1.11', 'v1.12'],
          unstable_features: { 'org.matrix.msc4140': true, 'org.matrix.msc4140.stable': this.knobs.stableDelayedEvents, 'io.element.msc4502': this.asToken !== null },
        },
      };
    }
    if (startsWith(segments, MSC4502_UNSTABLE) && segments.length === 7 && segments[6] === 'is_joined') {
      if (method !== 'GET') return matrixError(405, 'M_UNRECOGNIZED', 'Unrecognized request');
      const token = bearerToken(call.authorization);
      if (token === undefined) return matrixError(401, 'M_MISSING_TOKEN', 'Missing access token');
      if (token !== this.asToken) return matrixError(403, 'M_FORBIDDEN', 'Missing scope urn:matrix:client:io.element.msc4502:rooms:is_joined');
      const mxid = url.searchParams.get('mxid');
      const server = url.searchParams.get('server_name');
      if ((mxid === null) === (server === null)) return matrixError(400, 'M_MISSING_PARAM', 'Exactly one of mxid and server_name is required');
      if (this.knobs.membershipDown) return matrixError(500, 'M_UNKNOWN', 'Internal server error');
      return { status: 200, body: { joined: this.joined.has(`${segments[5]}\u0000${mxid ?? server}`) } };
    }
    if (method !== 'GET' || !startsWith(segments, [...MSC4140_UNSTABLE, 'delayed_events']) || segments.length > 6) return undefined;
    if (call.userId === undefined) return matrixError(401, 'M_MISSING_TOKEN', 'Missing access token');
    const mine = (r: HandleRecord | undefined): r is DelayedRecord => r?.kind === 'delayed' && r.status === 'pending' && r.owner === call.userId;
    if (segments.length === 5) {
      const list = [...this.records.values()].filter(mine).map((r) => ({
        delay_id: r.handle,
        room_id: r.roomId,
        type: r.type,
        ...(r.stateKey !== undefined ? { state_key: r.stateKey } : {}),
        delay: r.delayMs,
        running_since: r.expiresAt - r.delayMs,
        content: r.content,
      }));
      return { status: 200, body: { delayed_events: list } };
    }
    if (!this.knobs.singleDelayLookup) return matrixError(405, 'M_UNRECOGNIZED', 'Unrecognized request');
    const record = this.records.get(segments[5] ?? '');
    call.handle = segments[5] ?? '';
    if (!mine(record)) return matrixError(404, 'M_NOT_FOUND', 'Delayed event not found');
    return {
      status: 200,
      body: { delay_id: record.handle, room_id: record.roomId, type: record.type, delay_ms: record.delayMs, scheduled_at: record.expiresAt - record.delayMs, content: record.content },
    };
  }

  /** Down and latency hit every call to a management path, also those the routing then refuses (405 and the like). */
  private async passDownAndLatency(call: CallRecord, req: IncomingMessage): Promise<boolean> {
    if (!this.knobs.down && this.knobs.latencyMs > 0) {
      this.inFlight++;
      try {
        await sleep(this.knobs.latencyMs);
      } finally {
        this.inFlight--;
      }
    }
    if (this.knobs.down || this.closed) {
      this.calls.push(call);
      req.socket.destroy();
      return false;
    }
    return true;
  }

  private finish(res: ServerResponse, reply: Reply, call: CallRecord): void {
    call.status = reply.status;
    this.calls.push(call);
    this.writeReply(res, reply);
  }

  private writeReply(res: ServerResponse, reply: Reply): void {
    if (reply.nonJson) {
      res.writeHead(reply.status, { 'Content-Type': 'text/plain; charset=utf-8', ...reply.headers });
      res.end(String(reply.body));
      return;
    }
    res.writeHead(reply.status, { 'Content-Type': 'application/json', ...reply.headers });
    res.end(JSON.stringify(reply.body));
  }

  private resolve(method: string, segments: readonly string[]): Route {
    if (startsWith(segments, [...CLIENT_V3, 'rooms']) && segments.length >= 7) {
      const roomId = segments[4] ?? '';
      const verb = segments[5];
      const rest = segments.slice(6);
      if (verb === 'send' && rest.length === 2 && rest[0] === 'future') {
        return method === 'PUT' ? { kind: 'createFuture', roomId } : { kind: 'unrecognized', status: 405 };
      }
      if (verb === 'send' && rest.length === 2) {
        return method === 'PUT'
          ? { kind: 'send', roomId, eventType: rest[0] ?? '', txnId: rest[1] ?? '' }
          : { kind: 'unrecognized', status: 405 };
      }
      if (verb === 'state' && rest.length === 3 && rest[2] === 'future') {
        return method === 'PUT'
          ? { kind: 'createFuture', roomId, stateForm: { eventType: rest[0] ?? '', stateKey: rest[1] ?? '' } }
          : { kind: 'unrecognized', status: 405 };
      }
      if (verb === 'state' && (rest.length === 1 || rest.length === 2)) {
        return method === 'PUT'
          ? { kind: 'state', roomId, eventType: rest[0] ?? '', stateKey: rest[1] ?? '' }
          : { kind: 'unrecognized', status: 405 };
      }
      return { kind: 'unrecognized', status: 404 };
    }

    if (startsWith(segments, [...CLIENT_V3, 'futures'])) {
      const rest = segments.slice(4);
      let route: Route | undefined;
      if (rest.length === 1 && rest[0] === 'refresh') route = { kind: 'futuresRefresh' };
      if (rest.length === 2 && rest[0] === 'action' && rest[1] !== '') route = { kind: 'futuresAction', actionName: rest[1] ?? '' };
      if (!route) return { kind: 'unrecognized', status: 404 };
      const allowed = this.knobs.futuresMethod === 'both' ? ['PUT', 'POST'] : [this.knobs.futuresMethod];
      return allowed.includes(method) ? route : { kind: 'unrecognized', status: 405 };
    }

    if (startsWith(segments, [...MSC4140_UNSTABLE, 'delayed_events'])) {
      const rest = segments.slice(5);
      const delayId = rest[0] ?? '';
      if (rest.length === 1 && delayId !== '') {
        return method === 'POST' ? { kind: 'delayedBodyAction', delayId } : { kind: 'unrecognized', status: 405 };
      }
      const action = rest[1] as DelayedAction;
      if (rest.length === 2 && delayId !== '' && DELAYED_ACTIONS.includes(action)) {
        if (!this.knobs.perActionEndpoints) return { kind: 'unrecognized', status: 404 };
        return method === 'POST' ? { kind: 'delayedPerAction', delayId, action } : { kind: 'unrecognized', status: 405 };
      }
      return { kind: 'unrecognized', status: 404 };
    }

    return { kind: 'unrecognized', status: 404 };
  }

  private handleOther(route: Exclude<Route, ManagementRoute>, url: URL, body: ParsedBody, call: CallRecord): Reply {
    if (route.kind === 'unrecognized') {
      return matrixError(route.status, 'M_UNRECOGNIZED', 'Unrecognized request');
    }
    if (bearerToken(call.authorization) === undefined) {
      return matrixError(401, 'M_MISSING_TOKEN', 'Missing access token');
    }
    const txnKey = `${call.authorization ?? ''} ${call.method} ${url.pathname}${url.search}`;
    const usesTxn = route.kind === 'createFuture' || route.kind === 'send';
    const previous = usesTxn ? this.txnResponses.get(txnKey) : undefined;
    if (previous) {
      const handle = (previous.body as Record<string, unknown>)['future_token'] ?? (previous.body as Record<string, unknown>)['delay_id'];
      if (typeof handle === 'string') call.handle = handle;
      return previous;
    }
    if (body.kind !== 'object') return matrixError(400, 'M_NOT_JSON', 'Content not JSON.');

    let reply: Reply;
    switch (route.kind) {
      case 'createFuture':
        reply = this.createFutureFromRequest(route.roomId, route.stateForm, body.value, call);
        break;
      case 'send':
      case 'state': {
        const stateKey = route.kind === 'state' ? route.stateKey : undefined;
        const delayParam = url.searchParams.get(DELAY_QUERY_PARAM);
        if (delayParam !== null) {
          reply = this.scheduleDelayed(route.roomId, route.eventType, stateKey, body.value, delayParam, call);
        } else {
          const eventId = newEventId();
          this.recordEvent({
            roomId: route.roomId,
            type: route.eventType,
            content: body.value,
            cause: 'direct',
            handle: '',
            eventId,
            ...(stateKey !== undefined ? { stateKey } : {}),
          });
          reply = { status: 200, body: { event_id: eventId } };
        }
        break;
      }
    }
    if (usesTxn && reply.status === 200) this.txnResponses.set(txnKey, reply);
    return reply;
  }

  private createFutureFromRequest(
    roomId: string,
    stateForm: { eventType: string; stateKey: string } | undefined,
    body: Record<string, unknown>,
    call: CallRecord,
  ): Reply {
    const timeout = body['m.timeout'];
    if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0) {
      return matrixError(400, 'M_BAD_JSON', "'m.timeout' must be a positive number of seconds");
    }
    const readEntry = (key: string): EventSpec | string => {
      const value = body[key];
      if (stateForm) {
        if (!isPlainObject(value)) return `'${key}' must be an object`;
        const wrapped = isPlainObject(value['content']) && Object.keys(value).every((k) => k === 'type' || k === 'content' || k === 'state_key');
        const content = wrapped ? (value['content'] as Record<string, unknown>) : value;
        return { type: stateForm.eventType, state_key: stateForm.stateKey, content };
      }
      if (!isPlainObject(value) || typeof value['type'] !== 'string' || !isPlainObject(value['content'])) {
        return `'${key}' must be {type, content, state_key?}`;
      }
      const stateKey = value['state_key'];
      if (stateKey !== undefined && typeof stateKey !== 'string') return `'${key}.state_key' must be a string`;
      return { type: value['type'], content: value['content'], ...(stateKey !== undefined ? { state_key: stateKey } : {}) };
    };

    const onTimeout = readEntry('m.send_on_timeout');
    if (typeof onTimeout === 'string') return matrixError(400, 'M_BAD_JSON', onTimeout);
    let sendNow: EventSpec | undefined;
    if (body['m.send_now'] !== undefined) {
      const parsed = readEntry('m.send_now');
      if (typeof parsed === 'string') return matrixError(400, 'M_BAD_JSON', parsed);
      sendNow = parsed;
    }
    const actions = new Map<string, PreparedEvent>();
    for (const key of Object.keys(body)) {
      if (!key.startsWith(ACTION_KEY_PREFIX)) continue;
      const name = key.slice(ACTION_KEY_PREFIX.length);
      if (name === '') return matrixError(400, 'M_BAD_JSON', 'action names must not be empty');
      const parsed = readEntry(key);
      if (typeof parsed === 'string') return matrixError(400, 'M_BAD_JSON', parsed);
      actions.set(name, { spec: parsed, eventId: newEventId() });
    }

    const timeoutMs = timeout * 1000;
    const record: FutureRecord = {
      kind: 'future',
      handle: randomToken(32),
      roomId,
      timeoutMs,
      onTimeout: { spec: onTimeout, eventId: newEventId() },
      actions,
      ...(sendNow ? { sendNow: { spec: sendNow, eventId: newEventId() } } : {}),
      status: 'pending',
      expiresAt: Date.now() + timeoutMs,
    };
    this.records.set(record.handle, record);
    call.handle = record.handle;
    if (record.sendNow) this.sendPrepared(record, record.sendNow, 'send_now');
    this.armTimer(record);

    const response: Record<string, unknown> = {
      future_token: record.handle,
      'm.send_on_timeout': { eventId: record.onTimeout.eventId },
    };
    for (const [name, prepared] of actions) response[`${ACTION_KEY_PREFIX}${name}`] = { eventId: prepared.eventId };
    if (record.sendNow) response['m.send_now'] = { eventId: record.sendNow.eventId };
    return { status: 200, body: response };
  }

  private scheduleDelayed(
    roomId: string,
    type: string,
    stateKey: string | undefined,
    content: Record<string, unknown>,
    delayParam: string,
    call: CallRecord,
  ): Reply {
    if (!/^\d+$/.test(delayParam)) {
      return matrixError(400, 'M_INVALID_PARAM', `Query parameter "${DELAY_QUERY_PARAM}" must be an integer`);
    }
    const delayMs = Number(delayParam);
    const record: DelayedRecord = {
      kind: 'delayed',
      handle: newDelayId(),
      roomId,
      type,
      ...(stateKey !== undefined ? { stateKey } : {}),
      content,
      delayMs,
      status: 'pending',
      expiresAt: Date.now() + delayMs,
      ...(call.userId !== undefined ? { owner: call.userId } : {}),
    };
    this.records.set(record.handle, record);
    call.handle = record.handle;
    this.armTimer(record);
    return { status: 200, body: { delay_id: record.handle } };
  }

  private managementReply(route: ManagementRoute, body: ParsedBody, call: CallRecord): Reply {
    const injected = this.takeFailure(call.op, call.handle);
    if (injected) return injected;
    if (this.knobs.rejectAccessToken && bearerToken(call.authorization) !== undefined) {
      return matrixError(401, 'M_UNKNOWN_TOKEN', 'Unrecognised access token');
    }
    if (this.knobs.requireManagementAuth && bearerToken(call.authorization) === undefined) {
      return matrixError(401, 'M_MISSING_TOKEN', 'Missing access token');
    }
    // An application service registered with `rate_limited: false` is not limited; everyone else shares their
    // address's bucket (Synapse's default for unauthenticated management).
    const viaAppservice = this.asToken !== null && bearerToken(call.authorization) === this.asToken;
    const limited = viaAppservice ? undefined : this.rateLimited(call.ip);
    if (limited) return limited;

    if (body.kind === 'invalid') return matrixError(400, 'M_NOT_JSON', 'Content not JSON.');

    if (route.kind === 'futuresRefresh' || route.kind === 'futuresAction') {
      if (call.handle === undefined) return matrixError(400, 'M_BAD_JSON', "'future_token' must be a string");
      const record = this.records.get(call.handle);
      if (record?.kind !== 'future' || record.status !== 'pending') return matrixError(404, 'M_NOT_FOUND', 'Unknown future_token');
      if (route.kind === 'futuresRefresh') {
        record.expiresAt = Date.now() + record.timeoutMs;
        this.armTimer(record);
        return { status: 200, body: {} };
      }
      const action = record.actions.get(route.actionName);
      if (!action) return matrixError(400, 'M_INVALID_PARAM', `Unknown action '${route.actionName}' for this future`);
      this.finalise(record, 'actioned');
      this.sendPrepared(record, action, 'action', route.actionName);
      return { status: 200, body: {} };
    }

    let delayedAction: DelayedAction | undefined;
    if (route.kind === 'delayedPerAction') delayedAction = route.action;
    if (route.kind === 'delayedBodyAction' && isDelayedAction(call.op)) delayedAction = call.op;
    if (!delayedAction) {
      const action = body.kind === 'object' ? body.value['action'] : undefined;
      return action === undefined
        ? matrixError(400, 'M_MISSING_PARAM', "'action' is missing")
        : matrixError(400, 'M_INVALID_PARAM', "'action' is not one of restart, send, cancel");
    }
    const record = this.records.get(route.delayId);
    const foreign = record?.kind === 'delayed' && call.userId !== undefined && record.owner !== undefined && record.owner !== call.userId;
    if (record?.kind !== 'delayed' || record.status !== 'pending' || foreign) {
      return matrixError(404, 'M_NOT_FOUND', 'Delayed event not found');
    }
    switch (delayedAction) {
      case 'restart':
        record.expiresAt = Date.now() + record.delayMs;
        this.armTimer(record);
        break;
      case 'send':
        if (this.leftTheRoom(record)) {
          // Synapse: the event is sent as its owner, whom event auth refuses once they left (or were kicked), and the
          // delayed event is deleted all the same (handlers/delayed_events.py `_send_event`, finally).
          this.finalise(record, 'invalidated');
          return matrixError(403, 'M_FORBIDDEN', `User ${record.owner} not in room ${record.roomId}`);
        }
        this.finalise(record, 'sent');
        this.sendDelayed(record, 'action');
        break;
      case 'cancel':
        this.finalise(record, 'cancelled');
        break;
    }
    return { status: 200, body: {} };
  }

  private takeFailure(op: CallOp, handle: string | undefined): Reply | undefined {
    const rule = this.failRules.find(
      (candidate) => candidate.remaining > 0 && failRuleMatches(candidate.op, op) && (candidate.reply.handle === undefined || candidate.reply.handle === handle),
    );
    if (!rule) return undefined;
    rule.remaining -= 1;
    this.failRules = this.failRules.filter((candidate) => candidate.remaining > 0);
    const { status, errcode, retryAfterMs, retryAfterHeaderSeconds, nonJson } = rule.reply;
    const headers: Record<string, string> = {};
    if (retryAfterHeaderSeconds !== undefined) headers['Retry-After'] = String(retryAfterHeaderSeconds);
    if (nonJson) return { status, body: `fake homeserver: injected ${status}`, headers, nonJson: true };
    return {
      status,
      headers,
      body: {
        errcode: errcode ?? defaultErrcode(status),
        error: `injected failure (${status})`,
        ...(retryAfterMs !== undefined ? { retry_after_ms: retryAfterMs } : {}),
      },
    };
  }

  private rateLimited(ip: string): Reply | undefined {
    const limit = this.knobs.rateLimit;
    if (!limit) return undefined;
    const now = Date.now();
    const bucket = this.buckets.get(ip) ?? { tokens: limit.burst, updatedAt: now };
    bucket.tokens = Math.min(limit.burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * limit.perSecond);
    bucket.updatedAt = now;
    this.buckets.set(ip, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return undefined;
    }
    const retryAfterMs = Math.ceil(((1 - bucket.tokens) / limit.perSecond) * 1000);
    return {
      status: 429,
      headers: { 'Retry-After': String(Math.ceil(retryAfterMs / 1000)) },
      body: { errcode: 'M_LIMIT_EXCEEDED', error: 'Too Many Requests', retry_after_ms: retryAfterMs },
    };
  }

  private armTimer(record: HandleRecord): void {
    clearTimeout(record.timer);
    if (this.closed) return;
    const remaining = Math.max(0, record.expiresAt - Date.now());
    record.timer = setTimeout(() => {
      if (record.status !== 'pending') return;
      if (Date.now() < record.expiresAt) {
        this.armTimer(record);
        return;
      }
      this.finalise(record, 'timed_out');
      if (record.kind === 'future') this.sendPrepared(record, record.onTimeout, 'timeout');
      else this.sendDelayed(record, 'delayed');
    }, Math.min(remaining, MAX_TIMER_MS));
    record.timer.unref();
  }

  private finalise(record: HandleRecord, status: HandleStatus): void {
    record.status = status;
    clearTimeout(record.timer);
    delete record.timer;
  }

  private sendPrepared(record: FutureRecord, prepared: PreparedEvent, cause: SentCause, actionName?: string): void {
    const content =
      cause !== 'send_now' && record.sendNow
        ? (substituteSendNow(prepared.spec.content, record.sendNow.eventId) as Record<string, unknown>)
        : prepared.spec.content;
    this.recordEvent({
      roomId: record.roomId,
      type: prepared.spec.type,
      content,
      cause,
      handle: record.handle,
      eventId: prepared.eventId,
      ...(prepared.spec.state_key !== undefined ? { stateKey: prepared.spec.state_key } : {}),
      ...(actionName !== undefined ? { actionName } : {}),
    });
  }

  private sendDelayed(record: DelayedRecord, cause: 'delayed' | 'action'): void {
    this.recordEvent({
      roomId: record.roomId,
      type: record.type,
      content: record.content,
      cause,
      handle: record.handle,
      eventId: newEventId(),
      ...(record.stateKey !== undefined ? { stateKey: record.stateKey } : {}),
      ...(cause === 'action' ? { actionName: 'send' } : {}),
    });
  }

  private recordEvent(event: Omit<SentEvent, 'at'>): void {
    this.sent.push({ ...event, at: Date.now() });
    if (event.stateKey === undefined) return;
    this.roomState.set(stateKeyOf(event.roomId, event.type, event.stateKey), { eventId: event.eventId, content: event.content });
    this.invalidateSupersededStateFutures(event.roomId, event.type, event.stateKey);
  }

  /** Seed: a state future with `m.send_now` is only valid while that send_now is the current state. */
  private invalidateSupersededStateFutures(roomId: string, type: string, stateKey: string): void {
    const current = this.roomState.get(stateKeyOf(roomId, type, stateKey));
    for (const record of this.records.values()) {
      if (record.kind !== 'future' || record.status !== 'pending' || !record.sendNow) continue;
      const spec = record.sendNow.spec;
      if (record.roomId !== roomId || spec.type !== type || spec.state_key !== stateKey) continue;
      if (current?.eventId !== record.sendNow.eventId) this.finalise(record, 'invalidated');
    }
  }
}

export async function startFakeHomeserver(opts?: FakeHomeserverOptions): Promise<FakeHomeserver> {
  const homeserver = new FakeHomeserver(opts);
  await homeserver.listen();
  return homeserver;
}
