/**
 * Configuration from the environment (and a few flags), validated once at start-up. `--dev` only fills in
 * defaults; anything set explicitly still holds (contract section 4).
 */
import { nameTheirs, translateLkJwtEnv, type AppserviceSettings } from './lk-jwt-env.js';
import { parseSentinelUrl } from './store/sentinel-url.js';
import { DEFAULT_REDIS_PREFIX } from './store/redis-keys.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface HomeserverAllowList {
  any: boolean;
  /** Origins given with a scheme (`https://hs.example`), matched against a delegation's homeserver URL. */
  origins: Set<string>;
  /** Matrix server names (no scheme), matched against the compat route's `matrix_server_name`. */
  serverNames: Set<string>;
}

export interface Config {
  dev: boolean;
  host: string;
  port: number;
  livekitUrl: string;
  livekitKeys: Map<string, string>;
  store: { kind: 'sqlite'; path: string } | { kind: 'redis'; url: string };
  homeservers: HomeserverAllowList;
  allowPrivateAddresses: boolean;
  /** Plain http to homeservers: only in --dev or for explicitly listed http origins. */
  allowHttp: boolean;
  adminToken: string | null;
  tokenKey: Buffer | null;
  tokenOldKeys: Buffer[];
  reconnectGraceMs: number;
  joinTimeoutMs: number;
  refreshAt: number;
  /** The `time_left` refresh policy's margin (time left before the expiry at each refresh); null: `fraction`. */
  refreshMarginMs: number | null;
  minTimeoutMs: number;
  maxTimeoutMs: number;
  homeserverRate: number;
  reconcileIntervalMs: number;
  maxDelegationsPerIdentity: number;
  maxDelegationsPerRoom: number;
  rateLimitPerMinute: number;
  rateLimitPerIdentityPerMinute: number;
  /** Fastify's trustProxy: which proxies may set X-Forwarded-For (false, true, or a list of addresses / CIDRs). */
  trustProxy: boolean | string[];
  shutdownTimeoutMs: number;
  csApiUrlOverrides: Map<string, string>;
  federationUrlOverrides: Map<string, string>;
  logLevel: LogLevel;
  sqliteSynchronous: 'NORMAL' | 'FULL';
  /** The LiveKit API key that signs the tokens we issue and our RoomService calls. */
  livekitSigningKey: string;
  /** Tokens grant `canUpdateOwnMetadata` (lk-jwt-service's LIVEKIT_CAN_UPDATE_OWN_METADATA). */
  canUpdateOwnMetadata: boolean;
  /** Restricted users' tokens may publish too (legacy federated calls); off as in lk-jwt-service and MSC4195. */
  restrictedUsersCanPublish: boolean;
  /** No certificate checks on outgoing HTTPS (LIVEKIT_INSECURE_SKIP_VERIFY_TLS). */
  tlsSkipVerify: boolean;
  /** Start-up warnings about settings that were ignored or are deprecated. */
  notices: string[];
  /** Key prefix in Redis, so several deployments can share one Redis. */
  redisPrefix: string;
  /** Shard lease time: a dead replica's delegations are taken over within about this long. */
  redisLeaseMs: number;
  /**
   * Test only (`--dev` with SIDECAR_TEST_IGNORE_LEASE_LOSS=1): a replica keeps acting on shards whose leases it lost,
   * so that tests can show the store's write fence alone keeps it from acting twice.
   */
  redisIgnoreLeaseLoss: boolean;
  /** Longest a request may take to arrive (headers and body); a stalled client is cut after it. */
  requestTimeoutMs: number;
  /** Bytes the in-memory delegation history (operator console) may hold. */
  historyMaxBytes: number;
  /** Homeserver origins that may have open delegations at once (each holds a limiter and a connection pool). */
  maxHomeserverOrigins: number;
  /** Application-service mode behind the homeserver (contract section 8), or null when standalone. */
  appservice: AppserviceSettings | null;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** `time_left`: refresh when SIDECAR_REFRESH_MARGIN_MS is left before the expiry; `fraction`: SIDECAR_REFRESH_AT alone. */
const REFRESH_POLICIES: readonly string[] = ['time_left', 'fraction'];
/** lk-jwt-service's margin at 2 h delays (it restarts at 80 % of the delay): the homeserver outage a delegation survives. */
export const DEFAULT_REFRESH_MARGIN_MS = 24 * 60_000;

/** Flags that mirror environment variables. */
const FLAG_TO_ENV: Record<string, string> = {
  '--host': 'SIDECAR_HOST',
  '--port': 'SIDECAR_PORT',
  '--store': 'SIDECAR_STORE',
  '--livekit-url': 'LIVEKIT_URL',
  '--homeservers': 'SIDECAR_HOMESERVERS',
  '--log-level': 'LOG_LEVEL',
};

export const USAGE = `Usage: futures-sidecar [--dev] [--host H] [--port P] [--store sqlite:PATH|redis://...|redis+sentinel://...]
                       [--livekit-url URL] [--homeservers LIST] [--log-level LEVEL]
Every setting is also an environment variable (see README.md, "Configuration"). --dev fills in
development defaults (LiveKit's devkey: secret, SQLite under ./data, loopback, any homeserver).`;

export interface ParsedArgs {
  dev: boolean;
  help: boolean;
  env: Record<string, string | undefined>;
}

export function parseArgs(argv: readonly string[], env: Record<string, string | undefined>): ParsedArgs {
  const merged = { ...env };
  let dev = false;
  let help = false;
  const problems: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--dev') dev = true;
    else if (arg === '--help' || arg === '-h') help = true;
    else {
      const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
      const envName = FLAG_TO_ENV[flag];
      if (!envName) {
        problems.push(`unknown argument ${JSON.stringify(arg)}`);
        continue;
      }
      const value = inline ?? argv[++i];
      if (value === undefined) problems.push(`${flag} needs a value`);
      else merged[envName] = value;
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return { dev, help, env: merged };
}

export function loadConfig(input: Record<string, string | undefined>, opts: { dev: boolean; readFile?: (path: string) => string }): Config {
  // lk-jwt-service's environment works unchanged: it is translated into ours first (contract section 7).
  const lk = translateLkJwtEnv(input, opts.readFile);
  const env = lk.env;
  const problems: string[] = [];
  const dev = opts.dev;
  const get = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };

  const int = (name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = get(name);
    if (raw === undefined) return def;
    if (!/^\d+$/.test(raw)) {
      problems.push(`${name} must be a whole number, got ${JSON.stringify(raw)}`);
      return def;
    }
    const n = Number(raw);
    if (n < min || n > max) problems.push(`${name} must be between ${min} and ${max}, got ${n}`);
    return n;
  };
  const num = (name: string, def: number, min: number, max: number, exclusiveMin = false): number => {
    const raw = get(name);
    if (raw === undefined) return def;
    const n = Number(raw);
    if (!Number.isFinite(n) || !/^[0-9.eE+-]+$/.test(raw)) {
      problems.push(`${name} must be a number, got ${JSON.stringify(raw)}`);
      return def;
    }
    if ((exclusiveMin ? n <= min : n < min) || n > max) {
      problems.push(`${name} must be ${exclusiveMin ? 'greater than' : 'at least'} ${min} and at most ${max}, got ${n}`);
    }
    return n;
  };
  const bool = (name: string, def: boolean): boolean => {
    const raw = get(name);
    if (raw === undefined) return def;
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    problems.push(`${name} must be true or false, got ${JSON.stringify(raw)}`);
    return def;
  };

  const host = get('SIDECAR_HOST') ?? (dev ? '127.0.0.1' : '0.0.0.0');
  const port = int('SIDECAR_PORT', 8089, 0, 65535);

  const livekitUrl = get('LIVEKIT_URL') ?? 'http://127.0.0.1:7880';
  if (!/^(https?|wss?):\/\/[^/\s]+/i.test(livekitUrl)) problems.push(`LIVEKIT_URL must be an http(s) or ws(s) URL, got ${JSON.stringify(livekitUrl)}`);

  const livekitKeys = new Map<string, string>();
  const keysRaw = get('LIVEKIT_KEYS');
  const apiKey = get('LIVEKIT_API_KEY');
  const apiSecret = get('LIVEKIT_API_SECRET');
  if (keysRaw !== undefined) {
    for (const line of keysRaw.split(/\r?\n/)) {
      if (!line.trim() || line.trim().startsWith('#')) continue;
      const idx = line.indexOf(':');
      const key = idx > 0 ? line.slice(0, idx).trim() : '';
      const secret = idx > 0 ? line.slice(idx + 1).trim() : '';
      if (!key || !secret) problems.push('LIVEKIT_KEYS must hold "key: secret" lines (a line could not be read; its content is not shown)');
      else livekitKeys.set(key, secret);
    }
  }
  if (apiKey !== undefined || apiSecret !== undefined) {
    if (!apiKey || !apiSecret) problems.push('LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be set together');
    else livekitKeys.set(apiKey, apiSecret);
  }
  if (livekitKeys.size === 0) {
    if (dev) livekitKeys.set('devkey', 'secret');
    else problems.push('LIVEKIT_KEYS (or LIVEKIT_API_KEY + LIVEKIT_API_SECRET) is required');
  }

  const storeRaw = get('SIDECAR_STORE') ?? 'sqlite:./data/futures-sidecar.db';
  let store: Config['store'] = { kind: 'sqlite', path: './data/futures-sidecar.db' };
  if (storeRaw.startsWith('sqlite:')) {
    const path = storeRaw.slice('sqlite:'.length);
    if (!path) problems.push('SIDECAR_STORE sqlite: needs a path, e.g. sqlite:./data/futures-sidecar.db');
    store = { kind: 'sqlite', path };
  } else if (/^rediss?:\/\//.test(storeRaw)) {
    store = { kind: 'redis', url: storeRaw };
  } else if (storeRaw.startsWith('redis+sentinel://')) {
    try {
      parseSentinelUrl(storeRaw);
      store = { kind: 'redis', url: storeRaw };
    } catch (err) {
      problems.push(`SIDECAR_STORE: ${(err as Error).message}`);
    }
  } else {
    problems.push(`SIDECAR_STORE must be sqlite:<path>, redis://... or redis+sentinel://host:port,.../master, got ${JSON.stringify(storeRaw.replace(/\/\/[^@/]*@/, '//***@'))}`);
  }

  const homeservers: HomeserverAllowList = { any: false, origins: new Set(), serverNames: new Set() };
  // Behind a homeserver, that homeserver is the one served unless the operator lists more.
  const hsRaw = get('SIDECAR_HOMESERVERS') ?? (dev ? '*' : lk.settings.appservice?.serverName);
  if (hsRaw === undefined) problems.push('SIDECAR_HOMESERVERS is required (origins like https://matrix.example, server names like example.org, or *)');
  else {
    for (const entry of hsRaw.split(/[\s,]+/).filter(Boolean)) {
      if (entry === '*') homeservers.any = true;
      else if (entry.includes('://')) {
        const origin = normaliseOrigin(entry);
        if (!origin) problems.push(`SIDECAR_HOMESERVERS: ${JSON.stringify(entry)} is not an http(s) origin`);
        else homeservers.origins.add(origin);
      } else if (/^[a-z0-9.-]+(:\d+)?$/i.test(entry) || /^\[[0-9a-f:.]+\](:\d+)?$/i.test(entry)) {
        homeservers.serverNames.add(entry.toLowerCase());
      } else problems.push(`SIDECAR_HOMESERVERS: ${JSON.stringify(entry)} is neither an origin, a server name nor *`);
    }
  }

  const allowPrivateAddresses = bool('SIDECAR_ALLOW_PRIVATE_ADDRESSES', dev);

  const adminToken = get('SIDECAR_ADMIN_TOKEN') ?? null;
  if (adminToken !== null && adminToken.length < 16) problems.push('SIDECAR_ADMIN_TOKEN must be at least 16 characters');

  const parseKey = (name: string, raw: string): Buffer | null => {
    const buf = Buffer.from(raw, 'base64');
    if (buf.length !== 32 || !/^[A-Za-z0-9+/]+=*$/.test(raw)) {
      problems.push(`${name} must be 32 bytes in base64 (openssl rand -base64 32)`);
      return null;
    }
    return buf;
  };
  const tokenKeyRaw = get('SIDECAR_TOKEN_KEY');
  const tokenKey = tokenKeyRaw === undefined ? null : parseKey('SIDECAR_TOKEN_KEY', tokenKeyRaw);
  const tokenOldKeys = (get('SIDECAR_TOKEN_OLD_KEYS') ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((k) => parseKey('SIDECAR_TOKEN_OLD_KEYS', k))
    .filter((k): k is Buffer => k !== null);

  const reconnectGraceMs = int('SIDECAR_RECONNECT_GRACE_MS', 10_000, 0, 3_600_000);
  const joinTimeoutMs = int('SIDECAR_JOIN_TIMEOUT_MS', 300_000, 1_000, 86_400_000);
  const refreshAt = num('SIDECAR_REFRESH_AT', 0.5, 0.05, 0.9);
  const refreshPolicy = get('SIDECAR_REFRESH_POLICY') ?? 'time_left';
  if (!REFRESH_POLICIES.includes(refreshPolicy)) problems.push(`SIDECAR_REFRESH_POLICY must be one of ${REFRESH_POLICIES.join(', ')}, got ${JSON.stringify(refreshPolicy)}`);
  const refreshMarginRaw = int('SIDECAR_REFRESH_MARGIN_MS', DEFAULT_REFRESH_MARGIN_MS, 1_000, 30 * 86_400_000);
  const refreshMarginMs = refreshPolicy === 'time_left' ? refreshMarginRaw : null;
  const minTimeoutMs = int('SIDECAR_MIN_TIMEOUT_MS', dev ? 1_000 : 60_000, 1_000);
  const maxTimeoutMs = int('SIDECAR_MAX_TIMEOUT_MS', 86_400_000, 1_000, 30 * 86_400_000);
  if (minTimeoutMs > maxTimeoutMs) problems.push(`SIDECAR_MIN_TIMEOUT_MS (${minTimeoutMs}) must not exceed SIDECAR_MAX_TIMEOUT_MS (${maxTimeoutMs})`);
  const homeserverRate = num('SIDECAR_HOMESERVER_RATE', 1, 0, 10_000, true);
  const reconcileIntervalMs = int('SIDECAR_RECONCILE_INTERVAL_MS', 30_000, 1_000);
  const maxDelegationsPerIdentity = int('SIDECAR_MAX_DELEGATIONS_PER_IDENTITY', 10, 1);
  const maxDelegationsPerRoom = int('SIDECAR_MAX_DELEGATIONS_PER_ROOM', 5_000, 1);
  const rateLimitPerMinute = int('SIDECAR_RATE_LIMIT_PER_MINUTE', 600, 1);
  const rateLimitPerIdentityPerMinute = int('SIDECAR_RATE_LIMIT_PER_IDENTITY_PER_MINUTE', 60, 1);
  const trustProxyRaw = get('SIDECAR_TRUST_PROXY');
  let trustProxy: boolean | string[] = false;
  if (trustProxyRaw !== undefined) {
    if (/^(1|true|yes|on)$/i.test(trustProxyRaw)) trustProxy = true;
    else if (/^(0|false|no|off)$/i.test(trustProxyRaw)) trustProxy = false;
    else {
      trustProxy = trustProxyRaw.split(',').map((x) => x.trim()).filter(Boolean);
      for (const entry of trustProxy) {
        if (!/^[0-9a-f.:]+(\/\d{1,3})?$/i.test(entry)) problems.push(`SIDECAR_TRUST_PROXY must be true, false or a comma list of addresses/CIDRs, got ${JSON.stringify(entry)}`);
      }
    }
  }
  const shutdownTimeoutMs = int('SIDECAR_SHUTDOWN_TIMEOUT_MS', 10_000, 0, 600_000);

  const overrides = (name: string): Map<string, string> => {
    const map = new Map<string, string>();
    for (const pair of (get(name) ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
      const idx = pair.indexOf('=');
      const server = idx > 0 ? pair.slice(0, idx).trim().toLowerCase() : '';
      const url = idx > 0 ? normaliseBaseUrl(pair.slice(idx + 1).trim()) : null;
      if (!server || !url) problems.push(`${name} must be server=https://url pairs separated by commas, got ${JSON.stringify(pair)}`);
      else map.set(server, url);
    }
    return map;
  };
  const csApiUrlOverrides = overrides('SIDECAR_CS_API_URL_OVERRIDES');
  const federationUrlOverrides = overrides('SIDECAR_FEDERATION_URL_OVERRIDES');

  const logLevelRaw = get('LOG_LEVEL') ?? (dev ? 'debug' : 'info');
  if (!LOG_LEVELS.includes(logLevelRaw as LogLevel)) problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevelRaw)}`);

  const redisPrefix = get('SIDECAR_REDIS_PREFIX') ?? DEFAULT_REDIS_PREFIX;
  if (!/^[A-Za-z0-9:_.-]{1,64}$/.test(redisPrefix)) problems.push(`SIDECAR_REDIS_PREFIX must be 1-64 characters of letters, digits and :_.-, got ${JSON.stringify(redisPrefix)}`);
  const redisLeaseMs = int('SIDECAR_REDIS_LEASE_MS', 10_000, 1_000, 300_000);
  const redisIgnoreLeaseLoss = dev && get('SIDECAR_TEST_IGNORE_LEASE_LOSS') === '1';
  const syncRaw = (get('SIDECAR_SQLITE_SYNCHRONOUS') ?? 'NORMAL').toUpperCase();
  if (syncRaw !== 'NORMAL' && syncRaw !== 'FULL') problems.push(`SIDECAR_SQLITE_SYNCHRONOUS must be NORMAL or FULL, got ${JSON.stringify(syncRaw)}`);
  const requestTimeoutMs = int('SIDECAR_REQUEST_TIMEOUT_MS', 30_000, 1_000, 600_000);
  const historyMaxBytes = int('SIDECAR_HISTORY_MAX_BYTES', 32 * 1024 * 1024, 64 * 1024);
  const maxHomeserverOrigins = int('SIDECAR_MAX_HOMESERVER_ORIGINS', 1_000, 1);

  const restrictedUsersCanPublish = bool('SIDECAR_RESTRICTED_USERS_CAN_PUBLISH', false);

  problems.push(...lk.problems);
  if (problems.length) throw new ConfigError(problems.map((p) => nameTheirs(p, lk.aliases)));
  return {
    dev,
    host,
    port,
    livekitUrl,
    livekitKeys,
    store,
    homeservers,
    allowPrivateAddresses,
    allowHttp: dev,
    adminToken,
    tokenKey,
    tokenOldKeys,
    reconnectGraceMs,
    joinTimeoutMs,
    refreshAt,
    refreshMarginMs,
    minTimeoutMs,
    maxTimeoutMs,
    homeserverRate,
    reconcileIntervalMs,
    maxDelegationsPerIdentity,
    maxDelegationsPerRoom,
    rateLimitPerMinute,
    rateLimitPerIdentityPerMinute,
    trustProxy,
    shutdownTimeoutMs,
    csApiUrlOverrides,
    federationUrlOverrides,
    logLevel: logLevelRaw as LogLevel,
    sqliteSynchronous: syncRaw as 'NORMAL' | 'FULL',
    redisPrefix,
    redisLeaseMs,
    redisIgnoreLeaseLoss,
    livekitSigningKey: lk.settings.signingKey ?? [...livekitKeys.keys()][0]!,
    canUpdateOwnMetadata: lk.settings.canUpdateOwnMetadata,
    restrictedUsersCanPublish,
    tlsSkipVerify: lk.settings.tlsSkipVerify,
    notices: lk.notices,
    requestTimeoutMs,
    historyMaxBytes,
    maxHomeserverOrigins,
    appservice: lk.settings.appservice,
  };
}

/** `https://hs.example:443/` -> `https://hs.example`; null when not an http(s) URL without credentials. */
function normaliseOrigin(raw: string): string | null {
  try {
    const u = new URL(raw);
    if ((u.protocol !== 'https:' && u.protocol !== 'http:') || u.username || u.password) return null;
    return u.origin;
  } catch {
    return null;
  }
}

/** A base URL for API calls: origin plus an optional path prefix, no query, no trailing slash. */
export function normaliseBaseUrl(raw: string): string | null {
  try {
    const u = new URL(raw);
    if ((u.protocol !== 'https:' && u.protocol !== 'http:') || u.username || u.password || u.search || u.hash) return null;
    return (u.origin + u.pathname).replace(/\/+$/, '');
  } catch {
    return null;
  }
}
