import { TokenVerifier } from 'livekit-server-sdk';
import { describe, expect, it } from 'vitest';
import { mintLiveKitToken } from '../../src/compat/livekit-token.js';
import { ConfigError, loadConfig } from '../../src/config.js';

/** lk-jwt-service's README example (docker `-e` flags). */
const README = { LIVEKIT_URL: 'ws://somewhere', LIVEKIT_KEY: 'devkey', LIVEKIT_SECRET: 'secret', LIVEKIT_FULL_ACCESS_HOMESERVERS: 'example.com' };

function problems(env: Record<string, string>, files: Record<string, string> = {}): string[] {
  try {
    loadConfig(env, { dev: false, readFile: (p) => fileOf(files, p) });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

function fileOf(files: Record<string, string>, path: string): string {
  const content = files[path];
  if (content === undefined) throw new Error(`ENOENT ${path}`);
  return content;
}

const load = (env: Record<string, string>, files: Record<string, string> = {}) => loadConfig(env, { dev: false, readFile: (p) => fileOf(files, p) });

describe("lk-jwt-service's environment as a complete configuration", () => {
  it("starts from the README's docker example alone: its key signs, :8080 on every interface, its servers are full access", () => {
    const c = load(README);
    expect(c.livekitUrl).toBe('ws://somewhere');
    expect(c.livekitSigningKey).toBe('devkey');
    expect(c.livekitKeys.get('devkey')).toBe('secret');
    expect([c.host, c.port]).toEqual(['::', 8080]);
    expect([...c.homeservers.serverNames]).toEqual(['example.com']);
    expect(c.homeservers.any).toBe(false);
    expect(c.store.kind).toBe('sqlite');
    expect(c.canUpdateOwnMetadata).toBe(false);
    expect(c.restrictedUsersCanPublish).toBe(false);
    expect(c.tlsSkipVerify).toBe(false);
    // lk-jwt-service accepts any delay above zero; Element Call's older releases delegate 10 s.
    expect(c.minTimeoutMs).toBe(1000);
  });

  it('keeps the listen address of ours when one is set and no lk-jwt-service one is', () => {
    expect(load({ ...README, SIDECAR_PORT: '9000' }).port).toBe(9000);
    const bound = load({ ...README, LIVEKIT_JWT_BIND: '127.0.0.1:7000' });
    expect([bound.host, bound.port]).toEqual(['127.0.0.1', 7000]);
    expect(load({ ...README, LIVEKIT_JWT_BIND: '[::1]:7001' }).host).toBe('::1');
    const legacy = load({ ...README, LIVEKIT_JWT_PORT: '6080' });
    expect([legacy.host, legacy.port]).toEqual(['::', 6080]);
    expect(legacy.notices.join()).toMatch(/LIVEKIT_JWT_PORT is deprecated/);
  });

  it('refuses LIVEKIT_JWT_BIND with LIVEKIT_JWT_PORT, and a bind that disagrees with SIDECAR_PORT, naming both', () => {
    expect(problems({ ...README, LIVEKIT_JWT_BIND: ':8080', LIVEKIT_JWT_PORT: '8080' })).toContain('LIVEKIT_JWT_BIND and LIVEKIT_JWT_PORT must not be set together');
    expect(problems({ ...README, LIVEKIT_JWT_BIND: ':8080', SIDECAR_PORT: '9000' })).toContain('SIDECAR_PORT and LIVEKIT_JWT_BIND are both set and disagree; set only one of them');
    expect(problems({ ...README, LIVEKIT_JWT_BIND: ':8080', SIDECAR_PORT: '8080', SIDECAR_HOST: '0.0.0.0' })).toEqual([]);
    expect(problems({ ...README, LIVEKIT_JWT_BIND: 'nonsense' }).join()).toMatch(/LIVEKIT_JWT_BIND must be \[host\]:port/);
  });

  it('reads the key from LIVEKIT_KEY_FILE before everything else, and the *_FROM_FILE variables before the plain ones', () => {
    const fromKeyFile = load({ ...README, LIVEKIT_KEY_FILE: '/keys', LIVEKIT_KEY_FROM_FILE: '/k' }, { '/keys': 'filekey: file-secret\n', '/k': 'ignored' });
    expect([fromKeyFile.livekitSigningKey, fromKeyFile.livekitKeys.get('filekey')]).toEqual(['filekey', 'file-secret']);
    const fromFiles = load({ ...README, LIVEKIT_KEY_FROM_FILE: '/k', LIVEKIT_SECRET_FROM_FILE: '/s' }, { '/k': 'k2\r\n', '/s': ' s2 \n' });
    expect([fromFiles.livekitSigningKey, fromFiles.livekitKeys.get('k2')]).toEqual(['k2', 's2']);
  });

  it('refuses a key file that is not exactly "key: secret", an unreadable file, or a missing secret, without echoing secrets', () => {
    expect(problems({ ...README, LIVEKIT_KEY_FILE: '/keys' }, { '/keys': 'a:b:c' }).join()).toMatch(/invalid key secret file format!/);
    expect(problems({ ...README, LIVEKIT_KEY_FILE: '/missing' }).join()).toMatch(/LIVEKIT_KEY_FILE: the file "\/missing" cannot be read/);
    const noSecret = problems({ LIVEKIT_URL: 'ws://x', LIVEKIT_KEY: 'k', LIVEKIT_FULL_ACCESS_HOMESERVERS: '*' });
    expect(noSecret).toContain('LIVEKIT_KEY* / LIVEKIT_SECRET* and LIVEKIT_URL must be set');
    expect(problems({ LIVEKIT_KEY: 'k', LIVEKIT_SECRET: 's', LIVEKIT_FULL_ACCESS_HOMESERVERS: '*' })).toContain('LIVEKIT_KEY* / LIVEKIT_SECRET* and LIVEKIT_URL must be set');
    const conflict = problems({ ...README, LIVEKIT_API_SECRET: 'other-secret-value', LIVEKIT_API_KEY: 'devkey' });
    expect(conflict).toContain('LIVEKIT_API_SECRET and LIVEKIT_SECRET are both set and disagree; set only one of them');
    expect(conflict.join()).not.toContain('other-secret-value');
    expect(problems({ ...README, LIVEKIT_KEYS: 'devkey: not-the-secret' })).toContain('LIVEKIT_KEYS and LIVEKIT_SECRET give different secrets for the same key; set only one of them');
  });

  it('maps LIVEKIT_FULL_ACCESS_HOMESERVERS to our server names; a lone * is any server, * among others is not', () => {
    expect(load({ ...README, LIVEKIT_FULL_ACCESS_HOMESERVERS: '*' }).homeservers.any).toBe(true);
    const mixed = load({ ...README, LIVEKIT_FULL_ACCESS_HOMESERVERS: 'a.example, *  b.example' });
    expect([mixed.homeservers.any, [...mixed.homeservers.serverNames]]).toEqual([false, ['a.example', 'b.example']]);
    expect(mixed.notices.join()).toMatch(/not a wildcard/);
    expect(problems({ ...README, SIDECAR_HOMESERVERS: 'other.example' })).toContain('SIDECAR_HOMESERVERS and LIVEKIT_FULL_ACCESS_HOMESERVERS are both set and disagree; set only one of them');
    // Our list may add origins for our own API; only its server names must agree.
    expect(problems({ ...README, SIDECAR_HOMESERVERS: 'https://matrix.example.com example.com' })).toEqual([]);
  });

  it('maps the client-server API overrides, naming the lk-jwt-service variable in its problems', () => {
    expect(load({ ...README, LIVEKIT_CS_API_URL_OVERRIDES: 'example.com=https://matrix.example.com' }).csApiUrlOverrides.get('example.com')).toBe('https://matrix.example.com');
    // lk-jwt-service's README example has no scheme; it fails there too ("relative URL without a base").
    expect(problems({ ...README, LIVEKIT_CS_API_URL_OVERRIDES: 'example.com=matrix-client.example.com' }).join()).toMatch(/^LIVEKIT_CS_API_URL_OVERRIDES \(as SIDECAR_CS_API_URL_OVERRIDES\) must be/);
    expect(problems({ ...README, LIVEKIT_CS_API_URL_OVERRIDES: 'a=https://x', SIDECAR_CS_API_URL_OVERRIDES: 'a=https://y' })).toContain('SIDECAR_CS_API_URL_OVERRIDES and LIVEKIT_CS_API_URL_OVERRIDES are both set and disagree; set only one of them');
  });

  it('uses Redis from LIVEKIT_REDIS_URL with LIVEKIT_REDIS_PASSWORD put into the URL, else the embedded SQLite file', () => {
    const c = load({ ...README, LIVEKIT_REDIS_URL: 'redis://redis.internal:6379/2', LIVEKIT_REDIS_PASSWORD: 'p@ss word' });
    expect(c.store).toEqual({ kind: 'redis', url: 'redis://:p%40ss%20word@redis.internal:6379/2' });
    expect(load({ ...README, LIVEKIT_REDIS_PASSWORD: 'x' }).notices.join()).toMatch(/ignored without LIVEKIT_REDIS_URL/);
    const conflict = problems({ ...README, LIVEKIT_REDIS_URL: 'redis://r:6379', SIDECAR_STORE: 'sqlite:/data/x.db' });
    expect(conflict).toContain('SIDECAR_STORE and LIVEKIT_REDIS_URL are both set and disagree; set only one of them');
  });

  it('skips certificate checks only for the exact magic value', () => {
    expect(load({ ...README, LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'YES_I_KNOW_WHAT_I_AM_DOING' }).tlsSkipVerify).toBe(true);
    const wrong = load({ ...README, LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'yes' });
    expect(wrong.tlsSkipVerify).toBe(false);
    expect(wrong.notices.join()).toMatch(/ignored/);
  });

  it('turns the sanity-check interval into our reconciliation interval; 0 keeps reconciliation on', () => {
    expect(load({ ...README, LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '15' }).reconcileIntervalMs).toBe(15_000);
    expect(load({ ...README, LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '0' }).reconcileIntervalMs).toBe(30_000);
    expect(problems({ ...README, LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '-1' }).join()).toMatch(/non-negative whole number/);
    expect(problems({ ...README, LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '15', SIDECAR_RECONCILE_INTERVAL_MS: '20000' })).toContain(
      'SIDECAR_RECONCILE_INTERVAL_MS and LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS are both set and disagree; set only one of them',
    );
  });

  it('reads LIVEKIT_CAN_UPDATE_OWN_METADATA and LIVEKIT_LOG_LEVEL as lk-jwt-service does', () => {
    expect(load({ ...README, LIVEKIT_CAN_UPDATE_OWN_METADATA: 'true' }).canUpdateOwnMetadata).toBe(true);
    expect(load({ ...README, LIVEKIT_CAN_UPDATE_OWN_METADATA: 'yes' }).canUpdateOwnMetadata).toBe(false);
    expect(load({ ...README, LIVEKIT_LOG_LEVEL: 'WARNING' }).logLevel).toBe('warn');
    const bad = load({ ...README, LIVEKIT_LOG_LEVEL: 'loud' });
    expect([bad.logLevel, bad.notices.some((n) => n.includes('LIVEKIT_LOG_LEVEL'))]).toEqual(['info', true]);
    expect(problems({ ...README, LIVEKIT_LOG_LEVEL: 'debug', LOG_LEVEL: 'error' })).toContain('LOG_LEVEL and LIVEKIT_LOG_LEVEL are both set and disagree; set only one of them');
  });

  it("takes lk-jwt-service's application-service settings all or none, naming what is missing", () => {
    expect(problems({ ...README, LIVEKIT_AS_TOKEN: 'a', LIVEKIT_HS_TOKEN: 'h' }).join()).toMatch(/all or none\); missing: LIVEKIT_HS_SERVER_NAME$/);
    expect(problems({ ...README, LIVEKIT_HS_SERVER_NAME: 'hs.example' }).join()).toMatch(/missing: LIVEKIT_AS_TOKEN \(or LIVEKIT_AS_REGISTRATION_FILE\), LIVEKIT_HS_TOKEN/);
    expect(problems({ ...README, LIVEKIT_AS_TOKEN: 'same', LIVEKIT_HS_TOKEN: 'same', LIVEKIT_HS_SERVER_NAME: 'hs.example' }).join()).toMatch(/must differ/);
    const c = load({ ...README, LIVEKIT_AS_TOKEN: ' a ', LIVEKIT_HS_TOKEN: 'h', LIVEKIT_HS_SERVER_NAME: 'HS.example' });
    expect(c.appservice).toEqual({ asToken: 'a', hsToken: 'h', serverName: 'hs.example', registrationFile: null, membershipCheckIntervalMs: 30_000 });
    expect(load(README).appservice).toBeNull();
    expect(load({ ...README, LIVEKIT_AS_TOKEN: 'a', LIVEKIT_HS_TOKEN: 'h', LIVEKIT_HS_SERVER_NAME: 'hs.example', LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS: '0' }).appservice?.membershipCheckIntervalMs).toBe(0);
  });

  it('reads the tokens from LIVEKIT_AS_REGISTRATION_FILE, which wins over the variables, as lk-jwt-service does', () => {
    const files: Record<string, string> = {
      '/reg.yaml': 'id: x\nas_token: from-file-as\nhs_token: from-file-hs\n',
      '/no-hs.yaml': 'as_token: a\n',
      '/list.yaml': '- a\n',
      '/number.yaml': 'as_token: 5\nhs_token: h\n',
    };
    const readFile = (p: string) => {
      if (!(p in files)) throw Object.assign(new Error('nope'), { code: 'ENOENT' });
      return files[p]!;
    };
    const env = (file: string) => ({ ...README, LIVEKIT_AS_REGISTRATION_FILE: file, LIVEKIT_AS_TOKEN: 'env-as', LIVEKIT_HS_SERVER_NAME: 'hs.example' });
    const c = loadConfig(env('/reg.yaml'), { dev: false, readFile });
    expect([c.appservice?.asToken, c.appservice?.hsToken, c.appservice?.registrationFile]).toEqual(['from-file-as', 'from-file-hs', '/reg.yaml']);
    const problemsOf = (file: string) => {
      try {
        loadConfig(env(file), { dev: false, readFile });
        return '';
      } catch (err) {
        return (err as ConfigError).problems.join();
      }
    };
    expect(problemsOf('/no-hs.yaml')).toMatch(/LIVEKIT_AS_REGISTRATION_FILE: no hs_token property/);
    expect(problemsOf('/list.yaml')).toMatch(/invalid root element/);
    expect(problemsOf('/number.yaml')).toMatch(/invalid value for as_token/);
    expect(problemsOf('/missing.yaml')).toMatch(/cannot be read/);
  });

  it('leaves a configuration of ours alone', () => {
    const c = load({ LIVEKIT_KEYS: 'k1: s1\nk2: s2', SIDECAR_HOMESERVERS: 'https://hs.example' });
    expect([c.host, c.port, c.minTimeoutMs, c.livekitSigningKey]).toEqual(['0.0.0.0', 8089, 60_000, 'k1']);
  });
});

describe('the token grant', () => {
  it('grants canUpdateOwnMetadata when asked and publish as told, never roomCreate', async () => {
    const jwt = await mintLiveKitToken('k', 's', { identity: 'id', room: 'r', canPublish: false, canUpdateOwnMetadata: true });
    const claims = await new TokenVerifier('k', 's').verify(jwt);
    expect(claims.video).toMatchObject({ room: 'r', roomJoin: true, roomCreate: false, canPublish: false, canUpdateOwnMetadata: true });
  });
});
