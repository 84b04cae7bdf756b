import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseArgs } from '../../src/config.js';

const prod = { LIVEKIT_KEYS: 'key1: s3cret-one\nkey2: s3cret-two', SIDECAR_HOMESERVERS: 'https://matrix.example, example.org' };

function problems(env: Record<string, string>, dev = false): string[] {
  try {
    loadConfig(env, { dev });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('loadConfig', () => {
  it('applies the contract defaults', () => {
    const c = loadConfig(prod, { dev: false });
    expect(c.host).toBe('0.0.0.0');
    expect(c.port).toBe(8089);
    expect(c.store).toEqual({ kind: 'sqlite', path: './data/futures-sidecar.db' });
    expect(c.livekitKeys.get('key2')).toBe('s3cret-two');
    expect(c.homeservers.origins.has('https://matrix.example')).toBe(true);
    expect(c.homeservers.serverNames.has('example.org')).toBe(true);
    expect(c.homeservers.any).toBe(false);
    expect(c.reconnectGraceMs).toBe(10_000);
    expect(c.joinTimeoutMs).toBe(300_000);
    expect(c.refreshAt).toBe(0.5);
    expect(c.refreshMarginMs).toBe(24 * 60_000);
    expect(c.minTimeoutMs).toBe(60_000);
    expect(c.maxTimeoutMs).toBe(86_400_000);
    expect(c.homeserverRate).toBe(1);
    expect(c.allowPrivateAddresses).toBe(false);
    expect(c.adminToken).toBeNull();
    expect(c.logLevel).toBe('info');
  });

  it('fills in development defaults with --dev and keeps what is set explicitly', () => {
    const c = loadConfig({ SIDECAR_PORT: '9999', SIDECAR_MIN_TIMEOUT_MS: '5000' }, { dev: true });
    expect(c.host).toBe('127.0.0.1');
    expect(c.port).toBe(9999);
    expect(c.livekitKeys.get('devkey')).toBe('secret');
    expect(c.homeservers.any).toBe(true);
    expect(c.allowPrivateAddresses).toBe(true);
    expect(c.minTimeoutMs).toBe(5000);
    expect(c.logLevel).toBe('debug');
  });

  it('names the refresh policy: time_left with its margin, or fraction alone', () => {
    const base = { LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET: 'v', SIDECAR_HOMESERVERS: '*' };
    expect(loadConfig({ ...base, SIDECAR_REFRESH_MARGIN_MS: '600000' }, { dev: false }).refreshMarginMs).toBe(600_000);
    expect(loadConfig({ ...base, SIDECAR_REFRESH_POLICY: 'time_left' }, { dev: false }).refreshMarginMs).toBe(24 * 60_000);
    expect(loadConfig({ ...base, SIDECAR_REFRESH_POLICY: 'fraction', SIDECAR_REFRESH_MARGIN_MS: '600000' }, { dev: false }).refreshMarginMs).toBeNull();
  });

  it('accepts LIVEKIT_API_KEY and LIVEKIT_API_SECRET', () => {
    const c = loadConfig({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET: 'v', SIDECAR_HOMESERVERS: '*' }, { dev: false });
    expect([...c.livekitKeys]).toEqual([['k', 'v']]);
  });

  const bad: Array<[string, Record<string, string>, RegExp]> = [
    ['a port out of range', { SIDECAR_PORT: '70000' }, /SIDECAR_PORT/],
    ['a non-numeric grace', { SIDECAR_RECONNECT_GRACE_MS: '10s' }, /SIDECAR_RECONNECT_GRACE_MS/],
    ['a refresh fraction above 0.9', { SIDECAR_REFRESH_AT: '0.95' }, /SIDECAR_REFRESH_AT/],
    ['an unknown refresh policy', { SIDECAR_REFRESH_POLICY: 'eager' }, /SIDECAR_REFRESH_POLICY must be one of time_left, fraction/],
    ['a refresh margin below a second', { SIDECAR_REFRESH_MARGIN_MS: '10' }, /SIDECAR_REFRESH_MARGIN_MS/],
    ['a min timeout above the max', { SIDECAR_MIN_TIMEOUT_MS: '90000', SIDECAR_MAX_TIMEOUT_MS: '60000' }, /must not exceed/],
    ['an unknown store', { SIDECAR_STORE: 'postgres://x' }, /SIDECAR_STORE/],
    ['a zero homeserver rate', { SIDECAR_HOMESERVER_RATE: '0' }, /SIDECAR_HOMESERVER_RATE/],
    ['a malformed homeserver entry', { SIDECAR_HOMESERVERS: 'ftp://x' }, /SIDECAR_HOMESERVERS/],
    ['a short token key', { SIDECAR_TOKEN_KEY: 'c2hvcnQ=' }, /SIDECAR_TOKEN_KEY/],
    ['a short admin token', { SIDECAR_ADMIN_TOKEN: 'abc' }, /SIDECAR_ADMIN_TOKEN/],
    ['an unknown log level', { LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    ['a malformed override', { SIDECAR_CS_API_URL_OVERRIDES: 'example.org' }, /SIDECAR_CS_API_URL_OVERRIDES/],
    ['a boolean that is not one', { SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'maybe' }, /SIDECAR_ALLOW_PRIVATE_ADDRESSES/],
  ];
  for (const [what, env, pattern] of bad) {
    it(`refuses ${what}`, () => {
      const p = problems({ ...prod, ...env });
      expect(p.length).toBeGreaterThan(0);
      expect(p.join('\n')).toMatch(pattern);
    });
  }

  it('requires LiveKit keys and homeservers outside --dev, and lists every problem at once', () => {
    const p = problems({});
    expect(p.some((x) => x.includes('LIVEKIT_KEYS'))).toBe(true);
    expect(p.some((x) => x.includes('SIDECAR_HOMESERVERS'))).toBe(true);
  });

  it('never echoes a LiveKit secret in a problem', () => {
    const p = problems({ ...prod, LIVEKIT_KEYS: 'no-colon-secret-value' });
    expect(p.join('\n')).not.toContain('no-colon-secret-value');
  });
});

describe('parseArgs', () => {
  it('maps flags onto the environment and recognises --dev', () => {
    const a = parseArgs(['--dev', '--port', '1234', '--store=sqlite:/tmp/x.db'], {});
    expect(a.dev).toBe(true);
    expect(a.env.SIDECAR_PORT).toBe('1234');
    expect(a.env.SIDECAR_STORE).toBe('sqlite:/tmp/x.db');
  });
  it('refuses unknown arguments', () => {
    expect(() => parseArgs(['--frobnicate'], {})).toThrow(ConfigError);
  });
});
