import { Agent, request, type Dispatcher } from 'undici';
import type { Clock } from '../clock.js';
import type { HomeserverOutcome } from './outcome.js';
import type { DelegationSource, Dialect } from '../delegations/model.js';
import type { Metrics } from '../metrics.js';
import { checkHomeserverUrl, guardedLookup, type AddressResolver, type GuardPolicy } from './address-guard.js';
import { readLimited } from '../lib/read-limited.js';
import { OriginLimiter, type CallPriority } from './limiter.js';
import type { AppserviceHomeserver } from '../appservice/homeserver-api.js';

export interface HomeserverCall {
  op: 'refresh' | 'action';
  dialect: Dialect;
  baseUrl: string;
  token: string;
  accessToken: string | null;
  /** The futures action name (ignored by delayed events, whose one action is `send`). */
  actionName: string;
  /**
   * `compat`: the URL came from the Matrix server's own discovery (or an operator override) rather than from the
   * allow-list, so it is admitted like `*`: https and public addresses, unless listed explicitly.
   */
  source: DelegationSource;
  priority: CallPriority;
  /** Application-service mode: the Matrix user the call is made as (our as_token with `user_id=`). */
  asUser?: string | null;
}

export interface CallResult {
  outcome: HomeserverOutcome;
  /** The homeserver refused our access token (401); the call was retried without it. */
  accessTokenRejected: boolean;
}

interface Answer {
  status: number;
  errcode: string | null;
  matrixJson: boolean;
  retryAfterMs: number | undefined;
}

const REQUEST_TIMEOUT_MS = 10_000;
/**
 * How long a homeserver that refused unauthenticated management (401) is refused new standalone delegations: it
 * will not change its mind soon, but an operator who turned the requirement off is not made to restart us.
 */
const AUTH_REQUIRED_TTL_MS = 60 * 60_000;
const MAX_RESPONSE_BYTES = 64 * 1024;
const DELAYED_EVENTS_PATH = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';

/** What calls made as a user need: our as_token, and which delayed-event paths each origin serves. */
export interface AsUserCalls {
  asToken: string;
  api: Pick<AppserviceHomeserver, 'delayedEventsPath' | 'stablePathRefused'>;
}

/** What the client keeps per homeserver origin while delegations use it (see `forgetOrigin`). */
interface OriginState {
  limiter: OriginLimiter;
  /** Speaks only the later futures draft (POST). */
  futuresPost: boolean;
  /** Lacks Synapse's per-action delayed-event endpoints. */
  bodyAction: boolean;
  /** Calls started and not yet answered. */
  calls: number;
  /** No open delegation uses the origin any more: dropped when its last call is answered. */
  forgotten: boolean;
}

/**
 * Talks to homeservers in both dialects (contract section 2): per-origin keep-alive pools and rate limiters,
 * the method / endpoint fallbacks (remembered per origin), and the classification of every answer.
 */
export class HomeserverClient {
  /** For every origin not listed explicitly: resolved addresses must be public (unless allowed). */
  private readonly agent: Agent;
  /** For origins listed in SIDECAR_HOMESERVERS or the compat overrides, which may be private. */
  private readonly listedAgent: Agent;
  private readonly origins = new Map<string, OriginState>();
  /** Origins that answered an unauthenticated management call 401, until when they are believed. */
  private readonly authRequired = new Map<string, number>();

  constructor(
    private readonly opts: {
      rate: number;
      clock: Clock;
      metrics: Metrics;
      policy: GuardPolicy;
      timeoutMs?: number;
      /** Address lookups for host names (dns.lookup by default; tests inject answers). */
      resolve?: AddressResolver;
      /** Application-service mode: how calls made as a user are authenticated and addressed. */
      asUser?: AsUserCalls;
    },
  ) {
    const pool = (lookup?: unknown) =>
      new Agent({
        keepAliveTimeout: 30_000,
        connections: 16,
        headersTimeout: opts.timeoutMs ?? REQUEST_TIMEOUT_MS,
        bodyTimeout: opts.timeoutMs ?? REQUEST_TIMEOUT_MS,
        connect: { timeout: 5_000, ...(lookup ? { lookup: lookup as never } : {}) },
      });
    // The exemption for listed origins is decided per origin (scheme, host and port), not per host name: otherwise a
    // listed private host would open its every port to participants' URLs under '*'.
    this.agent = pool(guardedLookup({ ...opts.policy, allow: { ...opts.policy.allow, origins: new Set() } }, opts.resolve));
    this.listedAgent = pool(guardedLookup({ ...opts.policy, allowPrivateAddresses: true }, opts.resolve));
  }

  /**
   * Does this homeserver require authentication for delayed-event management? Known only after one of our
   * unauthenticated calls was refused 401; forgotten after a TTL.
   */
  requiresAuth(homeserver: string): boolean {
    let origin: string;
    try {
      origin = new URL(homeserver).origin;
    } catch {
      return false;
    }
    const until = this.authRequired.get(origin);
    if (until === undefined) return false;
    if (until > this.opts.clock.now()) return true;
    this.authRequired.delete(origin);
    return false;
  }

  limiterBacklog(): number {
    let n = 0;
    for (const o of this.origins.values()) n += o.limiter.backlog;
    return n;
  }

  /** How many origins the client holds state for (bounded by the origins open delegations use). */
  get originCount(): number {
    return this.origins.size;
  }

  /**
   * No open delegation uses this origin any more: drop its limiter and what was learnt of its dialect, at once or
   * when its last call in flight is answered. Without this every origin ever named would stay in memory.
   */
  forgetOrigin(origin: string): void {
    const o = this.origins.get(origin);
    if (!o) return;
    if (o.calls === 0 && o.limiter.backlog === 0) this.drop(origin, o);
    else o.forgotten = true;
  }

  private stateOf(origin: string): OriginState {
    let o = this.origins.get(origin);
    if (!o) this.origins.set(origin, (o = { limiter: new OriginLimiter(this.opts.rate, this.opts.clock), futuresPost: false, bodyAction: false, calls: 0, forgotten: false }));
    return o;
  }

  private drop(origin: string, o: OriginState): void {
    o.limiter.close();
    this.origins.delete(origin);
  }

  async call(c: HomeserverCall): Promise<CallResult> {
    const started = this.opts.clock.now();
    const result = await this.callOnce(c);
    const label = result.outcome.kind;
    this.opts.metrics.homeserverDuration.observe({ op: c.op, outcome: label }, (this.opts.clock.now() - started) / 1000);
    return result;
  }

  private async callOnce(c: HomeserverCall): Promise<CallResult> {
    const policy = c.source !== 'api' ? { ...this.opts.policy, allow: { ...this.opts.policy.allow, any: true } } : this.opts.policy;
    const refused = checkHomeserverUrl(c.baseUrl, policy);
    if (refused) return { outcome: { kind: 'permanent', detail: 'homeserver_refused' }, accessTokenRejected: false };
    const origin = new URL(c.baseUrl).origin;
    const state = this.stateOf(origin);
    state.calls++;
    state.forgotten = false;
    try {
      return await this.attempts(c, origin, state);
    } finally {
      state.calls--;
      if (state.forgotten && state.calls === 0 && state.limiter.backlog === 0 && this.origins.get(origin) === state) this.drop(origin, state);
    }
  }

  private async attempts(c: HomeserverCall, origin: string, state: OriginState): Promise<CallResult> {
    let accessToken = c.accessToken;
    let accessTokenRejected = false;
    let fellBack = false;
    const asUser = c.dialect === 'delayed_events' && c.asUser && this.opts.asUser ? { user: c.asUser, token: this.opts.asUser.asToken } : null;
    let prefix = asUser ? await this.opts.asUser!.api.delayedEventsPath(c.baseUrl) : DELAYED_EVENTS_PATH;
    for (;;) {
      const req = this.buildRequest(c, state, accessToken, prefix, asUser);
      const sentAt = this.opts.clock.now();
      // Calls made as a user are limited per user by the homeserver (and not at all for an application service
      // registered with `rate_limited: false`): they do not share the origin's one-address bucket.
      this.opts.metrics.homeserverCallsByLimit.inc({ limit: asUser ? 'as_user' : 'per_origin' });
      const answer = await this.send(req, c.priority, origin, asUser ? null : state.limiter);
      if ('network' in answer) {
        const kind = answer.network === 'address_refused' ? 'permanent' : 'retry';
        return { outcome: { kind, detail: answer.network }, accessTokenRejected };
      }
      const endpointFault = answer.status === 405 || (answer.status === 404 && (!answer.matrixJson || answer.errcode === 'M_UNRECOGNIZED')) || answer.errcode === 'M_UNRECOGNIZED';
      if (endpointFault && !fellBack) {
        fellBack = true;
        if (prefix !== DELAYED_EVENTS_PATH) {
          // Advertised but not served: the unstable path for this origin until `/versions` is asked again.
          this.opts.asUser!.api.stablePathRefused(c.baseUrl);
          prefix = DELAYED_EVENTS_PATH;
        } else if (c.dialect === 'futures') state.futuresPost = !state.futuresPost;
        else state.bodyAction = !state.bodyAction;
        continue;
      }
      if (answer.status === 401 && accessToken !== null) {
        accessToken = null;
        accessTokenRejected = true;
        continue;
      }
      if (answer.status === 401 && accessToken === null && !asUser && c.dialect === 'delayed_events') {
        this.authRequired.set(origin, this.opts.clock.now() + AUTH_REQUIRED_TTL_MS);
        this.opts.metrics.homeserverAuthRequired.inc({ op: c.op });
        return { outcome: { kind: 'permanent', detail: 'homeserver_requires_auth' }, accessTokenRejected };
      }
      return { outcome: classify(answer, sentAt), accessTokenRejected };
    }
  }

  private buildRequest(
    c: HomeserverCall,
    origin: Pick<OriginState, 'futuresPost' | 'bodyAction'>,
    accessToken: string | null,
    prefix: string,
    asUser: { user: string; token: string } | null,
  ): { url: string; method: 'PUT' | 'POST'; body: string; headers: Record<string, string> } {
    const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'futures-sidecar' };
    if (c.dialect === 'futures') {
      const path = c.op === 'refresh' ? '/_matrix/client/v3/futures/refresh' : `/_matrix/client/v3/futures/action/${encodeURIComponent(c.actionName)}`;
      return { url: c.baseUrl + path, method: origin.futuresPost ? 'POST' : 'PUT', body: JSON.stringify({ future_token: c.token }), headers };
    }
    if (accessToken !== null) headers.authorization = `Bearer ${accessToken}`;
    if (asUser) headers.authorization = `Bearer ${asUser.token}`;
    const query = asUser ? `?user_id=${encodeURIComponent(asUser.user)}` : '';
    const verb = c.op === 'refresh' ? 'restart' : 'send';
    const id = encodeURIComponent(c.token);
    if (origin.bodyAction) return { url: `${c.baseUrl}${prefix}/${id}${query}`, method: 'POST', body: JSON.stringify({ action: verb }), headers };
    return { url: `${c.baseUrl}${prefix}/${id}/${verb}${query}`, method: 'POST', body: '{}', headers };
  }

  private async send(
    req: { url: string; method: 'PUT' | 'POST'; body: string; headers: Record<string, string> },
    priority: CallPriority,
    origin: string,
    limiter: OriginLimiter | null,
  ): Promise<Answer | { network: string }> {
    await limiter?.acquire(priority);
    let res: Dispatcher.ResponseData;
    try {
      const dispatcher = this.opts.policy.allow.origins.has(origin) ? this.listedAgent : this.agent;
      res = await request(req.url, { method: req.method, headers: req.headers, body: req.body, dispatcher });
    } catch (err) {
      return { network: networkReason(err) };
    }
    let text: string;
    try {
      text = (await readLimited(res.body, MAX_RESPONSE_BYTES)).text;
    } catch (err) {
      return { network: networkReason(err) };
    }
    let errcode: string | null = null;
    let matrixJson = false;
    let retryAfterMs: number | undefined;
    try {
      const json = JSON.parse(text) as unknown;
      if (json && typeof json === 'object' && !Array.isArray(json)) {
        const o = json as Record<string, unknown>;
        matrixJson = typeof o.errcode === 'string' || res.statusCode < 300;
        if (typeof o.errcode === 'string') errcode = o.errcode;
        if (typeof o.retry_after_ms === 'number' && o.retry_after_ms >= 0) retryAfterMs = o.retry_after_ms;
      }
    } catch {
      matrixJson = false;
    }
    const header = res.headers['retry-after'];
    if (retryAfterMs === undefined && typeof header === 'string' && /^\d+$/.test(header.trim())) retryAfterMs = Number(header.trim()) * 1000;
    if (res.statusCode === 429) limiter?.throttle();
    return { status: res.statusCode, errcode, matrixJson, retryAfterMs };
  }

  async close(): Promise<void> {
    for (const o of this.origins.values()) o.limiter.close();
    await Promise.all([this.agent.close(), this.listedAgent.close()]);
  }
}

function classify(a: Answer, sentAt: number): HomeserverOutcome {
  const s = a.status;
  if (s >= 200 && s < 300) return { kind: 'ok', sentAt };
  if ((s === 404 && a.errcode === 'M_NOT_FOUND') || s === 409) return { kind: 'finalised', detail: `${s}_${a.errcode ?? 'no_errcode'}` };
  if (s === 404 || s === 405 || a.errcode === 'M_UNRECOGNIZED') return { kind: 'retry', detail: `endpoint_fault_${s}` };
  if (s === 429) return { kind: 'retry', detail: 'rate_limited', retryAfterMs: a.retryAfterMs ?? 1000 };
  if (s >= 500 || s < 200) return { kind: 'retry', detail: `status_${s}` };
  if (s >= 300 && s < 400) return { kind: 'permanent', detail: `redirect_${s}` };
  return { kind: 'permanent', detail: a.errcode ?? `status_${s}` };
}

function networkReason(err: unknown): string {
  const code = (err as { code?: string }).code;
  if (code === 'E_ADDRESS_REFUSED') return 'address_refused';
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') return 'timeout';
  return 'network_error';
}
