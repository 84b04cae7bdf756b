import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildApp, type Daemon } from '../../src/app.js';
import { ManualClock } from '../../src/clock.js';
import { legacyIdentity, legacyRoomName, liveKitIdentity, liveKitRoomName } from '../../src/compat/livekit-names.js';
import { MatrixLookupError, MatrixResolver, parseServerName, pickSrv } from '../../src/compat/matrix-resolver.js';
import { loadConfig } from '../../src/config.js';
import type { LifecycleEvent } from '../../src/delegations/model.js';
import { csApiUrlRefusal, isServerNameAllowed } from '../../src/compat/matrix-user.js';
import { createLogger } from '../../src/log.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { WebhookSender } from '../fakes/livekit.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { requestJson, type JsonAnswer } from '../helpers/lk-jwt.js';

const SERVER = 'example.com';
const ALICE = '@alice:example.com';
const DEVICE = 'DEVICE';
const MEMBER_ID = 'member-1';
const ROOM_ID = '!room:example.com';
const SLOT_ID = 'm.call#';
const ALICE_TOKEN = 'openid-token-alice-7f3a9c';
const BOB_TOKEN = 'openid-token-bob-2b8e1d';
const FOREIGN_TOKEN = 'openid-token-foreign-91cc0a';
const PORT_ONE_SERVER = '127.0.0.1:1';
const MEMBERSHIP_TYPE = 'org.matrix.msc3401.call.member';

type Json = Record<string, unknown>;

interface Harness {
  daemon: Daemon;
  url: string;
  hs: FakeHomeserver;
  fed: FakeMatrixFederation;
  lk: WebhookSender;
  events: LifecycleEvent[];
  logs: string[];
  stop(): Promise<void>;
}

interface HarnessOptions {
  env?: Record<string, string>;
  captureLogs?: boolean;
  dev?: boolean;
  resolver?: (fed: FakeMatrixFederation) => MatrixResolver;
}

async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const hs = await startFakeHomeserver();
  const fed = await startFakeMatrixFederation({
    tokens: { [ALICE_TOKEN]: ALICE, [BOB_TOKEN]: '@bob:example.com', [FOREIGN_TOKEN]: '@alice:evil.example' },
  });
  fed.addToken('openid-token-port-one', `@alice:${PORT_ONE_SERVER}`);
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-compat-'));
  const homeservers = [SERVER, PORT_ONE_SERVER].join(' ');
  const env = {
    SIDECAR_STORE: `sqlite:${join(dir, 'sidecar.db')}`,
    LOG_LEVEL: 'silent',
    SIDECAR_HOMESERVERS: homeservers,
    SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true',
    SIDECAR_CS_API_URL_OVERRIDES: `${SERVER}=${hs.url}`,
    // other.example is not served: if the allowed-server check came after the OpenID lookup, `fed` would see it.
    SIDECAR_FEDERATION_URL_OVERRIDES: `${SERVER}=${fed.url},other.example=${fed.url},${PORT_ONE_SERVER}=${fed.url}`,
    SIDECAR_MIN_TIMEOUT_MS: '1000',
    SIDECAR_HOMESERVER_RATE: '50',
    ...opts.env,
  };
  const logs: string[] = [];
  const logger = opts.captureLogs
    ? createLogger({
        level: 'trace',
        pretty: false,
        destination: new Writable({
          write(chunk, _enc, cb) {
            logs.push(String(chunk));
            cb();
          },
        }),
      })
    : undefined;
  const resolver = opts.resolver?.(fed);
  const daemon = await buildApp(loadConfig(env, { dev: opts.dev ?? true }), { ...(logger ? { logger } : {}), ...(resolver ? { resolver } : {}) });
  const events: LifecycleEvent[] = [];
  daemon.engine.onLifecycle((e) => events.push(e));
  await daemon.start();
  const url = await daemon.app.listen({ port: 0, host: '127.0.0.1' });
  const lk = new WebhookSender({ url: `${url}/livekit/webhook`, apiKey: 'devkey', apiSecret: 'secret' });
  let stopped = false;
  return {
    daemon,
    url,
    hs,
    fed,
    lk,
    events,
    logs,
    async stop() {
      if (stopped) return;
      stopped = true;
      await daemon.shutdown();
      await resolver?.close();
      await hs.close();
      await fed.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function delegationBody(over: Json = {}): Json {
  return {
    room_id: ROOM_ID,
    slot_id: SLOT_ID,
    openid_token: { access_token: ALICE_TOKEN, token_type: 'Bearer', matrix_server_name: SERVER, expires_in: 3600 },
    member: { id: MEMBER_ID, claimed_user_id: ALICE, claimed_device_id: DEVICE },
    delay_id: 'syd_placeholder',
    delay_timeout: 8000,
    delay_cs_api_url: 'https://ignored.invalid',
    ...over,
  };
}

/** The body with one dotted path set (or removed with `undefined`). */
function withField(path: string, value: unknown, base: Json = delegationBody()): Json {
  const copy = structuredClone(base);
  const keys = path.split('.');
  let node = copy;
  for (const k of keys.slice(0, -1)) node = node[k] as Json;
  const last = keys[keys.length - 1]!;
  if (value === undefined) delete node[last];
  else node[last] = value;
  return copy;
}

function call(url: string, method: string, body?: Json | string, headers: Record<string, string> = {}): Promise<JsonAnswer> {
  return requestJson(`${url}/delegate_delayed_leave`, method, body, headers);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, probe: () => T | undefined | null | false, timeoutMs = 8000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

async function newDelayedLeave(hs: FakeHomeserver, delayMs: number): Promise<string> {
  return hs.createDelayedEvent({ roomId: ROOM_ID, eventType: MEMBERSHIP_TYPE, stateKey: `_${ALICE}_${DEVICE}`, content: {}, delayMs });
}

const callsFor = (hs: FakeHomeserver, delayId: string) => hs.calls.filter((c) => c.handle === delayId && c.op !== 'create');
const outgoingCalls = (h: Harness) => h.fed.calls.length + h.hs.calls.filter((c) => c.op !== 'create').length;

describe('POST /delegate_delayed_leave: refusals', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h.stop();
  });
  beforeEach(() => {
    h.fed.calls.length = 0;
    h.fed.respondWith('userinfo', null);
  });

  const notJson: Array<[string, Json | string]> = [
    ['unparseable JSON', '{"room_id": '],
    ['an empty body', ''],
    ['a JSON array', '[]'],
    ['a JSON string', '"hello"'],
    ['an unknown top-level field', delegationBody({ extra: true })],
    ['an unknown field in openid_token', withField('openid_token.scope', 'x')],
    ['an unknown field in member', withField('member.role', 'x')],
    ['a fractional delay_timeout', delegationBody({ delay_timeout: 1.5 })],
    ['a delay_timeout given as a string', delegationBody({ delay_timeout: '8000' })],
    ['a number for room_id', delegationBody({ room_id: 5 })],
    ['a string for member', delegationBody({ member: 'alice' })],
    ['an array for openid_token', delegationBody({ openid_token: [] })],
    ['a fractional expires_in', withField('openid_token.expires_in', 0.5)],
    ['a boolean for delay_cs_api_url', delegationBody({ delay_cs_api_url: true })],
  ];
  it.each(notJson)('answers 400 M_NOT_JSON to %s, without any outgoing call', async (_name, body) => {
    const res = await call(h.url, 'POST', body);
    expect(res.status).toBe(400);
    expect(res.json?.errcode).toBe('M_NOT_JSON');
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(outgoingCalls(h)).toBe(0);
  });

  it('decodes the body whatever its Content-Type says, as lk-jwt-service does', async () => {
    const res = await call(h.url, 'POST', JSON.stringify(withField('delay_id', undefined)), { 'content-type': 'text/plain' });
    expect(res.status).toBe(400);
    expect(res.json?.errcode).toBe('M_BAD_JSON');
  });

  it('answers 413 with CORS to a body over 64 KiB', async () => {
    const res = await call(h.url, 'POST', delegationBody({ room_id: `!${'x'.repeat(70_000)}:example.com` }));
    expect(res.status).toBe(413);
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(outgoingCalls(h)).toBe(0);
  });

  it('answers 400 M_NOT_JSON to a body that is not UTF-8', async () => {
    const res = await fetch(`${h.url}/delegate_delayed_leave`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: Buffer.concat([Buffer.from('{"room_id":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as Json).errcode).toBe('M_NOT_JSON');
  });

  const badJson: Array<[string, Json]> = [
    ['room_id missing', withField('room_id', undefined)],
    ['slot_id empty', withField('slot_id', '')],
    ['openid_token missing', withField('openid_token', undefined)],
    ['openid_token.access_token missing', withField('openid_token.access_token', undefined)],
    ['openid_token.matrix_server_name null', withField('openid_token.matrix_server_name', null)],
    ['member missing', withField('member', undefined)],
    ['member.id missing', withField('member.id', undefined)],
    ['member.claimed_user_id empty', withField('member.claimed_user_id', '')],
    ['member.claimed_device_id missing', withField('member.claimed_device_id', undefined)],
    ['delay_id missing', withField('delay_id', undefined)],
    ['delay_timeout missing', withField('delay_timeout', undefined)],
    ['delay_timeout 0', delegationBody({ delay_timeout: 0 })],
    ['delay_timeout negative', delegationBody({ delay_timeout: -5 })],
    ['delay_timeout below SIDECAR_MIN_TIMEOUT_MS', delegationBody({ delay_timeout: 999 })],
    ['delay_timeout above SIDECAR_MAX_TIMEOUT_MS', delegationBody({ delay_timeout: 86_400_001 })],
  ];
  it.each(badJson)('answers 400 M_BAD_JSON with %s, without any outgoing call', async (_name, body) => {
    const res = await call(h.url, 'POST', body);
    expect(res.status).toBe(400);
    expect(res.json?.errcode).toBe('M_BAD_JSON');
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(outgoingCalls(h)).toBe(0);
  });

  it('answers 403 M_FORBIDDEN for a Matrix server it does not serve, before any outgoing call', async () => {
    const res = await call(h.url, 'POST', withField('openid_token.matrix_server_name', 'other.example'));
    expect(res.status).toBe(403);
    expect(res.json?.errcode).toBe('M_FORBIDDEN');
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(outgoingCalls(h)).toBe(0);
  });

  it('answers 403 M_FORBIDDEN for a matrix_server_name that is not a server name, before any outgoing call', async () => {
    const res = await call(h.url, 'POST', withField('openid_token.matrix_server_name', 'example.com/evil?x='));
    expect(res.status).toBe(403);
    expect(res.json?.errcode).toBe('M_FORBIDDEN');
    expect(outgoingCalls(h)).toBe(0);
  });

  it('answers 401 M_UNAUTHORIZED when the homeserver does not know the OpenID token', async () => {
    const res = await call(h.url, 'POST', withField('openid_token.access_token', 'not-a-token'));
    expect(res.status).toBe(401);
    expect(res.json?.errcode).toBe('M_UNAUTHORIZED');
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(h.fed.callsTo('userinfo')).toHaveLength(1);
    expect(h.fed.callsTo('userinfo')[0]!.knownToken).toBe(false);
  });

  it('answers 401 M_UNAUTHORIZED when the token belongs to another user than member.claimed_user_id', async () => {
    const res = await call(h.url, 'POST', withField('openid_token.access_token', BOB_TOKEN));
    expect(res.status).toBe(401);
    expect(res.json?.errcode).toBe('M_UNAUTHORIZED');
    expect(h.fed.callsTo('userinfo')[0]!.knownToken).toBe(true);
  });

  it("answers 401 M_UNAUTHORIZED when sub's server is not matrix_server_name, even if it equals the claimed user", async () => {
    const body = withField('member.claimed_user_id', '@alice:evil.example', withField('openid_token.access_token', FOREIGN_TOKEN));
    const res = await call(h.url, 'POST', body);
    expect(res.status).toBe(401);
    expect(res.json?.errcode).toBe('M_UNAUTHORIZED');
  });

  it('answers 401 M_UNAUTHORIZED when the userinfo endpoint fails or redirects (redirects are not followed)', async () => {
    h.fed.respondWith('userinfo', { status: 500, body: { errcode: 'M_UNKNOWN', error: 'boom' } });
    expect((await call(h.url, 'POST', delegationBody())).json?.errcode).toBe('M_UNAUTHORIZED');
    h.fed.respondWith('userinfo', { status: 302, body: '', headers: { location: `${h.fed.url}/_matrix/federation/v1/openid/userinfo?access_token=${BOB_TOKEN}` } });
    const res = await call(h.url, 'POST', delegationBody());
    expect(res.status).toBe(401);
    expect(res.json?.errcode).toBe('M_UNAUTHORIZED');
    expect(h.fed.callsTo('userinfo')).toHaveLength(2);
  });

  it('answers 400 M_BAD_JSON when the client-server API URL cannot be resolved', async () => {
    const body = delegationBody({
      openid_token: { access_token: 'openid-token-port-one', token_type: 'Bearer', matrix_server_name: PORT_ONE_SERVER, expires_in: 3600 },
      member: { id: MEMBER_ID, claimed_user_id: `@alice:${PORT_ONE_SERVER}`, claimed_device_id: DEVICE },
    });
    const res = await call(h.url, 'POST', body);
    expect(res.status).toBe(400);
    expect(res.json?.errcode).toBe('M_BAD_JSON');
    expect(h.fed.callsTo('userinfo')).toHaveLength(1);
    expect(h.daemon.engine.openCount).toBe(0);
  });

  it('never puts the OpenID access token in an answer', async () => {
    for (const body of [withField('openid_token.access_token', 'secret-token-zz9'), withField('delay_timeout', 1.5, withField('openid_token.access_token', 'secret-token-zz9'))]) {
      expect((await call(h.url, 'POST', body)).text).not.toContain('secret-token-zz9');
    }
  });
});

describe('POST /delegate_delayed_leave: a client-server API found through .well-known', () => {
  // The homeserver's .well-known/matrix/client names the plain-http fake homeserver on loopback; federation goes to
  // the federation fake. No client-server API override, so the URL is a discovered one.
  const discovering = (fed: FakeMatrixFederation) =>
    new MatrixResolver({
      federationOverrides: new Map([[SERVER, fed.url]]),
      csApiOverrides: new Map(),
      allowPrivateAddresses: true,
      wellKnownOrigin: () => fed.url,
    });
  const start = (dev: boolean) =>
    startHarness({
      dev,
      resolver: discovering,
      env: { SIDECAR_CS_API_URL_OVERRIDES: '', LIVEKIT_KEYS: 'devkey: secret', ...(dev ? {} : { SIDECAR_HOMESERVERS: SERVER }) },
    });

  it('is used under --dev even as plain http on a private address, which --dev allows (contract section 4)', async () => {
    const h = await start(true);
    try {
      h.fed.setWellKnownClient(h.hs.url);
      const delayId = await newDelayedLeave(h.hs, 8000);
      const res = await call(h.url, 'POST', delegationBody({ delay_id: delayId }));
      expect([res.status, res.json]).toEqual([200, {}]);
      expect(h.fed.callsTo('well_known_client')).toHaveLength(1);
      await waitFor('the first restart at the discovered URL', () => callsFor(h.hs, delayId).some((c) => c.op === 'restart' && c.status === 200));
    } finally {
      await h.stop();
    }
  });

  it('is refused as plain http without --dev: 400 M_BAD_JSON and no delegation', async () => {
    const h = await start(false);
    try {
      h.fed.setWellKnownClient(h.hs.url);
      const res = await call(h.url, 'POST', delegationBody({ delay_id: await newDelayedLeave(h.hs, 8000) }));
      expect([res.status, res.json?.errcode]).toEqual([400, 'M_BAD_JSON']);
      expect(h.fed.callsTo('well_known_client')).toHaveLength(1);
      expect(h.daemon.engine.openCount).toBe(0);
    } finally {
      await h.stop();
    }
  });
});

describe('POST /delegate_delayed_leave: CORS and methods', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h.stop();
  });

  it('answers OPTIONS with 200 and the CORS headers', async () => {
    const res = await call(h.url, 'OPTIONS', undefined, { origin: 'https://call.example', 'access-control-request-method': 'POST' });
    expect(res.status).toBe(200);
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(res.headers.get('access-control-allow-methods')).toBe('POST');
    expect(res.headers.get('access-control-allow-headers')).toBe('Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token');
  });

  it.each(['GET', 'HEAD', 'PUT', 'DELETE', 'PATCH'])('answers %s with 405 and CORS', async (method) => {
    const res = await call(h.url, method, method === 'GET' || method === 'HEAD' ? undefined : '{}');
    expect(res.status).toBe(405);
    if (method !== 'HEAD') expect(res.json?.errcode).toBe('M_UNRECOGNIZED');
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(res.headers.get('allow')).toBe('POST, OPTIONS');
  });

  it('answers 503 M_UNKNOWN with CORS once shutting down', async () => {
    const stopping = h.daemon.shutdown();
    const res = await h.daemon.app.inject({ method: 'POST', url: '/delegate_delayed_leave', payload: delegationBody(), headers: { 'content-type': 'application/json' } });
    await stopping;
    expect(res.statusCode).toBe(503);
    expect(res.json()).toMatchObject({ errcode: 'M_UNKNOWN' });
    expect(res.headers['access-control-allow-origin']).toBe('*');
    expect(h.fed.calls).toHaveLength(0);
  });
});

describe('POST /delegate_delayed_leave: lifecycles', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness({ env: { SIDECAR_REFRESH_AT: '0.5' } });
  });
  afterEach(async () => {
    await h.stop();
  });

  const registered = () => h.events.filter((e) => e.type === 'registered');
  const eventOf = (id: string, type: LifecycleEvent['type']) => h.events.find((e) => e.delegation_id === id && e.type === type);

  it('keeps an Element Call delegation alive while joined, restarting at the configured fraction, and sends on a deliberate leave', async () => {
    const delayId = await newDelayedLeave(h.hs, 2000);
    const res = await call(h.url, 'POST', delegationBody({ delay_id: delayId, delay_timeout: 2000 }));
    expect(res.status).toBe(200);
    expect(res.json).toEqual({});
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    const id = (await waitFor('registration', () => registered()[0])).delegation_id;

    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const participant = { sid: 'PA_ec1', identity: liveKitIdentity(ALICE, DEVICE, MEMBER_ID) };
    expect((await h.lk.participantJoined(room, participant)).status).toBe(200);
    await waitFor('connected', () => eventOf(id, 'connected'));

    const successes = () => callsFor(h.hs, delayId).filter((c) => c.op === 'restart' && c.status === 200);
    await waitFor('four restarts', () => successes().length >= 4, 20_000);
    const restarts = successes();
    const gaps = restarts.slice(1).map((c, i) => c.at - restarts[i]!.at).sort((a, b) => a - b);
    // SIDECAR_REFRESH_AT 0.5 of 2000 ms: each restart 800-1000 ms after the last success, plus scheduling slack. Seen
    // at the homeserver a late request shortens the next gap on a loaded machine, so the median holds the fraction,
    // and no gap may be so short that restarts came in a burst.
    const median = gaps[Math.floor(gaps.length / 2)]!;
    expect(median).toBeGreaterThanOrEqual(750);
    expect(median).toBeLessThanOrEqual(1300);
    expect(gaps[0]).toBeGreaterThanOrEqual(300);
    expect(h.hs.status(delayId)).toBe('pending');

    expect((await h.lk.participantLeft(room, participant, 'CLIENT_INITIATED')).status).toBe(200);
    await waitFor('the delayed leave to be sent', () => h.hs.sent.find((s) => s.handle === delayId && s.cause === 'action'));
    expect(h.hs.status(delayId)).toBe('sent');
    expect(callsFor(h.hs, delayId).filter((c) => c.op === 'send')).toHaveLength(1);
    expect(await waitFor('fired', () => eventOf(id, 'fired'))).toMatchObject({ state: 'fired', outcome: 'sent' });
  });

  it('matches a Compatibility-mode client by its legacy identity in the legacy room and sends when it leaves', async () => {
    const delayId = await newDelayedLeave(h.hs, 10_000);
    expect((await call(h.url, 'POST', delegationBody({ delay_id: delayId, delay_timeout: 10_000 }))).status).toBe(200);
    const id = (await waitFor('registration', () => registered()[0])).delegation_id;

    const room = legacyRoomName(ROOM_ID);
    const participant = { sid: 'PA_legacy', identity: legacyIdentity(ALICE, DEVICE) };
    expect(participant.identity).toBe('@alice:example.com:DEVICE');
    expect((await h.lk.participantJoined(room, participant)).status).toBe(200);
    await waitFor('connected', () => eventOf(id, 'connected'));
    expect((await h.lk.participantLeft(room, participant, 'CLIENT_INITIATED')).status).toBe(200);

    await waitFor('the delayed leave to be sent', () => h.hs.sent.find((s) => s.handle === delayId && s.cause === 'action'));
    expect(h.hs.status(delayId)).toBe('sent');
    expect(await waitFor('fired', () => eventOf(id, 'fired'))).toMatchObject({ outcome: 'sent' });
  });

  it('does not match the legacy identity in the hashed room', async () => {
    const delayId = await newDelayedLeave(h.hs, 10_000);
    expect((await call(h.url, 'POST', delegationBody({ delay_id: delayId, delay_timeout: 10_000 }))).status).toBe(200);
    const id = (await waitFor('registration', () => registered()[0])).delegation_id;
    await h.lk.participantJoined(liveKitRoomName(ROOM_ID, SLOT_ID), { sid: 'PA_x', identity: legacyIdentity(ALICE, DEVICE) });
    await sleep(300);
    expect(eventOf(id, 'connected')).toBeUndefined();
  });

  it('replaces the delegation of the same room and identity: the old one is revoked without a homeserver call', async () => {
    const first = await newDelayedLeave(h.hs, 10_000);
    const second = await newDelayedLeave(h.hs, 10_000);
    expect((await call(h.url, 'POST', delegationBody({ delay_id: first, delay_timeout: 10_000 }))).status).toBe(200);
    const firstId = (await waitFor('first registration', () => registered()[0])).delegation_id;
    await waitFor('the first restart', () => callsFor(h.hs, first).find((c) => c.op === 'restart'));
    const firstCalls = callsFor(h.hs, first).length;

    expect((await call(h.url, 'POST', delegationBody({ delay_id: second, delay_timeout: 10_000 }))).status).toBe(200);
    const secondId = (await waitFor('second registration', () => registered()[1])).delegation_id;
    expect(secondId).not.toBe(firstId);
    expect(eventOf(firstId, 'revoked')).toMatchObject({ state: 'revoked' });
    expect(h.daemon.engine.getOpen(firstId)).toBeUndefined();

    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const participant = { sid: 'PA_r', identity: liveKitIdentity(ALICE, DEVICE, MEMBER_ID) };
    await h.lk.participantJoined(room, participant);
    await waitFor('second connected', () => eventOf(secondId, 'connected'));
    await h.lk.participantLeft(room, participant, 'CLIENT_INITIATED');
    await waitFor('the second leave to be sent', () => h.hs.sent.find((s) => s.handle === second && s.cause === 'action'));

    expect(callsFor(h.hs, first)).toHaveLength(firstCalls);
    expect(h.hs.status(first)).toBe('pending');
    expect(h.hs.status(second)).toBe('sent');
  });

  it('answers 200 again for the same delay_id and keeps the one delegation', async () => {
    const delayId = await newDelayedLeave(h.hs, 10_000);
    const body = delegationBody({ delay_id: delayId, delay_timeout: 10_000 });
    expect((await call(h.url, 'POST', body)).status).toBe(200);
    expect((await call(h.url, 'POST', body)).status).toBe(200);
    expect(registered()).toHaveLength(1);
    expect(h.events.filter((e) => e.type === 'revoked')).toHaveLength(0);
  });

  it('ignores delay_cs_api_url: the calls go to the configured client-server API', async () => {
    const decoy = await startFakeHomeserver();
    try {
      const delayId = await newDelayedLeave(h.hs, 10_000);
      expect((await call(h.url, 'POST', delegationBody({ delay_id: delayId, delay_timeout: 10_000, delay_cs_api_url: decoy.url }))).status).toBe(200);
      await waitFor('the first restart', () => callsFor(h.hs, delayId).find((c) => c.op === 'restart'));
      expect(decoy.calls).toHaveLength(0);
    } finally {
      await decoy.close();
    }
  });
});

describe('POST /delegate_delayed_leave: secrets', () => {
  let h: Harness;
  afterEach(async () => {
    await h.stop();
  });

  it('never logs the OpenID access token or the delay id', async () => {
    h = await startHarness({ captureLogs: true });
    const delayId = await newDelayedLeave(h.hs, 10_000);
    expect((await call(h.url, 'POST', withField('openid_token.access_token', 'unknown-token-4c1d'))).status).toBe(401);
    expect((await call(h.url, 'POST', delegationBody({ delay_id: delayId, delay_timeout: 10_000 }))).status).toBe(200);
    await waitFor('the first restart', () => callsFor(h.hs, delayId).find((c) => c.op === 'restart'));
    const text = h.logs.join('');
    expect(text.length).toBeGreaterThan(0);
    expect(text).not.toContain('unknown-token-4c1d');
    expect(text).not.toContain(ALICE_TOKEN);
    expect(text).not.toContain(delayId);
  });
});

describe('compat delegations with only the server name in SIDECAR_HOMESERVERS', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness();
  });
  afterEach(async () => {
    await h.stop();
  });

  // Regression: the homeserver client used to re-check every call against SIDECAR_HOMESERVERS' origins alone and
  // refused the client-server API URL of a server admitted by name (`homeserver_refused` at the first restart).
  it('restarts the delayed event at the overridden client-server API URL when only the server name is listed', async () => {
    const delayId = await newDelayedLeave(h.hs, 10_000);
    expect((await call(h.url, 'POST', delegationBody({ delay_id: delayId, delay_timeout: 10_000 }))).status).toBe(200);
    await waitFor('the first restart', () => callsFor(h.hs, delayId).find((c) => c.op === 'restart'), 20_000);
  });
});

describe('MatrixResolver discovery (against the fake, with http in place of https)', () => {
  let fed: FakeMatrixFederation;
  let resolver: MatrixResolver | undefined;
  beforeEach(async () => {
    fed = await startFakeMatrixFederation({ tokens: { [ALICE_TOKEN]: ALICE } });
  });
  afterEach(async () => {
    await resolver?.close();
    resolver = undefined;
    await fed.close();
  });

  const make = (over: Partial<ConstructorParameters<typeof MatrixResolver>[0]> = {}) =>
    (resolver = new MatrixResolver({
      federationOverrides: new Map(),
      csApiOverrides: new Map(),
      allowPrivateAddresses: true,
      wellKnownOrigin: () => fed.url,
      federationScheme: 'http',
      resolveSrv: async () => {
        throw Object.assign(new Error('no SRV'), { code: 'ENOTFOUND' });
      },
      ...over,
    }));

  it('follows .well-known/matrix/server to the delegated host and port', async () => {
    fed.setWellKnownServer(fed.authority);
    const r = make();
    expect(await r.federationTarget(SERVER)).toEqual({ base: fed.url, hostHeader: fed.authority, how: 'well_known' });
    expect(await r.verifyOpenId(SERVER, ALICE_TOKEN)).toBe(ALICE);
    // The second lookup finds the address in the resolver's cache (1 h, as lk-jwt-service).
    expect(fed.calls.map((c) => c.endpoint)).toEqual(['well_known_server', 'userinfo']);
    expect(fed.callsTo('userinfo')[0]!.host).toBe(fed.authority);
  });

  it('uses _matrix-fed._tcp, then _matrix._tcp SRV records when there is no .well-known, with the server name as Host', async () => {
    const asked: string[] = [];
    const port = Number(fed.authority.split(':')[1]);
    const r = make({
      resolveSrv: async (name) => {
        asked.push(name);
        if (name.startsWith('_matrix-fed.')) throw Object.assign(new Error('none'), { code: 'ENODATA' });
        return [{ name: '127.0.0.1', port, priority: 10, weight: 1 }];
      },
    });
    expect(await r.verifyOpenId(SERVER, ALICE_TOKEN)).toBe(ALICE);
    expect(asked).toEqual(['_matrix-fed._tcp.example.com', '_matrix._tcp.example.com']);
    expect(fed.callsTo('userinfo')[0]!.host).toBe(SERVER);
  });

  it('falls back to port 8448 of the server name', async () => {
    const r = make();
    expect(await r.federationTarget(SERVER)).toEqual({ base: 'http://example.com:8448', hostHeader: SERVER, how: 'default_port' });
  });

  it('uses an IP literal or an explicit port as is, without .well-known', async () => {
    const r = make({ federationScheme: 'https' });
    expect(await r.federationTarget('192.0.2.7')).toEqual({ base: 'https://192.0.2.7:8448', hostHeader: '192.0.2.7', how: 'ip_or_port' });
    expect(await r.federationTarget('[2001:db8::1]:8000')).toEqual({ base: 'https://[2001:db8::1]:8000', hostHeader: '[2001:db8::1]:8000', how: 'ip_or_port' });
    expect(await r.federationTarget('matrix.example.com:1234')).toMatchObject({ base: 'https://matrix.example.com:1234', how: 'ip_or_port' });
    expect(fed.calls).toHaveLength(0);
  });

  it('prefers SIDECAR_FEDERATION_URL_OVERRIDES over discovery', async () => {
    fed.setWellKnownServer('elsewhere.example:443');
    const r = make({ federationOverrides: new Map([[SERVER, fed.url]]) });
    expect(await r.federationTarget(SERVER)).toEqual({ base: fed.url, hostHeader: null, how: 'override' });
    expect(fed.calls).toHaveLength(0);
  });

  it('refuses private addresses without connecting unless they are allowed or configured', async () => {
    fed.setWellKnownServer(fed.authority);
    const r = make({ allowPrivateAddresses: false });
    await expect(r.verifyOpenId(SERVER, ALICE_TOKEN)).rejects.toBeInstanceOf(MatrixLookupError);
    expect(fed.calls).toHaveLength(0);
    await expect(r.verifyOpenId(fed.authority, ALICE_TOKEN)).rejects.toThrow(/private/);
    expect(fed.calls).toHaveLength(0);
  });

  it('does not follow redirects and limits response bodies to 64 KiB', async () => {
    const r = make({ federationOverrides: new Map([[SERVER, fed.url]]) });
    fed.respondWith('userinfo', { status: 307, body: '', headers: { location: '/elsewhere' } });
    await expect(r.verifyOpenId(SERVER, ALICE_TOKEN)).rejects.toThrow('userinfo answered 307');
    fed.respondWith('userinfo', { status: 200, body: `{"sub":"${ALICE}","pad":"${'x'.repeat(70_000)}"}` });
    await expect(r.verifyOpenId(SERVER, ALICE_TOKEN)).rejects.toThrow('response too large');
    expect(fed.calls.filter((c) => c.path === '/elsewhere')).toHaveLength(0);
  });

  it('keeps the access token out of its errors', async () => {
    const r = make({ federationOverrides: new Map([[SERVER, fed.url]]) });
    const err = await r.verifyOpenId(SERVER, 'token-not-known-5e2').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MatrixLookupError);
    expect(String((err as Error).message)).not.toContain('token-not-known-5e2');
    expect(JSON.stringify(err)).not.toContain('token-not-known-5e2');
  });

  it('discovers the client-server API from .well-known/matrix/client and caches it for 4 hours', async () => {
    const clock = new ManualClock();
    fed.setWellKnownClient('https://matrix.example.com/');
    const r = make({ clock });
    expect(await r.csApiBaseUrl(SERVER)).toEqual({ url: 'https://matrix.example.com', how: 'discovered' });
    fed.setWellKnownClient('https://moved.example.com');
    clock.advance(4 * 3600_000 - 1);
    expect((await r.csApiBaseUrl(SERVER)).url).toBe('https://matrix.example.com');
    expect(fed.callsTo('well_known_client')).toHaveLength(1);
    clock.advance(1);
    expect((await r.csApiBaseUrl(SERVER)).url).toBe('https://moved.example.com');
    expect(fed.callsTo('well_known_client')).toHaveLength(2);
  });

  it('prefers SIDECAR_CS_API_URL_OVERRIDES, without any call', async () => {
    const r = make({ csApiOverrides: new Map([[SERVER, 'http://10.0.0.5:8008']]) });
    expect(await r.csApiBaseUrl(SERVER)).toEqual({ url: 'http://10.0.0.5:8008', how: 'override' });
    expect(fed.calls).toHaveLength(0);
  });

  it('refuses a discovered client-server API host that resolves to a private address', async () => {
    fed.setWellKnownClient('https://internal.example.com');
    // The fake's own origin is made trusted through an override of an unrelated server, so only the discovered
    // host meets the private-address rule.
    const r = make({ allowPrivateAddresses: false, federationOverrides: new Map([['fixture.example', fed.url]]), lookupAll: async () => ['10.1.2.3'] });
    await expect(r.csApiBaseUrl(SERVER)).rejects.toThrow(/private/);
    fed.setWellKnownClient('https://public.example.com');
    const ok = make({ allowPrivateAddresses: false, federationOverrides: new Map([['fixture.example', fed.url]]), lookupAll: async () => ['93.184.216.34'] });
    expect(await ok.csApiBaseUrl(SERVER)).toEqual({ url: 'https://public.example.com', how: 'discovered' });
  });

  it('refuses a .well-known/matrix/client without a usable base_url', async () => {
    const r = make();
    await expect(r.csApiBaseUrl(SERVER)).rejects.toThrow('answered 404');
    fed.respondWith('well_known_client', { status: 200, body: { 'm.homeserver': { base_url: 'ftp://x' } } });
    await expect(r.csApiBaseUrl(SERVER)).rejects.toThrow(/base_url/);
  });
});

describe('compat rules without I/O', () => {
  it('admits an overridden client-server API URL like an explicitly listed origin, and a discovered one only as https and public', () => {
    const strict = { allowPrivateAddresses: false, allowHttp: false };
    expect(csApiUrlRefusal({ url: 'http://10.0.0.5:8008', how: 'override' }, strict)).toBeNull();
    expect(csApiUrlRefusal({ url: 'https://matrix.example.com', how: 'discovered' }, strict)).toBeNull();
    expect(csApiUrlRefusal({ url: 'http://matrix.example.com', how: 'discovered' }, strict)).toMatch(/https/);
    expect(csApiUrlRefusal({ url: 'https://10.0.0.5', how: 'discovered' }, strict)).toMatch(/private/);
    expect(csApiUrlRefusal({ url: 'https://10.0.0.5', how: 'discovered' }, { allowPrivateAddresses: true, allowHttp: false })).toBeNull();
    expect(csApiUrlRefusal({ url: 'http://10.0.0.5', how: 'discovered' }, { allowPrivateAddresses: true, allowHttp: false })).toMatch(/https/);
  });

  it('admits a discovered plain-http, private client-server API URL under --dev, which allows both (contract section 4)', () => {
    const dev = loadConfig({}, { dev: true });
    expect(dev.allowHttp && dev.allowPrivateAddresses).toBe(true);
    expect(csApiUrlRefusal({ url: 'http://127.0.0.1:8008', how: 'discovered' }, dev)).toBeNull();
    const prod = loadConfig({ LIVEKIT_KEYS: 'k: s', SIDECAR_HOMESERVERS: '*' }, { dev: false });
    expect(csApiUrlRefusal({ url: 'http://matrix.example.com', how: 'discovered' }, prod)).toMatch(/https/);
  });

  it('allows a listed server name exactly, or any valid one with *', () => {
    const listed = { homeservers: { any: false, origins: new Set<string>(), serverNames: new Set(['example.com']) } };
    expect(isServerNameAllowed('example.com', listed)).toBe(true);
    expect(isServerNameAllowed('sub.example.com', listed)).toBe(false);
    expect(isServerNameAllowed('example.com:8448', listed)).toBe(false);
    const any = { homeservers: { any: true, origins: new Set<string>(), serverNames: new Set<string>() } };
    expect(isServerNameAllowed('matrix.org', any)).toBe(true);
    expect(isServerNameAllowed('evil/path', any)).toBe(false);
  });

  it('parses server names per the Matrix grammar', () => {
    expect(parseServerName('example.com')).toEqual({ host: 'example.com', port: null, ip: false });
    expect(parseServerName('example.com:8448')).toEqual({ host: 'example.com', port: 8448, ip: false });
    expect(parseServerName('1.2.3.4')).toEqual({ host: '1.2.3.4', port: null, ip: true });
    expect(parseServerName('[::1]:8008')).toEqual({ host: '::1', port: 8008, ip: true });
    for (const bad of ['', 'a b', 'host:', 'host:99999', 'host:0', '[::1', '[nope]', 'a/b', 'x.com:80:80', 'user@host']) {
      expect(parseServerName(bad)).toBeNull();
    }
  });

  it('picks SRV records by lowest priority, then by weight, and treats "." as no service', () => {
    const recs = [
      { name: 'b.example.', port: 2, priority: 20, weight: 100 },
      { name: 'a1.example.', port: 1, priority: 10, weight: 0 },
      { name: 'a2.example', port: 3, priority: 10, weight: 10 },
    ];
    expect(pickSrv(recs, () => 0.5)).toEqual({ name: 'a2.example', port: 3 });
    expect(pickSrv([{ name: '.', port: 0, priority: 0, weight: 0 }], () => 0)).toBeNull();
    expect(pickSrv([{ name: 'only.example.', port: 8448, priority: 0, weight: 0 }], () => 0)).toEqual({ name: 'only.example', port: 8448 });
  });
});
