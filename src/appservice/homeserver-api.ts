/**
 * What the daemon asks its own homeserver as an application service (contract section 8, facts sections 6.2-6.5):
 * which delayed-event paths it serves (`/_matrix/client/versions`, per origin, cached), a user's delayed event
 * (single lookup, or the user's list where there is none), MSC4502 `is_joined`, and MSC4512's `fed_proxy`. Every
 * call carries `Authorization: Bearer <as_token>`; those made as a user add `user_id=<mxid>`.
 */
import { Agent, request } from 'undici';
import type { Clock } from '../clock.js';
import { guardedLookup, type AddressResolver, type GuardPolicy } from '../homeserver/address-guard.js';
import { readLimited } from '../lib/read-limited.js';

const MSC4140_UNSTABLE = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';
const MSC4140_STABLE = '/_matrix/client/v1/delayed_events';
const IS_JOINED_UNSTABLE = '/_matrix/client/unstable/io.element.msc4502/rooms';
const FED_PROXY_UNSTABLE = '/_matrix/client/unstable/io.element.msc4512/appservice/fed_proxy';
/** The feature flag MSC4140 names for its stable endpoints. */
const STABLE_FLAG = 'org.matrix.msc4140.stable';
/**
 * The first spec version taken to contain MSC4140's stable endpoints. Not established (MSC4140 merged in 2026-09);
 * a homeserver that advertises it without serving them answers M_UNRECOGNIZED, and the client then falls back to
 * the unstable path for that origin.
 */
const FIRST_SPEC_VERSION_WITH_DELAYED_EVENTS = [1, 19] as const;
/** How long what `/versions` said is believed: a homeserver upgrade is picked up without a restart. */
const VERSIONS_TTL_MS = 10 * 60_000;
const LOOKUP_TIMEOUT_MS = 5_000;
const IS_JOINED_TIMEOUT_MS = 10_000;
const FED_PROXY_TIMEOUT_MS = 30_000;
const MAX_RESPONSE_BYTES = 256 * 1024;

export interface JsonAnswer {
  status: number;
  json: Record<string, unknown> | null;
}

/** A delayed event as the homeserver describes it to its owner. */
interface DelayedEventInfo {
  roomId: string;
  delayMs: number;
}

export type DelayLookup = { kind: 'found'; event: DelayedEventInfo } | { kind: 'unknown' } | { kind: 'error'; status: number | null };

export class AppserviceHomeserver {
  private readonly agent: Agent;
  /** For the operator's own URL of the homeserver (SIDECAR_CS_API_URL_OVERRIDES): it may be on a private address. */
  private readonly listedAgent: Agent;
  private readonly stable = new Map<string, { stable: boolean; until: number }>();

  /**
   * Calls to our own homeserver pass the same address guard as every homeserver call: the URL the operator set is
   * trusted like a listed origin (private addresses allowed, it is theirs); one discovered through `.well-known`
   * must resolve to a public address at every connection unless private addresses are allowed, and no cloud
   * metadata address unless listed. The as_token goes with these calls, so it must not follow a DNS answer that
   * changed after discovery.
   */
  constructor(private readonly opts: { asToken: string; clock: Clock; policy: GuardPolicy; resolve?: AddressResolver }) {
    const agentFor = (policy: GuardPolicy) => new Agent({ keepAliveTimeout: 30_000, connections: 16, connect: { timeout: 5_000, lookup: guardedLookup(policy, opts.resolve) as never } });
    this.agent = agentFor({ ...opts.policy, allow: { ...opts.policy.allow, origins: new Set() } });
    this.listedAgent = agentFor({ ...opts.policy, allowPrivateAddresses: true });
  }

  /** Does this origin serve MSC4140's stable `v1` management paths? Asked once per origin and TTL; false on errors. */
  async stablePaths(baseUrl: string): Promise<boolean> {
    const origin = new URL(baseUrl).origin;
    const now = this.opts.clock.now();
    const known = this.stable.get(origin);
    if (known && known.until > now) return known.stable;
    let stable = false;
    try {
      const a = await this.get(`${baseUrl}/_matrix/client/versions`, LOOKUP_TIMEOUT_MS, false);
      if (a.status === 200 && a.json) stable = advertisesStable(a.json);
    } catch {
      // Unreachable: the unstable path, asked again next time.
      return false;
    }
    this.stable.set(origin, { stable, until: now + VERSIONS_TTL_MS });
    return stable;
  }

  /** The homeserver served the stable path an unknown endpoint: do not use it until the TTL runs out. */
  stablePathRefused(baseUrl: string): void {
    this.stable.set(new URL(baseUrl).origin, { stable: false, until: this.opts.clock.now() + VERSIONS_TTL_MS });
  }

  /** The management path prefix for this origin. */
  async delayedEventsPath(baseUrl: string): Promise<string> {
    return (await this.stablePaths(baseUrl)) ? MSC4140_STABLE : MSC4140_UNSTABLE;
  }

  /**
   * The user's delayed event `delayId`: the single lookup, or the user's list where the homeserver has no single
   * lookup (Synapse before it: 404/405 M_UNRECOGNIZED). Another user's event is `unknown` (the homeserver answers
   * 404 for it, and it is not in this user's list).
   */
  async lookupDelay(baseUrl: string, userId: string, delayId: string): Promise<DelayLookup> {
    const prefix = await this.delayedEventsPath(baseUrl);
    const asUser = `user_id=${encodeURIComponent(userId)}`;
    let a: JsonAnswer;
    try {
      a = await this.get(`${baseUrl}${prefix}/${encodeURIComponent(delayId)}?${asUser}`, LOOKUP_TIMEOUT_MS, true);
    } catch {
      return { kind: 'error', status: null };
    }
    if (a.status === 200 && a.json) return found(a.json);
    const noSingleLookup = a.status === 405 || (a.status === 404 && a.json?.errcode !== 'M_NOT_FOUND') || a.json?.errcode === 'M_UNRECOGNIZED';
    if (a.status === 404 && !noSingleLookup) return { kind: 'unknown' };
    if (!noSingleLookup) return { kind: 'error', status: a.status };
    try {
      a = await this.get(`${baseUrl}${prefix}?${asUser}`, LOOKUP_TIMEOUT_MS, true);
    } catch {
      return { kind: 'error', status: null };
    }
    if (a.status !== 200 || !a.json) return { kind: 'error', status: a.status };
    const list = a.json.delayed_events;
    if (!Array.isArray(list)) return { kind: 'error', status: a.status };
    const entry = list.find((e): e is Record<string, unknown> => !!e && typeof e === 'object' && (e as Record<string, unknown>).delay_id === delayId);
    return entry ? found(entry) : { kind: 'unknown' };
  }

  /** MSC4502: is this user (or server) joined to the room? Throws on anything but a 2xx answer. */
  async isJoined(baseUrl: string, roomId: string, who: { mxid: string } | { serverName: string }): Promise<boolean> {
    const query = 'mxid' in who ? `mxid=${encodeURIComponent(who.mxid)}` : `server_name=${encodeURIComponent(who.serverName)}`;
    const a = await this.get(`${baseUrl}${IS_JOINED_UNSTABLE}/${encodeURIComponent(roomId)}/is_joined?${query}`, IS_JOINED_TIMEOUT_MS, true);
    if (a.status < 200 || a.status >= 300) throw new Error(`is_joined answered ${a.status}`);
    return a.json?.joined === true;
  }

  /** MSC4512's outgoing federation proxy: `{status, content}` of the remote server's answer, or throws. */
  async fedProxy(baseUrl: string, call: { destination: string; path: string; body: unknown }): Promise<JsonAnswer> {
    const res = await request(`${baseUrl}${FED_PROXY_UNSTABLE}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.opts.asToken}`, 'content-type': 'application/json', 'user-agent': 'futures-sidecar' },
      body: JSON.stringify({ destination: call.destination, method: 'POST', path: call.path, body: call.body }),
      dispatcher: this.dispatcherFor(baseUrl),
      headersTimeout: FED_PROXY_TIMEOUT_MS,
      bodyTimeout: FED_PROXY_TIMEOUT_MS,
    });
    const a = await answerOf(res.statusCode, res.body);
    if (a.status !== 200 || !a.json || typeof a.json.status !== 'number') return { status: a.status, json: null };
    const content = a.json.content;
    return { status: a.json.status, json: content && typeof content === 'object' && !Array.isArray(content) ? (content as Record<string, unknown>) : null };
  }

  async close(): Promise<void> {
    await Promise.all([this.agent.close(), this.listedAgent.close()]);
  }

  private dispatcherFor(url: string): Agent {
    return this.opts.policy.allow.origins.has(new URL(url).origin) ? this.listedAgent : this.agent;
  }

  private async get(url: string, timeoutMs: number, authenticated: boolean): Promise<JsonAnswer> {
    const headers: Record<string, string> = { 'user-agent': 'futures-sidecar' };
    if (authenticated) headers.authorization = `Bearer ${this.opts.asToken}`;
    const res = await request(url, { method: 'GET', headers, dispatcher: this.dispatcherFor(url), headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
    return answerOf(res.statusCode, res.body);
  }
}

async function answerOf(status: number, body: Parameters<typeof readLimited>[0]): Promise<JsonAnswer> {
  const { text } = await readLimited(body, MAX_RESPONSE_BYTES);
  try {
    const json = JSON.parse(text) as unknown;
    return { status, json: json && typeof json === 'object' && !Array.isArray(json) ? (json as Record<string, unknown>) : null };
  } catch {
    return { status, json: null };
  }
}

/** A lookup or list entry: its room and positive delay (`delay_ms`, or the older drafts' `delay`). */
function found(e: Record<string, unknown>): DelayLookup {
  const delay = typeof e.delay_ms === 'number' ? e.delay_ms : e.delay;
  if (typeof e.room_id !== 'string' || typeof delay !== 'number' || !(delay > 0)) return { kind: 'unknown' };
  return { kind: 'found', event: { roomId: e.room_id, delayMs: delay } };
}

/** `/versions` names the stable endpoints by their flag, or by a spec version that contains them. */
function advertisesStable(versions: Record<string, unknown>): boolean {
  const flags = versions.unstable_features;
  if (flags && typeof flags === 'object' && (flags as Record<string, unknown>)[STABLE_FLAG] === true) return true;
  const list = Array.isArray(versions.versions) ? versions.versions : [];
  const [major, minor] = FIRST_SPEC_VERSION_WITH_DELAYED_EVENTS;
  return list.some((v) => {
    const m = typeof v === 'string' ? /^v(\d+)\.(\d+)$/.exec(v) : null;
    return m !== null && (Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor));
  });
}
