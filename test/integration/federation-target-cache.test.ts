import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { MatrixResolver } from '../../src/compat/matrix-resolver.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';

const SERVER = 'example.com';
const ALICE = '@alice:example.com';
const TOKENS = ['openid-token-1-5c1d', 'openid-token-2-93ab', 'openid-token-3-0e77'];
const HOUR_MS = 3600_000;

/**
 * Server discovery before an OpenID lookup is kept for an hour, as lk-jwt-service keeps it, so that a participant's
 * token costs one request to its homeserver (the userinfo lookup itself, never cached: each request brings a new
 * OpenID token). Only answers are kept; a transport failure is asked again next time.
 */
describe('MatrixResolver: the federation address of a server, cached for an hour', () => {
  let fed: FakeMatrixFederation;
  let resolver: MatrixResolver | undefined;
  let clock: ManualClock;
  beforeEach(async () => {
    fed = await startFakeMatrixFederation({ tokens: Object.fromEntries(TOKENS.map((t) => [t, ALICE])) });
    clock = new ManualClock();
  });
  afterEach(async () => {
    await resolver?.close();
    resolver = undefined;
    await fed.close();
  });

  const make = (wellKnownOrigin: () => string, srvCodes: string[]) => {
    const srvAsked: string[] = [];
    resolver = new MatrixResolver({
      federationOverrides: new Map(),
      csApiOverrides: new Map(),
      allowPrivateAddresses: true,
      clock,
      wellKnownOrigin,
      federationScheme: 'http',
      resolveSrv: async (name) => {
        srvAsked.push(name);
        throw Object.assign(new Error('no SRV'), { code: srvCodes[srvAsked.length - 1] ?? 'ENOTFOUND' });
      },
    });
    return { r: resolver, srvAsked };
  };

  it('asks .well-known once per hour, and the homeserver once per token', async () => {
    fed.setWellKnownServer(fed.authority);
    const { r } = make(() => fed.url, []);
    expect(await r.verifyOpenId(SERVER, TOKENS[0]!)).toBe(ALICE);
    expect(await r.verifyOpenId(SERVER, TOKENS[1]!)).toBe(ALICE);
    expect(fed.calls.map((c) => c.endpoint)).toEqual(['well_known_server', 'userinfo', 'userinfo']);
    clock.advance(HOUR_MS + 1);
    expect(await r.verifyOpenId(SERVER, TOKENS[2]!)).toBe(ALICE);
    expect(fed.calls.map((c) => c.endpoint)).toEqual(['well_known_server', 'userinfo', 'userinfo', 'well_known_server', 'userinfo']);
  });

  it('keeps a default-port answer when .well-known and SRV said there is nothing, but not one that rests on a failure', async () => {
    // .well-known answers 404 and both SRV names do not exist: a definitive answer.
    const definitive = make(() => fed.url, []);
    await definitive.r.federationTarget(SERVER);
    await definitive.r.federationTarget(SERVER);
    expect(fed.callsTo('well_known_server')).toHaveLength(1);
    expect(definitive.srvAsked).toHaveLength(2);
    await definitive.r.close();

    // A refused SRV query (a DNS server failing) is not an answer: asked again.
    fed.calls.length = 0;
    const failing = make(() => fed.url, ['ESERVFAIL', 'ENOTFOUND', 'ESERVFAIL', 'ENOTFOUND']);
    await failing.r.federationTarget(SERVER);
    await failing.r.federationTarget(SERVER);
    expect(fed.callsTo('well_known_server')).toHaveLength(2);
    expect(failing.srvAsked).toHaveLength(4);
    await failing.r.close();

    // Nothing listening for .well-known: asked again.
    const unreachable = make(() => 'http://127.0.0.1:9', []);
    const first = await unreachable.r.federationTarget(SERVER);
    await unreachable.r.federationTarget(SERVER);
    expect(first.how).toBe('default_port');
    expect(unreachable.srvAsked).toHaveLength(4);
  });
});
