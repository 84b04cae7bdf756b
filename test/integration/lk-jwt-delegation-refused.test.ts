/**
 * A delegation refused by admission control never costs the participant the call (issue 15): the daemon runs with
 * lk-jwt-service's environment and a homeserver rate that one Element Call delegation (10 s delay) fills. A second
 * participant of that homeserver then delegates through each token route: `/get_token` still issues the token (Element
 * Call does not retry it), `/sfu/get` answers 400 `M_BAD_JSON` so that Element Call asks again without the delay
 * fields and gets its token. Neither stores anything for the refused delegation, and both count it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TokenVerifier } from 'livekit-server-sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { legacyIdentity, legacyRoomName, liveKitIdentity, liveKitRoomName } from '../../src/compat/livekit-names.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { startFakeRoomService, type FakeRoomService } from '../fakes/livekit.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { ADMIN_TOKEN, waitFor } from '../helpers/daemon.js';
import { metric } from '../helpers/metrics.js';
import { loopbackBind, requestJson, spawnBareDaemon, type BareDaemon } from '../helpers/lk-jwt.js';
import { selfSignedLoopbackCert } from '../helpers/tls.js';

const KEY = 'lkkey';
const SECRET = 'lk-secret-0123456789abcdef0123456789';
const ROOM_ID = '!full:example.org';
const SLOT_ID = 'm.call#ROOM';
/** Element Call's default `delayed_leave_event_delay_ms`: about 0.22 restarts/s, more than half of the budget below. */
const DELAY_MS = 10_000;
/** 80 % of it (0.24 calls/s) is the steady-restart budget: one such delegation fits, a second does not. */
const HOMESERVER_RATE = '0.3';
const MEMBERSHIP_TYPE = 'org.matrix.msc3401.call.member';

type Json = Record<string, any>;

let fed: FakeMatrixFederation;
let hs: FakeHomeserver;
let lk: FakeRoomService;
let daemon: BareDaemon;
let dir: string;
let alice: string;
let bob: string;

beforeAll(async () => {
  fed = await startFakeMatrixFederation({ tls: selfSignedLoopbackCert() });
  alice = `@alice:${fed.authority}`;
  bob = `@bob:${fed.authority}`;
  fed.addToken('tok-alice', alice);
  fed.addToken('tok-bob', bob);
  hs = await startFakeHomeserver();
  lk = await startFakeRoomService({ apiKey: KEY, apiSecret: SECRET });
  dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-lkjwt-refused-'));
  const bind = await loopbackBind();
  daemon = await spawnBareDaemon(
    {
      LIVEKIT_URL: lk.url.replace(/^http/, 'ws'),
      LIVEKIT_KEY: KEY,
      LIVEKIT_SECRET: SECRET,
      LIVEKIT_FULL_ACCESS_HOMESERVERS: fed.authority,
      LIVEKIT_CS_API_URL_OVERRIDES: `${fed.authority}=${hs.url}`,
      LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'YES_I_KNOW_WHAT_I_AM_DOING',
      LIVEKIT_LOG_LEVEL: 'warn',
      LIVEKIT_JWT_BIND: bind.bind,
      SIDECAR_STORE: `sqlite:${join(dir, 'refused.db')}`,
      SIDECAR_HOMESERVER_RATE: HOMESERVER_RATE,
      SIDECAR_ADMIN_TOKEN: ADMIN_TOKEN,
    },
    bind.url,
  );
}, 60_000);

afterAll(async () => {
  await daemon?.stop();
  await Promise.all([fed?.close(), hs?.close(), lk?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const openId = (token: string) => ({ access_token: token, token_type: 'Bearer', matrix_server_name: fed.authority, expires_in: 3600 });
const getTokenBody = (user: string, token: string, device: string, over: Json = {}): Json => ({
  room_id: ROOM_ID,
  slot_id: SLOT_ID,
  openid_token: openId(token),
  member: { id: `member-${device}`, claimed_user_id: user, claimed_device_id: device },
  ...over,
});
const sfuGetBody = (token: string, device: string, over: Json = {}): Json => ({ room: ROOM_ID, openid_token: openId(token), device_id: device, ...over });
const post = (path: string, body: Json) => requestJson(daemon.url + path, 'POST', body);
const delayFields = (delayId: string) => ({ delay_id: delayId, delay_timeout: DELAY_MS, delay_cs_api_url: hs.url });
/** Calls the daemon made for a delayed event (its creation is the test's own). */
const callsFor = (delayId: string) => hs.calls.filter((c) => c.handle === delayId && c.op !== 'create');

async function delayedLeave(user: string, device: string): Promise<string> {
  return hs.createDelayedEvent({ roomId: ROOM_ID, eventType: MEMBERSHIP_TYPE, stateKey: `_${user}_${device}_m.call`, content: {}, delayMs: DELAY_MS });
}

async function openDelegations(): Promise<Json[]> {
  const res = await fetch(`${daemon.url}/v1/admin/delegations`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  expect(res.status).toBe(200);
  return ((await res.json()) as Json).delegations as Json[];
}

async function metricsText(): Promise<string> {
  return (await fetch(`${daemon.url}/metrics`)).text();
}

describe('a delegation refused by admission control, carried by a token request', () => {
  let aliceDelay: string;

  beforeAll(async () => {
    // Alice's delegation takes the homeserver's whole budget, and is confirmed by its first accepted restart.
    aliceDelay = await delayedLeave(alice, 'ALICE');
    const res = await post('/sfu/get', sfuGetBody('tok-alice', 'ALICE', delayFields(aliceDelay)));
    expect(res.status).toBe(200);
    await waitFor("alice's delegation restarted once", () => callsFor(aliceDelay).some((c) => c.op === 'restart' && c.status === 200), 15_000);
  }, 30_000);

  it('/get_token issues the token anyway, stores no delegation, and counts the refusal', async () => {
    const bobDelay = await delayedLeave(bob, 'BOBGT');
    const res = await post('/get_token', getTokenBody(bob, 'tok-bob', 'BOBGT', delayFields(bobDelay)));
    expect(res.status, res.text).toBe(200);
    expect(res.json!.url).toBe(lk.url.replace(/^http/, 'ws'));
    const claims = await new TokenVerifier(KEY, SECRET).verify(res.json!.jwt as string);
    expect(claims.sub).toBe(liveKitIdentity(bob, 'BOBGT', 'member-BOBGT'));
    expect(claims.video).toMatchObject({ room: liveKitRoomName(ROOM_ID, SLOT_ID), roomJoin: true, canPublish: true });

    const open = await openDelegations();
    expect(open.map((d) => d.identity)).toEqual([legacyIdentity(alice, 'ALICE')]);
    expect(callsFor(bobDelay)).toEqual([]);
    expect(hs.status(bobDelay)).toBe('pending');
    expect(await metricsText()).toMatch(/futures_sidecar_tokens_issued_total\{route="get_token",outcome="delegation_refused"\} 1\b/);
  });

  it('/sfu/get answers 400 M_BAD_JSON with CORS, stores nothing, and the retry without delay fields gets a valid token', async () => {
    const bobDelay = await delayedLeave(bob, 'BOBSFU');
    const refused = await post('/sfu/get', sfuGetBody('tok-bob', 'BOBSFU', delayFields(bobDelay)));
    expect(refused.status, refused.text).toBe(400);
    expect(refused.json!.errcode).toBe('M_BAD_JSON');
    expect(refused.json!.error).toMatch(/not delegated.*without delay_id/);
    expect(refused.json!.jwt).toBeUndefined();
    expect(refused.headers.get('access-control-allow-origin')).toBe('*');
    expect(refused.text).not.toContain(bobDelay);

    // Element Call's one retry, without the delay parts.
    const retry = await post('/sfu/get', sfuGetBody('tok-bob', 'BOBSFU'));
    expect(retry.status, retry.text).toBe(200);
    const claims = await new TokenVerifier(KEY, SECRET).verify(retry.json!.jwt as string);
    expect(claims.sub).toBe(legacyIdentity(bob, 'BOBSFU'));
    expect(claims.video).toMatchObject({ room: legacyRoomName(ROOM_ID), roomJoin: true });

    const open = await openDelegations();
    expect(open.map((d) => d.identity)).toEqual([legacyIdentity(alice, 'ALICE')]);
    expect(callsFor(bobDelay)).toEqual([]);
    const text = await metricsText();
    expect(text).toMatch(/futures_sidecar_tokens_issued_total\{route="sfu_get",outcome="delegation_refused"\} 1\b/);
    expect(text).toMatch(/futures_sidecar_tokens_issued_total\{route="sfu_get",outcome="full_access"\} 2\b/);
  });

  it('a delay outside the accepted range: /get_token still issues the token and stores nothing, /sfu/get refuses before any outgoing call', async () => {
    const bobDelay = await delayedLeave(bob, 'BOBRANGE');
    // lk-jwt-service's environment accepts 1 s .. SIDECAR_MAX_TIMEOUT_MS (1 day): 31 days is beyond it.
    const tooLong = { ...delayFields(bobDelay), delay_timeout: 31 * 86_400_000 };
    const refusedBefore = metric(await metricsText(), 'futures_sidecar_tokens_issued_total', { route: 'get_token', outcome: 'delegation_refused' }) ?? 0;
    const lookupsBefore = fed.callsTo('userinfo').length;

    const res = await post('/get_token', getTokenBody(bob, 'tok-bob', 'BOBRANGE', tooLong));
    expect(res.status, res.text).toBe(200);
    const claims = await new TokenVerifier(KEY, SECRET).verify(res.json!.jwt as string);
    expect(claims.sub).toBe(liveKitIdentity(bob, 'BOBRANGE', 'member-BOBRANGE'));

    const sfu = await post('/sfu/get', sfuGetBody('tok-bob', 'BOBRANGE', tooLong));
    expect(sfu.status, sfu.text).toBe(400);
    expect(sfu.json!.errcode).toBe('M_BAD_JSON');
    expect(sfu.json!.error).toMatch(/delay_timeout must be between/);
    // Only /get_token's OpenID check reached the homeserver.
    expect(fed.callsTo('userinfo').length).toBe(lookupsBefore + 1);

    expect((await openDelegations()).map((d) => d.identity)).toEqual([legacyIdentity(alice, 'ALICE')]);
    expect(callsFor(bobDelay)).toEqual([]);
    expect(metric(await metricsText(), 'futures_sidecar_tokens_issued_total', { route: 'get_token', outcome: 'delegation_refused' })).toBe(refusedBefore + 1);
  });

  it("keeps the delegation that holds the budget: alice's delayed leave is still restarted", async () => {
    const before = callsFor(aliceDelay).filter((c) => c.op === 'restart').length;
    await waitFor("alice's next restart", () => callsFor(aliceDelay).filter((c) => c.op === 'restart').length > before, 15_000);
    expect(hs.status(aliceDelay)).toBe('pending');
  }, 20_000);
});
