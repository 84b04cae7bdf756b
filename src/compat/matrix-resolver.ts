/**
 * The Matrix side of Element Call's delegation request: who the OpenID token belongs to (asked of the user's
 * homeserver over federation) and where that homeserver's client-server API lives. Every outgoing request goes
 * through the SSRF guard: IP literals are checked before connecting, host names at connect time.
 */
import type { SrvRecord } from 'node:dns';
import { Resolver, lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { Agent, request, type Dispatcher } from 'undici';
import { systemClock, type Clock } from '../clock.js';
import { normaliseBaseUrl } from '../config.js';
import { guardedLookup, isMetadataAddress, isPrivateAddress, type GuardPolicy } from '../homeserver/address-guard.js';
import { readLimited } from '../lib/read-limited.js';

const REQUEST_TIMEOUT_MS = 30_000;
const CONNECT_TIMEOUT_MS = 5_000;
const MAX_RESPONSE_BYTES = 64 * 1024;
const DEFAULT_FEDERATION_PORT = 8448;
/** lk-jwt-service keeps discovered client-server API URLs for 4 h. */
const CS_API_CACHE_MS = 4 * 60 * 60 * 1000;
/** Entries only arrive after a successful OpenID lookup, so this is a safety net, not a working limit. */
const CS_API_CACHE_MAX = 10_000;
const FEDERATION_SRV_SERVICES = ['_matrix-fed._tcp', '_matrix._tcp'] as const;
/**
 * lk-jwt-service keeps a server's discovered federation address for 1 h (definitive answers only): without it every
 * OpenID lookup of a server named without a port would first cost a `.well-known` fetch and SRV queries.
 */
const FEDERATION_CACHE_MS = 60 * 60 * 1000;
const FEDERATION_CACHE_MAX = 10_000;
const NO_RECORD_CODES = new Set(['ENODATA', 'ENOTFOUND']);

/** A lookup failed; `reason` is short, stable and safe to log (never a token or a URL with a query). */
export class MatrixLookupError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'MatrixLookupError';
  }
}

/** A Matrix server name split per the spec's grammar (`hostname [":" port]`, IPv6 in brackets). */
export interface ServerName {
  /** Host without brackets. */
  host: string;
  port: number | null;
  ip: boolean;
}

export function parseServerName(raw: string): ServerName | null {
  let host: string;
  let rest: string;
  if (raw.startsWith('[')) {
    const end = raw.indexOf(']');
    if (end < 0) return null;
    host = raw.slice(1, end);
    rest = raw.slice(end + 1);
    // The grammar's IPv6address has no zone id (`%25lo`), which node:net accepts but a URL does not.
    if (isIP(host) !== 6 || host.includes('%')) return null;
  } else {
    const colon = raw.indexOf(':');
    host = colon < 0 ? raw : raw.slice(0, colon);
    rest = colon < 0 ? '' : raw.slice(colon);
    if (isIP(host) !== 4 && !/^[A-Za-z0-9.-]{1,255}$/.test(host)) return null;
  }
  let port: number | null = null;
  if (rest !== '') {
    if (!/^:\d{1,5}$/.test(rest)) return null;
    port = Number(rest.slice(1));
    if (port < 1 || port > 65535) return null;
  }
  return { host, port, ip: isIP(host) !== 0 };
}

/** `host[:port]` for a URL authority, with brackets around IPv6. */
function authority(host: string, port: number | null): string {
  const h = isIP(host) === 6 ? `[${host}]` : host;
  return port === null ? h : `${h}:${port}`;
}

/** Where to send federation requests for a server name, and which name the TLS certificate must carry. */
export interface FederationTarget {
  /** Scheme, host and port to connect to. */
  base: string;
  /** `Host` header (undici also takes the TLS server name from it); null = the URL's own authority. */
  hostHeader: string | null;
  how: 'override' | 'ip_or_port' | 'well_known' | 'srv' | 'default_port';
}

export interface CsApiBase {
  url: string;
  /** Operator-configured (trusted like an explicitly listed origin) or found through `.well-known/matrix/client`. */
  how: 'override' | 'discovered';
}

export interface MatrixResolverOptions {
  federationOverrides: ReadonlyMap<string, string>;
  csApiOverrides: ReadonlyMap<string, string>;
  allowPrivateAddresses: boolean;
  /**
   * Server names the operator listed (SIDECAR_HOMESERVERS / LIVEKIT_FULL_ACCESS_HOMESERVERS): their federation
   * lookups may reach private addresses, as the operator named them (contract section 7). Default: none.
   */
  listedServerNames?: ReadonlySet<string>;
  clock?: Clock;
  /** SRV lookups; injectable so discovery is testable without DNS. */
  resolveSrv?: (name: string) => Promise<SrvRecord[]>;
  /** Address lookups of discovered client-server API hosts; injectable like `resolveSrv`. */
  lookupAll?: (host: string) => Promise<string[]>;
  /** Origin of a host's `.well-known` documents; tests point it at a plain-http fake. Default `https://<host>`. */
  wellKnownOrigin?: (serverAuthority: string) => string;
  /** Scheme of discovered federation addresses; `http` only for tests against a plain-http fake. */
  federationScheme?: 'https' | 'http';
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  random?: () => number;
}

interface JsonAnswer {
  status: number;
  json: unknown;
}

export class MatrixResolver {
  private readonly agent: Agent;
  /** For the federation lookups of listed server names, which may resolve to private addresses. */
  private readonly listedAgent: Agent;
  private readonly trustedOrigins: Set<string>;
  private readonly csApiCache = new Map<string, { url: string; expiresAt: number }>();
  private readonly federationCache = new Map<string, { target: FederationTarget; expiresAt: number }>();
  private readonly clock: Clock;
  private readonly resolveSrv: (name: string) => Promise<SrvRecord[]>;
  private readonly lookupAll: (host: string) => Promise<string[]>;
  private readonly requestTimeoutMs: number;

  constructor(private readonly opts: MatrixResolverOptions) {
    this.clock = opts.clock ?? systemClock;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    this.trustedOrigins = new Set([...opts.federationOverrides.values(), ...opts.csApiOverrides.values()].map((u) => new URL(u).origin));
    // Overrides are the operator's own addresses and may be private; everything else must be public unless
    // private addresses are allowed. `guardedLookup` covers host names; IP literals are checked in `get`.
    const policy: GuardPolicy = {
      allow: { any: true, origins: this.trustedOrigins, serverNames: new Set() },
      allowPrivateAddresses: opts.allowPrivateAddresses,
      allowHttp: false,
    };
    const timeout = this.requestTimeoutMs;
    const agentFor = (p: GuardPolicy) =>
      new Agent({
        headersTimeout: timeout,
        bodyTimeout: timeout,
        keepAliveTimeout: 10_000,
        connect: { timeout: opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS, lookup: guardedLookup(p) as never },
      });
    this.agent = agentFor(policy);
    this.listedAgent = agentFor({ ...policy, allowPrivateAddresses: true });
    const dns = new Resolver({ timeout: CONNECT_TIMEOUT_MS, tries: 2 });
    this.resolveSrv = opts.resolveSrv ?? ((name) => dns.resolveSrv(name));
    this.lookupAll = opts.lookupAll ?? (async (host) => (await dnsLookup(host, { all: true })).map((a) => a.address));
  }

  /**
   * Asks the user's homeserver whom the OpenID token belongs to; returns the user ID after checking that it lives
   * on `serverName`.
   */
  async verifyOpenId(serverName: string, accessToken: string): Promise<string> {
    const listed = this.isListed(serverName);
    const target = await this.federationTarget(serverName, listed);
    const url = `${target.base}/_matrix/federation/v1/openid/userinfo?access_token=${encodeURIComponent(accessToken)}`;
    const answer = await this.get(url, target.hostHeader, listed);
    if (answer.status !== 200) throw new MatrixLookupError(`userinfo answered ${answer.status}`);
    const sub = isObject(answer.json) ? answer.json['sub'] : undefined;
    if (typeof sub !== 'string' || !sub.startsWith('@') || !sub.includes(':')) throw new MatrixLookupError('userinfo answered without a user id');
    if (sub.slice(sub.indexOf(':') + 1) !== serverName) throw new MatrixLookupError('userinfo named a user of another server');
    return sub;
  }

  /** Server discovery as in the Matrix server-server spec, section "Resolving server names". */
  async federationTarget(serverName: string, listed = this.isListed(serverName)): Promise<FederationTarget> {
    const override = this.opts.federationOverrides.get(serverName.toLowerCase());
    if (override) return { base: override, hostHeader: null, how: 'override' };
    const name = parseServerName(serverName);
    if (!name) throw new MatrixLookupError('invalid server name');
    if (name.ip || name.port !== null) {
      return { base: this.federationBase(name.host, name.port ?? DEFAULT_FEDERATION_PORT), hostHeader: serverName, how: 'ip_or_port' };
    }
    const key = serverName.toLowerCase();
    const now = this.clock.now();
    const cached = this.federationCache.get(key);
    if (cached && cached.expiresAt > now) return cached.target;
    if (cached) this.federationCache.delete(key);
    const found = await this.discoverFederation(serverName, name, listed);
    if (found.definitive) {
      if (this.federationCache.size >= FEDERATION_CACHE_MAX) this.federationCache.delete(this.federationCache.keys().next().value as string);
      this.federationCache.set(key, { target: found.target, expiresAt: now + FEDERATION_CACHE_MS });
    }
    return found.target;
  }

  /** `definitive`: every answer it rests on came from the server or DNS (a transport failure may pass). */
  private async discoverFederation(serverName: string, name: ServerName, listed: boolean): Promise<{ target: FederationTarget; definitive: boolean }> {
    const wellKnown = await this.wellKnownServer(serverName, listed);
    const delegated = wellKnown.server;
    if (delegated) {
      const d = parseServerName(delegated);
      if (d) {
        if (d.ip || d.port !== null) return { target: { base: this.federationBase(d.host, d.port ?? DEFAULT_FEDERATION_PORT), hostHeader: delegated, how: 'well_known' }, definitive: true };
        const srv = await this.srvOrDefault(d.host);
        return { target: srv.target, definitive: srv.definitive };
      }
    }
    const srv = await this.srvOrDefault(name.host);
    return { target: srv.target, definitive: wellKnown.definitive && srv.definitive };
  }

  /** The client-server API base URL of a server: override, then cache, then `.well-known/matrix/client`. */
  async csApiBaseUrl(serverName: string): Promise<CsApiBase> {
    const key = serverName.toLowerCase();
    const override = this.opts.csApiOverrides.get(key);
    if (override) return { url: override, how: 'override' };
    const now = this.clock.now();
    const cached = this.csApiCache.get(key);
    if (cached && cached.expiresAt > now) return { url: cached.url, how: 'discovered' };
    if (cached) this.csApiCache.delete(key);
    if (!parseServerName(serverName)) throw new MatrixLookupError('invalid server name');
    const answer = await this.get(`${this.wellKnownOrigin(serverName)}/.well-known/matrix/client`, null);
    if (answer.status !== 200) throw new MatrixLookupError(`.well-known/matrix/client answered ${answer.status}`);
    const hs = isObject(answer.json) ? answer.json['m.homeserver'] : undefined;
    const raw = isObject(hs) ? hs['base_url'] : undefined;
    const url = typeof raw === 'string' ? normaliseBaseUrl(raw) : null;
    if (!url) throw new MatrixLookupError('.well-known/matrix/client has no usable m.homeserver.base_url');
    await this.refusePrivateHost(url);
    if (this.csApiCache.size >= CS_API_CACHE_MAX) this.csApiCache.delete(this.csApiCache.keys().next().value as string);
    this.csApiCache.set(key, { url, expiresAt: now + CS_API_CACHE_MS });
    return { url, how: 'discovered' };
  }

  async close(): Promise<void> {
    await Promise.all([this.agent.close(), this.listedAgent.close()]);
  }

  private isListed(serverName: string): boolean {
    return this.opts.listedServerNames?.has(serverName.toLowerCase()) ?? false;
  }

  private federationBase(host: string, port: number): string {
    return `${this.opts.federationScheme ?? 'https'}://${authority(host, port)}`;
  }

  private wellKnownOrigin(serverAuthority: string): string {
    return this.opts.wellKnownOrigin ? this.opts.wellKnownOrigin(serverAuthority) : `https://${serverAuthority}`;
  }

  private async wellKnownServer(serverName: string, listed: boolean): Promise<{ server: string | null; definitive: boolean }> {
    let answer: JsonAnswer;
    try {
      answer = await this.get(`${this.wellKnownOrigin(serverName)}/.well-known/matrix/server`, null, listed);
    } catch {
      return { server: null, definitive: false };
    }
    if (answer.status !== 200 || !isObject(answer.json)) return { server: null, definitive: true };
    const server = answer.json['m.server'];
    return { server: typeof server === 'string' && parseServerName(server) ? server : null, definitive: true };
  }

  private async srvOrDefault(host: string): Promise<{ target: FederationTarget; definitive: boolean }> {
    let definitive = true;
    for (const service of FEDERATION_SRV_SERVICES) {
      let records: SrvRecord[];
      try {
        records = await this.resolveSrv(`${service}.${host}`);
      } catch (err) {
        // "No such record" is an answer; a timeout or a refused query is not.
        if (!NO_RECORD_CODES.has((err as { code?: string }).code ?? '')) definitive = false;
        continue;
      }
      const chosen = pickSrv(records, this.opts.random ?? Math.random);
      if (chosen) return { target: { base: this.federationBase(chosen.name, chosen.port), hostHeader: host, how: 'srv' }, definitive: true };
    }
    return { target: { base: this.federationBase(host, DEFAULT_FEDERATION_PORT), hostHeader: host, how: 'default_port' }, definitive };
  }

  /** A discovered URL's host must not resolve to a private address now (the homeserver client checks again at connect). */
  private async refusePrivateHost(url: string): Promise<void> {
    if (this.opts.allowPrivateAddresses) return;
    const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
    if (isIP(host)) return;
    let addresses: string[];
    try {
      addresses = await this.lookupAll(host);
    } catch {
      throw new MatrixLookupError('the client-server API host does not resolve');
    }
    if (addresses.length === 0 || addresses.some((a) => isPrivateAddress(a))) throw new MatrixLookupError('the client-server API host resolves to a private address');
  }

  /** `url` may hold a token (the OpenID userinfo query): it must never reach an error or a log line. */
  private async get(url: string, hostHeader: string | null, listed = false): Promise<JsonAnswer> {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new MatrixLookupError('not a valid URL');
    }
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const trusted = this.trustedOrigins.has(u.origin);
    if (isIP(host) && isMetadataAddress(host) && !trusted) throw new MatrixLookupError('cloud metadata addresses are refused');
    if (isIP(host) && isPrivateAddress(host) && !listed && !this.opts.allowPrivateAddresses && !trusted) {
      throw new MatrixLookupError('private and loopback addresses are refused');
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, {
        method: 'GET',
        headers: { accept: 'application/json', 'user-agent': 'futures-sidecar', ...(hostHeader ? { host: hostHeader } : {}) },
        dispatcher: listed ? this.listedAgent : this.agent,
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
    } catch (err) {
      throw new MatrixLookupError(networkReason(err));
    }
    let text: string;
    try {
      const body = await readLimited(res.body, MAX_RESPONSE_BYTES);
      if (body.truncated) throw new MatrixLookupError('response too large');
      text = body.text;
    } catch (err) {
      throw new MatrixLookupError(err instanceof MatrixLookupError ? err.reason : networkReason(err));
    }
    let json: unknown;
    try {
      json = JSON.parse(text) as unknown;
    } catch {
      json = null;
    }
    return { status: res.statusCode, json };
  }
}

/** RFC 2782: lowest priority first, then a weighted random choice; a lone "." target means "no service". */
export function pickSrv(records: readonly SrvRecord[], random: () => number): { name: string; port: number } | null {
  const usable = records.filter((r) => r.name !== '' && r.name !== '.');
  if (usable.length === 0) return null;
  const best = Math.min(...usable.map((r) => r.priority));
  const candidates = usable.filter((r) => r.priority === best);
  const total = candidates.reduce((sum, r) => sum + r.weight, 0);
  let chosen = candidates[0]!;
  if (total > 0) {
    let point = random() * total;
    for (const r of candidates) {
      point -= r.weight;
      if (point < 0) {
        chosen = r;
        break;
      }
    }
  }
  return { name: chosen.name.replace(/\.$/, ''), port: chosen.port };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function networkReason(err: unknown): string {
  const e = err as { code?: string; name?: string };
  if (e.code === 'E_ADDRESS_REFUSED') return 'address refused by the SSRF guard';
  if (e.name === 'TimeoutError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (e.code === 'UND_ERR_CONNECT_TIMEOUT') return 'connect timeout';
  return typeof e.code === 'string' && /^[A-Z_]{1,40}$/.test(e.code) ? `network error ${e.code}` : 'network error';
}

