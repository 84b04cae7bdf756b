/**
 * lk-jwt-service's standalone API, black box: the daemon runs as its own process, started with lk-jwt-service's
 * environment and a store path only, against a TLS federation fake (OpenID), a client-server API fake (delayed
 * events) and a Twirp RoomService fake, all of which record every call.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TokenVerifier } from 'livekit-server-sdk';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { legacyIdentity, legacyRoomName, liveKitIdentity, liveKitRoomName } from '../../src/compat/livekit-names.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { WebhookSender, startFakeRoomService, type FakeRoomService } from '../fakes/livekit.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { ADMIN_TOKEN, waitFor } from '../helpers/daemon.js';
import { loopbackBind, requestJson, spawnBareDaemon, type BareDaemon } from '../helpers/lk-jwt.js';
import { metric, scrape } from '../helpers/metrics.js';
import { redisTestsEnabled, startRedis, type RedisServer } from '../helpers/redis.js';
import { selfSignedLoopbackCert } from '../helpers/tls.js';
import { Redis } from 'ioredis';

const KEY = 'lkkey';
const SECRET = 'lk-secret-0123456789abcdef0123456789';
const ROOM_ID = '!call:example.org';
const SLOT_ID = 'm.call#ROOM';
const DEVICE = 'DEVICEA';
const MEMBER = 'member-a';
const DELAY_MS = 4000;
const MEMBERSHIP_TYPE = 'org.matrix.msc3401.call.member';
const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'POST',
  'access-control-allow-headers': 'Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token',
};

type Json = Record<string, any>;

interface World {
  fed: FakeMatrixFederation;
  /** Listed in LIVEKIT_FULL_ACCESS_HOMESERVERS but without a client-server API override or .well-known. */
  fedNoCs: FakeMatrixFederation;
  /** Not listed: its users are restricted. */
  fedRestricted: FakeMatrixFederation;
  hs: FakeHomeserver;
  lk: FakeRoomService;
  server: string;
  alice: string;
  daemon: BareDaemon;
  /** The same environment plus SIDECAR_ALLOW_PRIVATE_ADDRESSES (restricted users' homeservers must be public) and an admin token. */
  open: BareDaemon;
  dir: string;
}

let w: World;

function lkJwtEnv(over: Record<string, string> = {}): Record<string, string> {
  return {
    LIVEKIT_URL: w.lk.url.replace(/^http/, 'ws'),
    LIVEKIT_KEY: KEY,
    LIVEKIT_SECRET: SECRET,
    LIVEKIT_FULL_ACCESS_HOMESERVERS: `${w.server}, ${w.fedNoCs.authority}`,
    LIVEKIT_CS_API_URL_OVERRIDES: `${w.server}=${w.hs.url}`,
    LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'YES_I_KNOW_WHAT_I_AM_DOING',
    LIVEKIT_LOG_LEVEL: 'warn',
    ...over,
  };
}

beforeAll(async () => {
  const tls = selfSignedLoopbackCert();
  const fed = await startFakeMatrixFederation({ tls });
  const server = fed.authority;
  const alice = `@alice:${server}`;
  fed.addToken('tok-alice', alice);
  fed.addToken('tok-bob', `@bob:${server}`);
  const fedNoCs = await startFakeMatrixFederation({ tls });
  fedNoCs.addToken('tok-carol', `@carol:${fedNoCs.authority}`);
  const fedRestricted = await startFakeMatrixFederation({ tls });
  fedRestricted.addToken('tok-remote', `@remote:${fedRestricted.authority}`);
  const hs = await startFakeHomeserver();
  const lk = await startFakeRoomService({ apiKey: KEY, apiSecret: SECRET });
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-lkjwt-'));
  w = { fed, fedNoCs, fedRestricted, hs, lk, server, alice, dir } as World;
  const main = await loopbackBind();
  const open = await loopbackBind();
  [w.daemon, w.open] = await Promise.all([
    spawnBareDaemon({ ...lkJwtEnv({ LIVEKIT_JWT_BIND: main.bind }), SIDECAR_STORE: `sqlite:${join(dir, 'main.db')}` }, main.url),
    spawnBareDaemon(
      {
        ...lkJwtEnv({ LIVEKIT_JWT_BIND: open.bind }),
        SIDECAR_STORE: `sqlite:${join(dir, 'open.db')}`,
        SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true',
        SIDECAR_ADMIN_TOKEN: ADMIN_TOKEN,
      },
      open.url,
    ),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([w?.daemon?.stop(), w?.open?.stop()]);
  await Promise.all([w?.fed?.close(), w?.fedNoCs?.close(), w?.fedRestricted?.close(), w?.hs?.close(), w?.lk?.close()]);
  if (w?.dir) rmSync(w.dir, { recursive: true, force: true });
});

function resetCalls(): void {
  w.fed.calls.length = 0;
  w.fedNoCs.calls.length = 0;
  w.fedRestricted.calls.length = 0;
  w.hs.calls.length = 0;
  w.lk.calls.length = 0;
  w.lk.setFailing(null);
}

function getTokenBody(over: Json = {}): Json {
  return {
    room_id: ROOM_ID,
    slot_id: SLOT_ID,
    openid_token: { access_token: 'tok-alice', token_type: 'Bearer', matrix_server_name: w.server, expires_in: 3600 },
    member: { id: MEMBER, claimed_user_id: w.alice, claimed_device_id: DEVICE },
    ...over,
  };
}

function sfuGetBody(over: Json = {}): Json {
  return { room: ROOM_ID, openid_token: { access_token: 'tok-alice', token_type: 'Bearer', matrix_server_name: w.server, expires_in: 3600 }, device_id: DEVICE, ...over };
}

const post = (base: string, path: string, body: Json | string | undefined) => requestJson(base + path, 'POST', body);

const userinfoCalls = () => w.fed.callsTo('userinfo').length + w.fedNoCs.callsTo('userinfo').length + w.fedRestricted.callsTo('userinfo').length;
const createRoomCalls = () => w.lk.calls.filter((c) => c.method === 'CreateRoom');
const delayedCalls = (delayId: string, op: 'restart' | 'send') => w.hs.calls.filter((c) => c.handle === delayId && c.op === op);

async function newDelayedLeave(): Promise<string> {
  return w.hs.createDelayedEvent({ roomId: ROOM_ID, eventType: MEMBERSHIP_TYPE, stateKey: `_${w.alice}_${DEVICE}_m.call`, content: {}, delayMs: DELAY_MS });
}

async function claimsOf(jwt: string) {
  return new TokenVerifier(KEY, SECRET).verify(jwt);
}

type Step = { name: string; body: () => Json | string; status: number; errcode: string; error: string; userinfo: number };

const GET_TOKEN_REFUSALS: Step[] = [
  { name: 'malformed JSON', body: () => '{"room_id":', status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'an unknown field', body: () => getTokenBody({ extra: 1 }), status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'delay_timeout written as 8000.0', body: () => JSON.stringify(getTokenBody({ delay_id: 'x', delay_timeout: 8000 })).replace('"delay_timeout":8000', '"delay_timeout":8000.0'), status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'expires_in written as 36e2', body: () => JSON.stringify(getTokenBody()).replace('"expires_in":3600', '"expires_in" : 36e2'), status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'a string delay_timeout', body: () => getTokenBody({ delay_id: 'x', delay_timeout: '10000' }), status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'room_id missing (and member empty)', body: () => getTokenBody({ room_id: '', member: {} }), status: 400, errcode: 'M_BAD_JSON', error: 'The request body is missing `room_id` or `slot_id`', userinfo: 0 },
  { name: 'member incomplete (and openid_token empty)', body: () => getTokenBody({ member: { id: MEMBER, claimed_user_id: '@a:b' }, openid_token: {} }), status: 400, errcode: 'M_BAD_JSON', error: 'The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`', userinfo: 0 },
  { name: 'openid_token incomplete (and a partial delay)', body: () => getTokenBody({ openid_token: { access_token: 'tok-alice' }, delay_id: 'x' }), status: 400, errcode: 'M_BAD_JSON', error: 'The request body `openid_token` is missing a `access_token` or `matrix_server_name`', userinfo: 0 },
  { name: 'delay_id without delay_timeout', body: () => getTokenBody({ delay_id: 'syd_x' }), status: 400, errcode: 'M_BAD_JSON', error: 'The request body is missing `delay_id` or `delay_timeout`', userinfo: 0 },
  { name: 'delay_timeout without delay_id', body: () => getTokenBody({ delay_timeout: 5000 }), status: 400, errcode: 'M_BAD_JSON', error: 'The request body is missing `delay_id` or `delay_timeout`', userinfo: 0 },
  { name: 'an unknown OpenID token', body: () => getTokenBody({ openid_token: { access_token: 'nope', matrix_server_name: w.server } }), status: 401, errcode: 'M_UNAUTHORIZED', error: 'The request could not be authorised.', userinfo: 1 },
  { name: 'a token of another user than claimed', body: () => getTokenBody({ openid_token: { access_token: 'tok-bob', matrix_server_name: w.server }, delay_id: 'syd_x', delay_timeout: 5000 }), status: 401, errcode: 'M_UNAUTHORIZED', error: 'The request could not be authorised.', userinfo: 1 },
  {
    name: 'a full-access server whose client-server API cannot be resolved, with delay fields',
    body: () => getTokenBody({ openid_token: { access_token: 'tok-carol', matrix_server_name: w.fedNoCs.authority }, member: { id: MEMBER, claimed_user_id: `@carol:${w.fedNoCs.authority}`, claimed_device_id: DEVICE }, delay_id: 'syd_x', delay_timeout: 5000 }),
    status: 400,
    errcode: 'M_BAD_JSON',
    error: 'Unable to resolve client-server API',
    userinfo: 1,
  },
];

const SFU_GET_REFUSALS: Step[] = [
  { name: 'malformed JSON', body: () => '[', status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'an unknown field in openid_token', body: () => sfuGetBody({ openid_token: { access_token: 'tok-alice', matrix_server_name: w.server, scope: 'x' } }), status: 400, errcode: 'M_NOT_JSON', error: 'Error reading request', userinfo: 0 },
  { name: 'room missing (and openid_token empty)', body: () => sfuGetBody({ room: '', openid_token: {} }), status: 400, errcode: 'M_BAD_JSON', error: 'Missing room parameter', userinfo: 0 },
  { name: 'openid_token incomplete (and a partial delay)', body: () => sfuGetBody({ openid_token: { matrix_server_name: w.server }, delay_timeout: 5 }), status: 400, errcode: 'M_BAD_JSON', error: 'Missing OpenID token parameters', userinfo: 0 },
  { name: 'a partial delay', body: () => sfuGetBody({ delay_id: 'syd_x', delay_timeout: 0 }), status: 400, errcode: 'M_BAD_JSON', error: 'The request body is missing `delay_id` or `delay_timeout`', userinfo: 0 },
  { name: 'an unknown OpenID token', body: () => sfuGetBody({ openid_token: { access_token: 'nope', matrix_server_name: w.server } }), status: 401, errcode: 'M_UNAUTHORIZED', error: 'The request could not be authorised.', userinfo: 1 },
  {
    name: 'a full-access server whose client-server API cannot be resolved, with delay fields',
    body: () => sfuGetBody({ openid_token: { access_token: 'tok-carol', matrix_server_name: w.fedNoCs.authority }, delay_id: 'syd_x', delay_timeout: 5000 }),
    status: 400,
    errcode: 'M_BAD_JSON',
    error: 'Unable to resolve client-server API',
    userinfo: 1,
  },
];

describe.each([
  ['/get_token', GET_TOKEN_REFUSALS],
  ['/sfu/get', SFU_GET_REFUSALS],
] as const)('POST %s with only lk-jwt-service environment: refusals in lk-jwt-service order', (path, steps) => {
  beforeEach(resetCalls);

  it.each(steps.map((s) => [s.name, s] as const))('refuses %s with its status, errcode and text, CORS, and only the calls due by then', async (_name, step) => {
    const res = await post(w.daemon.url, path, step.body());
    expect({ status: res.status, errcode: res.json?.errcode, error: res.json?.error }).toEqual({ status: step.status, errcode: step.errcode, error: step.error });
    for (const [h, v] of Object.entries(CORS)) expect(res.headers.get(h)).toBe(v);
    expect(userinfoCalls()).toBe(step.userinfo);
    expect(createRoomCalls()).toHaveLength(0);
    expect(w.hs.calls.filter((c) => c.op !== 'create')).toHaveLength(0);
  });

  it('answers 500 "Unable to create room on SFU" when CreateRoom fails, after the OpenID check', async () => {
    w.lk.setFailing(403);
    const res = await post(w.daemon.url, path, path === '/get_token' ? getTokenBody() : sfuGetBody());
    expect({ status: res.status, errcode: res.json?.errcode, error: res.json?.error }).toEqual({ status: 500, errcode: 'M_UNKNOWN', error: 'Unable to create room on SFU' });
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(userinfoCalls()).toBe(1);
    expect(createRoomCalls()).toHaveLength(1);
  });

  it('answers OPTIONS 200 and other methods 405, both with the CORS headers', async () => {
    const options = await fetch(w.daemon.url + path, { method: 'OPTIONS' });
    expect(options.status).toBe(200);
    for (const [h, v] of Object.entries(CORS)) expect(options.headers.get(h)).toBe(v);
    for (const method of ['GET', 'PUT', 'DELETE']) {
      const res = await fetch(w.daemon.url + path, { method });
      expect(res.status).toBe(405);
      expect(res.headers.get('access-control-allow-origin')).toBe('*');
    }
  });
});

describe('restricted users (their homeserver is not listed)', () => {
  beforeEach(resetCalls);
  const remote = () => ({ access_token: 'tok-remote', matrix_server_name: w.fedRestricted.authority });

  it('refuses a delegation from a restricted user with 400 after the OpenID check, on both routes, and creates no room', async () => {
    const viaGetToken = await post(w.open.url, '/get_token', getTokenBody({ openid_token: remote(), member: { id: MEMBER, claimed_user_id: `@remote:${w.fedRestricted.authority}`, claimed_device_id: DEVICE }, delay_id: 'syd_r', delay_timeout: 5000 }));
    const viaSfuGet = await post(w.open.url, '/sfu/get', sfuGetBody({ openid_token: remote(), delay_id: 'syd_r', delay_timeout: 5000 }));
    for (const res of [viaGetToken, viaSfuGet]) {
      expect({ status: res.status, errcode: res.json?.errcode, error: res.json?.error }).toEqual({ status: 400, errcode: 'M_BAD_JSON', error: 'Delegation of delayed events is only supported for full access users' });
    }
    expect(w.fedRestricted.callsTo('userinfo')).toHaveLength(2);
    expect(createRoomCalls()).toHaveLength(0);
  });

  it('gives a restricted user a join-only token that cannot publish, and never creates a room', async () => {
    const res = await post(w.open.url, '/get_token', getTokenBody({ openid_token: remote(), member: { id: MEMBER, claimed_user_id: `@remote:${w.fedRestricted.authority}`, claimed_device_id: DEVICE } }));
    expect(res.status).toBe(200);
    const claims = await claimsOf(res.json!.jwt as string);
    expect(claims.sub).toBe(liveKitIdentity(`@remote:${w.fedRestricted.authority}`, DEVICE, MEMBER));
    expect(claims.video).toMatchObject({ room: liveKitRoomName(ROOM_ID, SLOT_ID), roomJoin: true, canSubscribe: true, canPublish: false });
    expect(claims.video?.roomCreate).not.toBe(true);
    const legacy = await post(w.open.url, '/sfu/get', sfuGetBody({ openid_token: remote() }));
    expect(legacy.status).toBe(200);
    expect((await claimsOf(legacy.json!.jwt as string)).video).toMatchObject({ canPublish: false });
    expect(createRoomCalls()).toHaveLength(0);
  });

  it('refuses a restricted user whose homeserver is on a private address when private addresses are not allowed (SSRF guard)', async () => {
    const res = await post(w.daemon.url, '/get_token', getTokenBody({ openid_token: remote(), member: { id: MEMBER, claimed_user_id: `@remote:${w.fedRestricted.authority}`, claimed_device_id: DEVICE } }));
    expect(res.status).toBe(401);
    expect(w.fedRestricted.calls).toHaveLength(0);
  });
});

describe('tokens for full-access users', () => {
  beforeEach(resetCalls);

  it('/get_token: hashed identity, hashed room, publish grant, 1 h from now, never roomCreate; CreateRoom with 300/20/0', async () => {
    const before = Math.floor(Date.now() / 1000);
    const res = await post(w.daemon.url, '/get_token', getTokenBody());
    expect(res.status).toBe(200);
    expect(res.json!.url).toBe(w.lk.url.replace(/^http/, 'ws'));
    const claims = await claimsOf(res.json!.jwt as string);
    expect(claims.iss).toBe(KEY);
    expect(claims.sub).toBe(liveKitIdentity(w.alice, DEVICE, MEMBER));
    expect(claims.video).toEqual({
      room: liveKitRoomName(ROOM_ID, SLOT_ID),
      roomJoin: true,
      roomCreate: false,
      canSubscribe: true,
      canPublish: true,
      hidden: false,
      canUpdateOwnMetadata: false,
    });
    expect(Number(claims.exp) - Number(claims.nbf)).toBe(3600);
    expect(Number(claims.nbf)).toBeGreaterThanOrEqual(before - 1);
    expect(Number(claims.nbf)).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
    expect(createRoomCalls().map((c) => [c.room, c.params])).toEqual([[liveKitRoomName(ROOM_ID, SLOT_ID), { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 0 }]]);
    expect(w.hs.calls).toHaveLength(0);
  });

  it('/sfu/get: raw <user>:<device> identity in the m.call#ROOM room', async () => {
    const res = await post(w.daemon.url, '/sfu/get', sfuGetBody());
    expect(res.status).toBe(200);
    const claims = await claimsOf(res.json!.jwt as string);
    expect(claims.sub).toBe(`${w.alice}:${DEVICE}`);
    expect(claims.video).toMatchObject({ room: legacyRoomName(ROOM_ID), canPublish: true });
    expect(createRoomCalls().map((c) => [c.room, c.params])).toEqual([[legacyRoomName(ROOM_ID), { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 0 }]]);
  });

  it('counts issued and refused tokens by route and outcome', async () => {
    const text = await scrape(w.daemon.url);
    expect(metric(text, 'futures_sidecar_tokens_issued_total', { route: 'get_token', outcome: 'full_access' })).toBeGreaterThanOrEqual(1);
    expect(metric(text, 'futures_sidecar_tokens_issued_total', { route: 'sfu_get', outcome: 'full_access' })).toBeGreaterThanOrEqual(1);
    expect(metric(text, 'futures_sidecar_tokens_issued_total', { route: 'get_token', outcome: 'refused' })).toBeGreaterThanOrEqual(1);
    expect(metric(text, 'futures_sidecar_tokens_issued_total', { route: 'sfu_get', outcome: 'failed' })).toBeGreaterThanOrEqual(1);
  });
});

/** Element Call: a token first, the LiveKit join, then the same route again with the delay fields. */
const FLOWS = [
  {
    name: '/get_token with the hashed identity',
    path: '/get_token',
    body: (delay?: Json) => getTokenBody(delay),
    room: () => liveKitRoomName(ROOM_ID, SLOT_ID),
    identity: () => liveKitIdentity(w.alice, DEVICE, MEMBER),
  },
  {
    name: "/get_token, joined with Element Call's legacy identity (Compatibility mode)",
    path: '/get_token',
    body: (delay?: Json) => getTokenBody(delay),
    room: () => legacyRoomName(ROOM_ID),
    identity: () => legacyIdentity(w.alice, DEVICE),
  },
  {
    name: '/sfu/get with the raw identity',
    path: '/sfu/get',
    body: (delay?: Json) => sfuGetBody(delay),
    room: () => legacyRoomName(ROOM_ID),
    identity: () => legacyIdentity(w.alice, DEVICE),
  },
] as const;

describe('the Element Call flow, delegating through the token request', () => {
  beforeEach(resetCalls);

  it.each(FLOWS.map((f) => [f.name, f] as const))('%s: restarts the delayed event while connected and sends it on leave', async (_name, flow) => {
    const sender = new WebhookSender({ url: `${w.daemon.url}/sfu_webhook`, apiKey: KEY, apiSecret: SECRET });
    const first = await post(w.daemon.url, flow.path, flow.body());
    expect(first.status).toBe(200);
    const sid = `PA_${Math.random().toString(36).slice(2, 10)}`;
    expect((await sender.participantJoined(flow.room(), { sid, identity: flow.identity() })).status).toBe(200);

    const delayId = await newDelayedLeave();
    const second = await post(w.daemon.url, flow.path, flow.body({ delay_id: delayId, delay_timeout: DELAY_MS, delay_cs_api_url: 'https://ignored.invalid' }));
    expect(second.status).toBe(200);
    expect(typeof second.json!.jwt).toBe('string');
    // First restart at registration, the next ones at about half the delay: the event never runs out while joined.
    await waitFor('two restarts while connected', () => delayedCalls(delayId, 'restart').filter((c) => c.status === 200).length >= 2, 20_000);
    expect(delayedCalls(delayId, 'send')).toHaveLength(0);
    expect(w.hs.status(delayId)).toBe('pending');

    expect((await sender.participantLeft(flow.room(), { sid, identity: flow.identity() }, 'CLIENT_INITIATED')).status).toBe(200);
    await waitFor('the leave sent', () => delayedCalls(delayId, 'send').some((c) => c.status === 200), 20_000);
    expect(w.hs.status(delayId)).toBe('sent');
    // Restarts went unauthenticated to the unstable path, as lk-jwt-service sends them.
    expect(delayedCalls(delayId, 'restart').every((c) => c.authorization === undefined)).toBe(true);
  }, 40_000);

  it('replaces the first delegation by a second one for the same participant: only the second is kept alive and sent', async () => {
    const sender = new WebhookSender({ url: `${w.daemon.url}/sfu_webhook`, apiKey: KEY, apiSecret: SECRET });
    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const identity = liveKitIdentity(w.alice, DEVICE, MEMBER);
    const sid = `PA_${Math.random().toString(36).slice(2, 10)}`;
    expect((await sender.participantJoined(room, { sid, identity })).status).toBe(200);
    const one = await newDelayedLeave();
    expect((await post(w.daemon.url, '/get_token', getTokenBody({ delay_id: one, delay_timeout: DELAY_MS }))).status).toBe(200);
    await waitFor('the first delegation restarted', () => delayedCalls(one, 'restart').length >= 1);
    const two = await newDelayedLeave();
    expect((await post(w.daemon.url, '/get_token', getTokenBody({ delay_id: two, delay_timeout: DELAY_MS }))).status).toBe(200);
    await waitFor('the second delegation restarted twice', () => delayedCalls(two, 'restart').length >= 2, 20_000);
    const restartsOfOne = delayedCalls(one, 'restart').length;
    expect((await sender.participantLeft(room, { sid, identity }, 'CLIENT_INITIATED')).status).toBe(200);
    await waitFor('the second leave sent', () => delayedCalls(two, 'send').length >= 1, 20_000);
    expect(delayedCalls(one, 'restart')).toHaveLength(restartsOfOne);
    expect(delayedCalls(one, 'send')).toHaveLength(0);
  }, 40_000);
});

describe('the admin API shows the route of origin', () => {
  beforeEach(resetCalls);

  it('lists a delegation made through /sfu/get with route /sfu/get', async () => {
    const delayId = await newDelayedLeave();
    expect((await post(w.open.url, '/sfu/get', sfuGetBody({ delay_id: delayId, delay_timeout: DELAY_MS }))).status).toBe(200);
    const res = await fetch(`${w.open.url}/v1/admin/delegations?identity=${encodeURIComponent(legacyIdentity(w.alice, DEVICE))}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const listed = ((await res.json()) as Json).delegations as Json[];
    expect(listed.map((d) => [d.route, d.state])).toContainEqual(['/sfu/get', 'awaiting_join']);
  });
});

describe("Element Call's delegation probe", () => {
  it('reads a non-404 with CORS from an empty POST to /delegate_delayed_leave, so it knows delegation is supported', async () => {
    const res = await fetch(`${w.daemon.url}/delegate_delayed_leave`, { method: 'POST' });
    expect(res.status).toBe(400);
    for (const [h, v] of Object.entries(CORS)) expect(res.headers.get(h)).toBe(v);
  });
});

describe('/healthz', () => {
  it('answers GET and HEAD with an empty 200 and other methods with 405', async () => {
    const get = await fetch(`${w.daemon.url}/healthz`);
    expect([get.status, await get.text()]).toEqual([200, '']);
    expect((await fetch(`${w.daemon.url}/healthz`, { method: 'HEAD' })).status).toBe(200);
    expect((await fetch(`${w.daemon.url}/healthz`, { method: 'POST' })).status).toBe(405);
  });
});

describe('LIVEKIT_INSECURE_SKIP_VERIFY_TLS', () => {
  let strict: BareDaemon;
  beforeAll(async () => {
    const bind = await loopbackBind();
    strict = await spawnBareDaemon({ ...lkJwtEnv({ LIVEKIT_JWT_BIND: bind.bind, LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'yes' }), SIDECAR_STORE: `sqlite:${join(w.dir, 'strict.db')}` }, bind.url);
  }, 40_000);
  afterAll(async () => {
    await strict?.stop();
  });
  beforeEach(resetCalls);

  it('verifies certificates unless set to the exact magic value: the self-signed homeserver is refused (401) and never answers a request', async () => {
    const res = await post(strict.url, '/get_token', getTokenBody());
    expect([res.status, res.json?.errcode]).toEqual([401, 'M_UNAUTHORIZED']);
    expect(w.fed.callsTo('userinfo')).toHaveLength(0);
    expect(strict.output.join('\n')).toMatch(/LIVEKIT_INSECURE_SKIP_VERIFY_TLS is ignored/);
    // The daemons of the other tests, started with the magic value, reached the same homeserver.
    expect((await post(w.daemon.url, '/get_token', getTokenBody())).status).toBe(200);
  });
});

describe.runIf(redisTestsEnabled('lk-jwt-service LIVEKIT_REDIS_URL'))('LIVEKIT_REDIS_URL and LIVEKIT_REDIS_PASSWORD', () => {
  let redis: RedisServer;
  let daemon: BareDaemon;
  const PASSWORD = 'redis-pw-0d9c';
  beforeAll(async () => {
    redis = await startRedis();
    const admin = new Redis(redis.url);
    await admin.config('SET', 'requirepass', PASSWORD);
    admin.disconnect();
    const bind = await loopbackBind();
    // No store setting of ours at all: lk-jwt-service's Redis variables choose the store.
    daemon = await spawnBareDaemon({ ...lkJwtEnv({ LIVEKIT_JWT_BIND: bind.bind, LIVEKIT_REDIS_URL: redis.url, LIVEKIT_REDIS_PASSWORD: PASSWORD }) }, bind.url);
  }, 40_000);
  afterAll(async () => {
    await daemon?.stop();
    await redis?.stop();
  });
  beforeEach(resetCalls);

  it('keeps a delegation made through /get_token in that Redis, reached with the password', async () => {
    await waitFor('ready', async () => (await fetch(`${daemon.url}/readyz`)).status === 200, 20_000);
    const delayId = await newDelayedLeave();
    expect((await post(daemon.url, '/get_token', getTokenBody({ delay_id: delayId, delay_timeout: DELAY_MS }))).status).toBe(200);
    const client = new Redis(redis.url, { password: PASSWORD });
    try {
      const keys = await client.keys('futures-sidecar:d:*');
      const stored = await Promise.all(keys.map(async (k) => JSON.parse((await client.get(k)) ?? '{}') as Json));
      expect(stored.filter((d) => d.source === 'get_token' && d.identity === liveKitIdentity(w.alice, DEVICE, MEMBER))).toHaveLength(1);
      // The delay id itself is kept apart from the delegation and never in it.
      expect(JSON.stringify(stored)).not.toContain(delayId);
    } finally {
      client.disconnect();
    }
    expect(daemon.output.join('\n')).not.toContain(PASSWORD);
  });
});
