/**
 * lk-jwt-service's environment (facts: matrixrtc-auth-service-facts.md section 5), translated into our own settings
 * so that an operator can swap the image and keep the environment (contract section 7). The translation only
 * writes our names where the operator did not set them; where both are set and disagree, start-up fails naming
 * both. Settings that have no counterpart of ours come back in `settings`.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';

interface LkJwtSettings {
  /** `LIVEKIT_CAN_UPDATE_OWN_METADATA=true`: tokens grant `canUpdateOwnMetadata`. */
  canUpdateOwnMetadata: boolean;
  /** `LIVEKIT_INSECURE_SKIP_VERIFY_TLS=YES_I_KNOW_WHAT_I_AM_DOING`: no certificate checks on outgoing HTTPS. */
  tlsSkipVerify: boolean;
  /** The API key that signs tokens (lk-jwt-service's `LIVEKIT_KEY`), when the lk-jwt-service names gave one. */
  signingKey: string | null;
  /** Application-service mode (contract section 8), when its settings are all set. */
  appservice: AppserviceSettings | null;
}

export interface AppserviceSettings {
  /** What we present to the homeserver when we act as a user (`Authorization: Bearer`, with `user_id=`). */
  asToken: string;
  /** What the homeserver presents to us on every proxied request. */
  hsToken: string;
  /** The homeserver we are the application service of. */
  serverName: string;
  /** Where the tokens were read from, when a registration file gave them. */
  registrationFile: string | null;
  /** How often joined participants' Matrix membership is checked; 0 = never (only at participant_joined). */
  membershipCheckIntervalMs: number;
}

export interface LkJwtTranslation {
  /** The environment with our names filled in from lk-jwt-service's. */
  env: Record<string, string | undefined>;
  settings: LkJwtSettings;
  problems: string[];
  /** Start-up notices to log as warnings (deprecated or ignored values). */
  notices: string[];
  /** Our name -> the lk-jwt-service name its value came from, so that a problem names what the operator wrote. */
  aliases: Map<string, string>;
  /** Started with lk-jwt-service's environment (its key or full-access list, or its listen settings). */
  active: boolean;
}

/** The exact value lk-jwt-service requires before it skips certificate checks. */
const TLS_SKIP_MAGIC = 'YES_I_KNOW_WHAT_I_AM_DOING';

const KEY_NAMES = ['LIVEKIT_KEY', 'LIVEKIT_SECRET', 'LIVEKIT_KEY_FROM_FILE', 'LIVEKIT_SECRET_FROM_FILE', 'LIVEKIT_KEY_FILE'] as const;
const MODE_NAMES = [...KEY_NAMES, 'LIVEKIT_FULL_ACCESS_HOMESERVERS', 'LIVEKIT_JWT_BIND', 'LIVEKIT_JWT_PORT'] as const;
const LOG_LEVELS: Record<string, string> = { debug: 'debug', info: 'info', warn: 'warn', warning: 'warn', error: 'error' };
/** lk-jwt-service accepts any delay above zero; Element Call's older releases delegate 10 s delays. */
const LK_JWT_MIN_TIMEOUT_MS = '1000';

/** lk-jwt-service trims key material of spaces, CR and LF only. */
const trimKey = (s: string) => s.replace(/^[ \r\n]+|[ \r\n]+$/g, '');

export function translateLkJwtEnv(input: Record<string, string | undefined>, readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): LkJwtTranslation {
  const env = { ...input };
  const problems: string[] = [];
  const notices: string[] = [];
  const aliases = new Map<string, string>();
  const get = (name: string): string | undefined => {
    const v = input[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  const active = MODE_NAMES.some((n) => get(n) !== undefined);
  /** Writes `ours` from `theirs` unless the operator set `ours` to something else (then a conflict). */
  const fill = (ours: string, value: string, theirs: string, same: (a: string, b: string) => boolean = (a, b) => a === b): void => {
    const set = get(ours);
    if (set === undefined) {
      env[ours] = value;
      aliases.set(ours, theirs);
    } else if (!same(set, value)) problems.push(`${ours} and ${theirs} are both set and disagree; set only one of them`);
  };
  const readSecretFile = (name: string): string | undefined => {
    const path = get(name);
    if (path === undefined) return undefined;
    try {
      return readFile(path);
    } catch {
      problems.push(`${name}: the file ${JSON.stringify(path)} cannot be read`);
      return undefined;
    }
  };
  const settings: LkJwtSettings = { canUpdateOwnMetadata: false, tlsSkipVerify: false, signingKey: null, appservice: null };
  settings.appservice = appserviceSettings(get, readFile, problems);

  // Key and secret: LIVEKIT_KEY_FILE wins over the other four, *_FROM_FILE over the plain variables.
  if (KEY_NAMES.some((n) => get(n) !== undefined)) {
    let key: string | undefined;
    let secret: string | undefined;
    const keyFile = readSecretFile('LIVEKIT_KEY_FILE');
    if (get('LIVEKIT_KEY_FILE') !== undefined) {
      const parts = keyFile?.split(':');
      if (keyFile !== undefined && parts?.length !== 2) problems.push('LIVEKIT_KEY_FILE: invalid key secret file format! (expected "key: secret")');
      else if (parts) [key, secret] = parts.map(trimKey);
    } else {
      key = trimKey(readSecretFile('LIVEKIT_KEY_FROM_FILE') ?? get('LIVEKIT_KEY') ?? '');
      secret = trimKey(readSecretFile('LIVEKIT_SECRET_FROM_FILE') ?? get('LIVEKIT_SECRET') ?? '');
    }
    if (key !== undefined && secret !== undefined) {
      if (!key || !secret) problems.push('LIVEKIT_KEY* / LIVEKIT_SECRET* and LIVEKIT_URL must be set');
      else {
        fill('LIVEKIT_API_KEY', key, 'LIVEKIT_KEY');
        fill('LIVEKIT_API_SECRET', secret, 'LIVEKIT_SECRET');
        const listed = keyLines(get('LIVEKIT_KEYS')).get(key);
        if (listed !== undefined && listed !== secret) problems.push('LIVEKIT_KEYS and LIVEKIT_SECRET give different secrets for the same key; set only one of them');
        settings.signingKey = key;
      }
    }
  }
  if (KEY_NAMES.some((n) => get(n) !== undefined) && get('LIVEKIT_URL') === undefined) problems.push('LIVEKIT_KEY* / LIVEKIT_SECRET* and LIVEKIT_URL must be set');

  // Listen address: `:port` means every interface; the default is lk-jwt-service's `:8080`.
  const bind = get('LIVEKIT_JWT_BIND');
  const legacyPort = get('LIVEKIT_JWT_PORT');
  if (bind !== undefined && legacyPort !== undefined) problems.push('LIVEKIT_JWT_BIND and LIVEKIT_JWT_PORT must not be set together');
  else {
    if (legacyPort !== undefined) notices.push('LIVEKIT_JWT_PORT is deprecated; use LIVEKIT_JWT_BIND=:<port>');
    const theirs = bind !== undefined ? 'LIVEKIT_JWT_BIND' : legacyPort !== undefined ? 'LIVEKIT_JWT_PORT' : null;
    const ourListen = get('SIDECAR_HOST') !== undefined || get('SIDECAR_PORT') !== undefined;
    const raw = bind ?? (legacyPort !== undefined ? `:${legacyPort}` : active && !ourListen ? ':8080' : undefined);
    if (raw !== undefined) {
      const parsed = parseBind(raw);
      if (!parsed) problems.push(`${theirs ?? 'LIVEKIT_JWT_BIND'} must be [host]:port, got ${JSON.stringify(raw)}`);
      else {
        const name = theirs ?? 'LIVEKIT_JWT_BIND';
        fill('SIDECAR_HOST', parsed.host, name, sameHost);
        fill('SIDECAR_PORT', parsed.port, name);
      }
    }
  }

  const fullAccess = get('LIVEKIT_FULL_ACCESS_HOMESERVERS');
  if (fullAccess !== undefined) {
    const entries = fullAccess.split(/[\s,]+/).filter(Boolean);
    // As in lk-jwt-service, `*` is a wildcard only when it stands alone.
    const names = entries.length === 1 && entries[0] === '*' ? ['*'] : entries.filter((e) => e !== '*');
    if (names.length !== entries.length) notices.push('LIVEKIT_FULL_ACCESS_HOMESERVERS: a * among other entries is not a wildcard (as in lk-jwt-service); it was left out');
    if (names.length === 0) problems.push('LIVEKIT_FULL_ACCESS_HOMESERVERS must name at least one Matrix server, or be *');
    else fill('SIDECAR_HOMESERVERS', names.join(' '), 'LIVEKIT_FULL_ACCESS_HOMESERVERS', sameServerNames);
  }

  const csOverrides = get('LIVEKIT_CS_API_URL_OVERRIDES');
  if (csOverrides !== undefined) fill('SIDECAR_CS_API_URL_OVERRIDES', csOverrides, 'LIVEKIT_CS_API_URL_OVERRIDES', (a, b) => canonicalPairs(a) === canonicalPairs(b));

  const redisUrl = get('LIVEKIT_REDIS_URL');
  const redisPassword = input['LIVEKIT_REDIS_PASSWORD'];
  if (redisUrl !== undefined) {
    let url: string | null = redisUrl;
    if (redisPassword) {
      try {
        const u = new URL(redisUrl);
        u.password = encodeURIComponent(redisPassword);
        url = u.toString();
      } catch {
        problems.push('LIVEKIT_REDIS_URL cannot be combined with LIVEKIT_REDIS_PASSWORD: it is not a URL');
        url = null;
      }
    }
    if (url !== null) fill('SIDECAR_STORE', url, 'LIVEKIT_REDIS_URL');
  } else if (redisPassword) notices.push('LIVEKIT_REDIS_PASSWORD is ignored without LIVEKIT_REDIS_URL');

  const tls = get('LIVEKIT_INSECURE_SKIP_VERIFY_TLS');
  if (tls === TLS_SKIP_MAGIC) {
    settings.tlsSkipVerify = true;
    notices.push('LIVEKIT_INSECURE_SKIP_VERIFY_TLS: certificates of outgoing HTTPS connections are NOT verified');
  } else if (tls !== undefined) notices.push(`LIVEKIT_INSECURE_SKIP_VERIFY_TLS is ignored: only ${TLS_SKIP_MAGIC} turns certificate checks off`);

  const sanity = get('LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS');
  if (sanity !== undefined) {
    if (!/^\d+$/.test(sanity)) problems.push(`LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS must be a non-negative whole number, got ${JSON.stringify(sanity)}`);
    else if (Number(sanity) === 0) notices.push('LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS=0: reconciliation with LiveKit stays on (SIDECAR_RECONCILE_INTERVAL_MS)');
    else fill('SIDECAR_RECONCILE_INTERVAL_MS', String(Number(sanity) * 1000), 'LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS', (a, b) => Number(a) === Number(b));
  }

  settings.canUpdateOwnMetadata = get('LIVEKIT_CAN_UPDATE_OWN_METADATA')?.toLowerCase() === 'true';

  const level = get('LIVEKIT_LOG_LEVEL');
  if (level !== undefined) {
    const mapped = LOG_LEVELS[level.toLowerCase()];
    if (!mapped) notices.push(`LIVEKIT_LOG_LEVEL ${JSON.stringify(level)} is not one of debug, info, warn, error; using info`);
    fill('LOG_LEVEL', mapped ?? 'info', 'LIVEKIT_LOG_LEVEL');
  }

  if (active && get('SIDECAR_MIN_TIMEOUT_MS') === undefined) env['SIDECAR_MIN_TIMEOUT_MS'] = LK_JWT_MIN_TIMEOUT_MS;

  return { env, settings, problems, notices, aliases, active };
}

/** Default of LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS (lk-jwt-service's PR #235). */
const MEMBERSHIP_CHECK_DEFAULT_SECONDS = 30;

/**
 * Application-service mode (facts section 5 and 6.1): the two tokens come from LIVEKIT_AS_REGISTRATION_FILE (which
 * wins) or LIVEKIT_AS_TOKEN / LIVEKIT_HS_TOKEN; with LIVEKIT_HS_SERVER_NAME they are all set or none is.
 */
function appserviceSettings(get: (name: string) => string | undefined, readFile: (path: string) => string, problems: string[]): AppserviceSettings | null {
  const file = get('LIVEKIT_AS_REGISTRATION_FILE');
  let asToken = get('LIVEKIT_AS_TOKEN');
  let hsToken = get('LIVEKIT_HS_TOKEN');
  if (file !== undefined) {
    const read = readRegistrationTokens(file, readFile);
    if (typeof read === 'string') {
      problems.push(`LIVEKIT_AS_REGISTRATION_FILE: ${read}`);
      return null;
    }
    ({ asToken, hsToken } = read);
  }
  const serverName = get('LIVEKIT_HS_SERVER_NAME');
  const given = { 'LIVEKIT_AS_TOKEN (or LIVEKIT_AS_REGISTRATION_FILE)': asToken, 'LIVEKIT_HS_TOKEN (or LIVEKIT_AS_REGISTRATION_FILE)': hsToken, LIVEKIT_HS_SERVER_NAME: serverName };
  const missing = Object.entries(given).filter(([, v]) => v === undefined).map(([k]) => k);
  const interval = get('LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS');
  if (interval !== undefined && !/^\d+$/.test(interval)) problems.push(`LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS must be a non-negative whole number, got ${JSON.stringify(interval)}`);
  if (missing.length === 3) return null;
  if (missing.length) {
    problems.push(`application-service mode needs its tokens and LIVEKIT_HS_SERVER_NAME together (all or none); missing: ${missing.join(', ')}`);
    return null;
  }
  if (asToken === hsToken) problems.push('LIVEKIT_AS_TOKEN and LIVEKIT_HS_TOKEN must differ (the homeserver would accept the token it sends us as ours)');
  if (!/^[a-z0-9.-]+(:\d+)?$/i.test(serverName!) && !/^\[[0-9a-f:.]+\](:\d+)?$/i.test(serverName!)) problems.push(`LIVEKIT_HS_SERVER_NAME must be a Matrix server name, got ${JSON.stringify(serverName)}`);
  const seconds = interval !== undefined && /^\d+$/.test(interval) ? Number(interval) : MEMBERSHIP_CHECK_DEFAULT_SECONDS;
  return { asToken: asToken!, hsToken: hsToken!, serverName: serverName!.toLowerCase(), registrationFile: file ?? null, membershipCheckIntervalMs: seconds * 1000 };
}

/** `as_token` and `hs_token` of a registration file (the only keys lk-jwt-service reads), or what is wrong with it. */
function readRegistrationTokens(path: string, readFile: (path: string) => string): { asToken: string; hsToken: string } | string {
  let doc: unknown;
  try {
    doc = parseYaml(readFile(path));
  } catch (err) {
    return (err as { code?: string }).code === 'ENOENT' || (err as { code?: string }).code === 'EACCES' ? `the file ${JSON.stringify(path)} cannot be read` : `the file ${JSON.stringify(path)} is not YAML`;
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return 'invalid root element (expected a mapping)';
  const o = doc as Record<string, unknown>;
  for (const key of ['as_token', 'hs_token']) {
    if (!(key in o)) return `no ${key} property`;
    if (typeof o[key] !== 'string' || (o[key] as string).trim() === '') return `invalid value for ${key} (expected a non-empty string)`;
  }
  return { asToken: (o.as_token as string).trim(), hsToken: (o.hs_token as string).trim() };
}

/** `:8080`, `0.0.0.0:8080`, `[::1]:8080`; an empty host means every interface. */
function parseBind(raw: string): { host: string; port: string } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(raw);
  if (!m || Number(m[3]) > 65535) return null;
  return { host: m[1] ?? (m[2] || '::'), port: String(Number(m[3])) };
}

/** Every-interface spellings are one host. */
function sameHost(a: string, b: string): boolean {
  const any = (h: string) => (h === '::' || h === '0.0.0.0' || h === '[::]' ? '*' : h);
  return any(a) === any(b);
}

/** SIDECAR_HOMESERVERS may also hold origins (our own API); only its server names and `*` are compared. */
function sameServerNames(ours: string, theirs: string): boolean {
  const names = (s: string) =>
    s
      .split(/[\s,]+/)
      .filter((e) => e && !e.includes('://'))
      .map((e) => e.toLowerCase())
      .sort()
      .join(' ');
  return names(ours) === names(theirs);
}

function canonicalPairs(s: string): string {
  return s
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => p.split('=').map((x) => x.trim().replace(/\/+$/, '')).join('='))
    .sort()
    .join(',');
}

function keyLines(raw: string | undefined): Map<string, string> {
  const keys = new Map<string, string>();
  for (const line of (raw ?? '').split(/\r?\n/)) {
    const idx = line.indexOf(':');
    if (idx > 0) keys.set(line.slice(0, idx).trim(), line.slice(idx + 1).trim());
  }
  return keys;
}

/** A problem about one of our names, reworded to name the lk-jwt-service variable its value came from. */
export function nameTheirs(problem: string, aliases: ReadonlyMap<string, string>): string {
  let out = problem;
  for (const [ours, theirs] of aliases) out = out.replace(new RegExp(`(?<![A-Z_])${ours}(?![A-Z_])`, 'g'), `${theirs} (as ${ours})`);
  return out;
}
