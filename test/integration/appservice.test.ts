/**
 * Application-service mode (contract section 8), black box over real HTTP: the daemon (buildApp + a real listen)
 * behind a fake homeserver that speaks MSC4512's proxy headers, MSC4502's `is_joined`, MSC4140's lookup and list,
 * `/versions` and identity assertion, with a Twirp RoomService fake. Requests are sent as the homeserver's proxy
 * sends them: `Authorization: Bearer <hs_token>` and `X-Matrix-User-Identifier` (or `X-Matrix-Origin`).
 */
import { TokenVerifier } from 'livekit-server-sdk';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import { liveKitRoomName, msc4195Identity } from '../../src/compat/livekit-names.js';
import { MatrixResolver } from '../../src/compat/matrix-resolver.js';
import { startFakeHomeserver, type FakeHomeserver, type FakeHomeserverOptions } from '../fakes/homeserver.js';
import { WebhookSender, mintParticipantToken, startFakeRoomService, type FakeRoomService } from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, startDaemon, tempDbPath, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { metricValue } from '../helpers/metrics.js';
import { requestJson } from '../helpers/lk-jwt.js';

const AS_TOKEN = 'as-token-of-the-sidecar-0123456789';
const HS_TOKEN = 'hs-token-of-the-homeserver-0123456789';
const SERVER = 'hs.test';
const ALICE = `@alice:${SERVER}`;
const BOB = `@bob:${SERVER}`;
const ROOM_ID = '!call:hs.test';
const SLOT_ID = 'm.call#ROOM';
const MEMBER = 'member-a';
const DELAY_MS = 4000;
const CS = '/_matrix/client/unstable/io.element.msc4195/rtc/livekit';
const CS_V1 = '/_matrix/client/v1/rtc/livekit';
const SS = '/_matrix/federation/unstable/io.element.msc4195/rtc/livekit';

let lk: FakeRoomService;
const open: Array<{ close(): Promise<void> } | RunningDaemon> = [];

beforeAll(async () => {
  lk = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
});
afterAll(async () => {
  await lk.close();
});
afterEach(async () => {
  for (const o of open.splice(0)) await ('stop' in o ? o.stop() : o.close());
});

async function homeserver(opts: FakeHomeserverOptions = {}): Promise<FakeHomeserver> {
  const hs = await startFakeHomeserver({ appservice: { asToken: AS_TOKEN }, ...opts });
  open.push(hs);
  hs.setJoined(ROOM_ID, ALICE, true);
  hs.setJoined(ROOM_ID, SERVER, true);
  return hs;
}

function env(hs: FakeHomeserver, store: string, over: Record<string, string> = {}): Record<string, string> {
  return {
    SIDECAR_STORE: `sqlite:${store}`,
    LIVEKIT_URL: lk.url,
    LIVEKIT_AS_TOKEN: AS_TOKEN,
    LIVEKIT_HS_TOKEN: HS_TOKEN,
    LIVEKIT_HS_SERVER_NAME: SERVER,
    SIDECAR_CS_API_URL_OVERRIDES: `${SERVER}=${hs.url}`,
    LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS: '0',
    ...over,
  };
}

async function daemon(hs: FakeHomeserver, store = tempDbPath('appservice'), over: Record<string, string> = {}): Promise<RunningDaemon> {
  const d = await startDaemon(env(hs, store, over));
  open.push(d);
  return d;
}

/** A request as the homeserver's proxy forwards it. */
function proxied(d: RunningDaemon, path: string, body: unknown, headers: Record<string, string | null> = {}) {
  const h: Record<string, string> = {};
  const all = { authorization: `Bearer ${HS_TOKEN}`, 'x-matrix-user-identifier': ALICE, ...headers };
  for (const [k, v] of Object.entries(all)) if (v !== null) h[k] = v;
  return requestJson(`${d.url}${path}`, 'POST', body, h);
}

const tokenBody = (over: Record<string, unknown> = {}) => ({ room_id: ROOM_ID, slot_id: SLOT_ID, url: lk.url, member_id: MEMBER, ...over });

async function grantOf(jwt: string) {
  return new TokenVerifier(API_KEY, API_SECRET).verify(jwt);
}

describe('application-service routes: refusals', () => {
  it('checks the hs_token on every route, the user header, the url, membership and the body, each with its errcode', async () => {
    const hs = await homeserver();
    const d = await daemon(hs);
    const expectError = async (p: Promise<{ status: number; json: Record<string, unknown> | undefined }>, status: number, errcode: string) => {
      const a = await p;
      expect([a.status, a.json?.errcode], JSON.stringify(a.json)).toEqual([status, errcode]);
    };
    for (const path of ['/_matrix/app/v1/ping', `${CS}/get_token`, `${CS_V1}/get_token`, `${CS}/delegate_delayed_leave`, `${CS_V1}/delegate_delayed_leave`, `${SS}/get_token`]) {
      await expectError(proxied(d, path, {}, { authorization: null }), 401, 'M_MISSING_TOKEN');
      await expectError(proxied(d, path, {}, { authorization: `Bearer ${AS_TOKEN}` }), 401, 'M_UNKNOWN_TOKEN');
      await expectError(proxied(d, path, {}, { authorization: `Bearer ${HS_TOKEN}x` }), 401, 'M_UNKNOWN_TOKEN');
    }
    expect((await proxied(d, '/_matrix/app/v1/ping', { transaction_id: 't1' })).json).toEqual({});

    for (const prefix of [CS, CS_V1]) {
      await expectError(proxied(d, `${prefix}/get_token`, tokenBody(), { 'x-matrix-user-identifier': null }), 401, 'M_UNAUTHORIZED');
      await expectError(proxied(d, `${prefix}/delegate_delayed_leave`, { ...tokenBody(), delay_id: 'x' }, { 'x-matrix-user-identifier': null }), 401, 'M_UNAUTHORIZED');
      await expectError(proxied(d, `${prefix}/get_token`, 'not json'), 400, 'M_NOT_JSON');
      await expectError(proxied(d, `${prefix}/get_token`, { room_id: ROOM_ID }), 400, 'M_BAD_JSON');
      await expectError(proxied(d, `${prefix}/get_token`, tokenBody({ url: 'wss://another-sfu.example' })), 400, 'M_INVALID_PARAM');
      await expectError(proxied(d, `${prefix}/get_token`, tokenBody(), { 'x-matrix-user-identifier': 'alice' }), 400, 'M_INVALID_PARAM');
      await expectError(proxied(d, `${prefix}/get_token`, tokenBody(), { 'x-matrix-user-identifier': BOB }), 403, 'M_FORBIDDEN');
      // The body cannot name the user: only the homeserver's header does.
      await expectError(proxied(d, `${prefix}/get_token`, tokenBody({ user_id: ALICE }), { 'x-matrix-user-identifier': BOB }), 403, 'M_FORBIDDEN');
    }
    hs.setMembershipDown(true);
    await expectError(proxied(d, `${CS}/get_token`, tokenBody()), 502, 'M_UNKNOWN');
    await expectError(proxied(d, `${SS}/get_token`, { ...tokenBody(), user_id: ALICE }, { 'x-matrix-user-identifier': null }), 401, 'M_UNAUTHORIZED');
    hs.setMembershipDown(false);
    await expectError(proxied(d, `${SS}/get_token`, { ...tokenBody(), user_id: ALICE }, { 'x-matrix-origin': 'other.example' }), 403, 'M_FORBIDDEN');
    await expectError(proxied(d, `${SS}/get_token`, { ...tokenBody(), user_id: BOB }, { 'x-matrix-origin': SERVER }), 403, 'M_FORBIDDEN');
    // Nothing was created or delegated by any refusal.
    expect(lk.calls.filter((c) => c.method === 'CreateRoom' && c.room === liveKitRoomName(ROOM_ID, SLOT_ID))).toHaveLength(0);
    expect(d.daemon.engine.openCount).toBe(0);
  });

  it('refuses unknown, foreign and other-room delay ids with 400 M_INVALID_PARAM, and an unreachable lookup with 503', async () => {
    const hs = await homeserver();
    const d = await daemon(hs);
    const bobs = await hs.createDelayedEvent({ asUser: BOB, roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${BOB}_dev`, content: {}, delayMs: DELAY_MS });
    const elsewhere = await hs.createDelayedEvent({ asUser: ALICE, roomId: '!other:hs.test', eventType: 'org.matrix.msc3401.call.member', stateKey: `_${ALICE}_dev`, content: {}, delayMs: DELAY_MS });
    for (const delayId of ['syd_unknown', bobs, elsewhere]) {
      const a = await proxied(d, `${CS_V1}/delegate_delayed_leave`, { ...tokenBody(), delay_id: delayId });
      expect([a.status, a.json?.errcode]).toEqual([400, 'M_INVALID_PARAM']);
    }
    const wrongUrl = await proxied(d, `${CS}/delegate_delayed_leave`, { ...tokenBody({ url: 'wss://elsewhere' }), delay_id: bobs });
    expect([wrongUrl.status, wrongUrl.json?.errcode]).toEqual([400, 'M_INVALID_PARAM']);
    // Every lookup was made as the asking user, never as someone the body named.
    const lookups = hs.calls.filter((c) => c.method === 'GET' && c.path.includes('/delayed_events'));
    expect(lookups.length).toBeGreaterThanOrEqual(3);
    expect(lookups.every((c) => c.userId === ALICE && c.authorization === `Bearer ${AS_TOKEN}`)).toBe(true);
    hs.setDown(true);
    const down = await proxied(d, `${CS}/delegate_delayed_leave`, { ...tokenBody(), delay_id: bobs });
    expect([down.status, down.json?.errcode]).toEqual([503, 'M_UNKNOWN']);
    hs.setDown(false);
    expect(d.daemon.engine.openCount).toBe(0);
    expect(hs.status(bobs)).toBe('pending');
  });
});

describe('application-service routes: tokens', () => {
  it('gives a joined local user a publishing token with the 2-part identity and creates the room, on both paths', async () => {
    const hs = await homeserver();
    const d = await daemon(hs);
    for (const prefix of [CS, CS_V1]) {
      const a = await proxied(d, `${prefix}/get_token`, tokenBody());
      expect(a.status, a.text).toBe(200);
      expect(Object.keys(a.json!)).toEqual(['jwt']);
      const claims = await grantOf(a.json!.jwt);
      expect(claims.sub).toBe(msc4195Identity(ALICE, MEMBER));
      expect(claims.video).toMatchObject({ room: liveKitRoomName(ROOM_ID, SLOT_ID), roomJoin: true, canPublish: true });
    }
    expect(lk.calls.filter((c) => c.method === 'CreateRoom' && c.room === liveKitRoomName(ROOM_ID, SLOT_ID)).length).toBeGreaterThanOrEqual(2);
    // The operator console's totals say which mode runs.
    expect((await api(d.url, 'GET', '/v1/admin/stats', { token: ADMIN_TOKEN })).body.mode).toEqual({ kind: 'appservice', server_name: SERVER });
    const asked = hs.calls.filter((c) => c.path.endsWith('/is_joined'));
    expect(asked.every((c) => c.authorization === `Bearer ${AS_TOKEN}`)).toBe(true);
  });

  it('gives a user of the origin server a subscribe-only token over S-S', async () => {
    const hs = await homeserver();
    hs.setJoined(ROOM_ID, '@carol:remote.test', true);
    const d = await daemon(hs);
    const a = await proxied(d, `${SS}/get_token`, { ...tokenBody(), user_id: '@carol:remote.test' }, { 'x-matrix-user-identifier': null, 'x-matrix-origin': 'remote.test' });
    expect(a.status, a.text).toBe(200);
    const claims = await grantOf(a.json!.jwt);
    expect(claims.sub).toBe(msc4195Identity('@carol:remote.test', MEMBER));
    expect(claims.video?.canPublish).toBe(false);
  });
});

describe("application-service routes: a remote server's user", () => {
  it("relays a get_token for another server through fed_proxy to that server's service, which answers subscribe-only", async () => {
    const REMOTE = 'remote.test';
    const hsA = await homeserver({ serverName: SERVER });
    const hsB = await homeserver({ serverName: REMOTE });
    hsA.setJoined(ROOM_ID, REMOTE, true);
    hsB.setJoined(ROOM_ID, REMOTE, true);
    hsB.setJoined(ROOM_ID, ALICE, true);
    const a = await daemon(hsA);
    const b = await daemon(hsB, tempDbPath('remote'), { LIVEKIT_HS_SERVER_NAME: REMOTE, SIDECAR_CS_API_URL_OVERRIDES: `${REMOTE}=${hsB.url}` });
    hsA.setFederationPeer(REMOTE, { url: b.url, hsToken: HS_TOKEN });
    const ok = await proxied(a, `${CS_V1}/get_token`, tokenBody({ server_name: REMOTE }));
    expect(ok.status, ok.text).toBe(200);
    const claims = await grantOf(ok.json!.jwt);
    expect([claims.sub, claims.video?.canPublish]).toEqual([msc4195Identity(ALICE, MEMBER), false]);
    // The remote service's refusal is relayed (alice is not joined as the remote server sees it)...
    hsB.setJoined(ROOM_ID, ALICE, false);
    const refused = await proxied(a, `${CS_V1}/get_token`, tokenBody({ server_name: REMOTE }));
    expect([refused.status, refused.json?.errcode]).toEqual([403, 'M_FORBIDDEN']);
    // ...a target server not in the room is refused before asking it, and an unreachable one is 502.
    hsA.setJoined(ROOM_ID, 'nowhere.test', true);
    const unreachable = await proxied(a, `${CS_V1}/get_token`, tokenBody({ server_name: 'nowhere.test' }));
    expect([unreachable.status, unreachable.json?.errcode]).toEqual([502, 'M_UNKNOWN']);
    const notJoined = await proxied(a, `${CS_V1}/get_token`, tokenBody({ server_name: 'absent.test' }));
    expect([notJoined.status, notJoined.json?.errcode]).toEqual([403, 'M_FORBIDDEN']);
  });
});

describe('application-service delegations', () => {
  async function lifecycle(opts: FakeHomeserverOptions, path: string) {
    const hs = await homeserver(opts);
    const store = tempDbPath('appservice-life');
    let d = await daemon(hs, store);
    const delayId = await hs.createDelayedEvent({ asUser: ALICE, roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${ALICE}_dev`, content: {}, delayMs: DELAY_MS });
    const a = await proxied(d, `${path}/delegate_delayed_leave`, { ...tokenBody(), delay_id: delayId });
    expect([a.status, a.json]).toEqual([200, {}]);
    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const identity = msc4195Identity(ALICE, MEMBER);
    const sender = () => new WebhookSender({ url: `${d.url}/livekit/webhook`, apiKey: API_KEY, apiSecret: API_SECRET });
    expect((await sender().participantJoined(room, { sid: 'PA_1', identity })).status).toBe(200);
    const restarts = () => hs.calls.filter((c) => c.op === 'restart' && c.handle === delayId && c.status === 200);
    await waitFor('a restart made as the user', () => restarts().length >= 1, 20_000);
    // The delegation and its owner survive a restart of the daemon.
    await d.stop();
    d = await daemon(hs, store);
    const seen = restarts().length;
    await waitFor('a restart by the new process', () => restarts().length > seen, 20_000);
    expect((await sender().participantLeft(room, { sid: 'PA_1', identity })).status).toBe(200);
    await waitFor('the leave sent', () => hs.status(delayId) === 'sent', 20_000);
    const sends = hs.calls.filter((c) => c.op === 'send' && c.handle === delayId);
    const made = [...restarts(), ...sends];
    expect(made.every((c) => c.authorization === `Bearer ${AS_TOKEN}` && c.userId === ALICE)).toBe(true);
    expect(hs.sent.filter((e) => e.handle === delayId).map((e) => e.cause)).toEqual(['action']);
    return { made, hs };
  }

  it('carries a delegation made through the proxied route across a restart and sends its leave as the user (unstable paths)', async () => {
    const { made } = await lifecycle({ requireManagementAuth: true }, CS);
    expect(made.every((c) => !c.stable && c.path.startsWith('/_matrix/client/unstable/org.matrix.msc4140/'))).toBe(true);
  });

  it('uses the stable v1 paths when /versions advertises them, and the list where there is no single lookup', async () => {
    const { made, hs } = await lifecycle({ requireManagementAuth: true, stableDelayedEvents: true, singleDelayLookup: false }, CS_V1);
    expect(made.every((c) => c.stable && c.path.startsWith('/_matrix/client/v1/delayed_events/'))).toBe(true);
    // The single lookup answered 405 M_UNRECOGNIZED; the user's list found the delay.
    const lookups = hs.calls.filter((c) => c.method === 'GET' && c.path.startsWith('/_matrix/client/v1/delayed_events'));
    // The second pair: after the restart, the membership monitor learns the delegation's Matrix room the same way.
    expect(lookups.map((c) => [c.path === '/_matrix/client/v1/delayed_events' ? 'list' : 'single', c.status])).toEqual([['single', 405], ['list', 200], ['single', 405], ['list', 200]]);
  });
});

describe('standalone delegations meeting a homeserver that requires authentication', () => {
  it('fail with that reason, are counted, and new ones for that homeserver are refused with 403 M_FORBIDDEN', async () => {
    const hs = await startFakeHomeserver({ requireManagementAuth: true });
    open.push(hs);
    const d = await startDaemon({ SIDECAR_STORE: `sqlite:${tempDbPath('auth-required')}` });
    open.push(d);
    const room = 'standalone-room';
    const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'p1', room });
    const delayId = await hs.createDelayedEvent({ roomId: '!r:hs', eventType: 'org.matrix.msc3401.call.member', stateKey: '_p1', content: {}, delayMs: 60_000 });
    const created = await api(d.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'delayed_events', token: delayId, timeout_ms: 60_000 } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.delegation_id as string;
    const failed = await waitFor('the delegation failed', async () => {
      const stored = await d.daemon.store.getDelegation(id);
      return stored?.state === 'failed' ? stored : null;
    }, 15_000);
    expect(failed.outcome).toBe('homeserver_requires_auth');
    expect(await metricValue(d.daemon.metrics.registry, 'futures_sidecar_homeserver_auth_required_total', { op: 'refresh' })).toBe(1);
    const second = await hs.createDelayedEvent({ roomId: '!r:hs', eventType: 'org.matrix.msc3401.call.member', stateKey: '_p1b', content: {}, delayMs: 60_000 });
    const refused = await api(d.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'delayed_events', token: second, timeout_ms: 60_000 } });
    expect([refused.status, refused.body.errcode]).toEqual([403, 'M_FORBIDDEN']);
    expect(refused.body.error).toMatch(/requires authentication/);
    expect(hs.calls.filter((c) => c.handle === second && c.op !== 'create')).toHaveLength(0);
  });
});

describe('MSC4502 membership of participants', () => {
  async function inCall(hs: FakeHomeserver, d: RunningDaemon, sid: string) {
    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const identity = msc4195Identity(ALICE, MEMBER);
    expect((await proxied(d, `${CS}/get_token`, tokenBody())).status).toBe(200);
    const delayId = await hs.createDelayedEvent({ asUser: ALICE, roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${ALICE}_${sid}`, content: {}, delayMs: DELAY_MS });
    expect((await proxied(d, `${CS}/delegate_delayed_leave`, { ...tokenBody(), delay_id: delayId })).status).toBe(200);
    lk.join(room, { sid, identity });
    return { room, identity, delayId, sender: new WebhookSender({ url: `${d.url}/livekit/webhook`, apiKey: API_KEY, apiSecret: API_SECRET }) };
  }
  let since = 0;
  beforeEach(() => {
    since = Date.now();
  });
  const removals = (identity: string) => lk.calls.filter((c) => c.method === 'RemoveParticipant' && c.identity === identity && c.at >= since);

  it('removes a participant whose user left the Matrix room from LiveKit on the sweep, and fires its leave', async () => {
    const hs = await homeserver();
    const d = await daemon(hs, tempDbPath('membership-sweep'), { LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS: '1' });
    const p = await inCall(hs, d, 'PA_sweep');
    expect((await p.sender.participantJoined(p.room, { sid: 'PA_sweep', identity: p.identity })).status).toBe(200);
    await waitFor('a joined check', async () => (await metricValue(d.daemon.metrics.registry, 'futures_sidecar_membership_checks_total', { outcome: 'joined' })) >= 1, 20_000);
    expect(removals(p.identity)).toHaveLength(0);
    hs.setJoined(ROOM_ID, ALICE, false);
    await waitFor('RemoveParticipant', () => removals(p.identity).some((c) => c.status === 200), 20_000);
    // The leave is sent as the user, whom the homeserver refuses once they left the room (as Synapse does).
    const send = await waitFor('the leave sent as the user', () => hs.calls.find((c) => c.op === 'send' && c.handle === p.delayId), 20_000);
    expect([send.authorization, send.userId, send.status]).toEqual([`Bearer ${AS_TOKEN}`, ALICE, 403]);
    expect(hs.status(p.delayId)).toBe('invalidated');
    lk.clear();
  });

  it('tracks again, after a restart, the participants of delegations made before it, and removes one whose user left meanwhile', async () => {
    const hs = await homeserver();
    const store = tempDbPath('membership-restart');
    const over = { LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS: '1', SIDECAR_RECONCILE_INTERVAL_MS: '1000' };
    const before = await daemon(hs, store, over);
    const p = await inCall(hs, before, 'PA_restart');
    expect((await p.sender.participantJoined(p.room, { sid: 'PA_restart', identity: p.identity })).status).toBe(200);
    await before.stop();
    // The user leaves while the daemon is down; no token is asked for again.
    hs.setJoined(ROOM_ID, ALICE, false);
    await daemon(hs, store, over);
    await waitFor('RemoveParticipant', () => removals(p.identity).some((c) => c.status === 200), 20_000);
    const send = await waitFor('the leave attempted as the user', () => hs.calls.find((c) => c.op === 'send' && c.handle === p.delayId), 20_000);
    expect([send.userId, send.status]).toEqual([ALICE, 403]);
    // The room was learnt from the delayed event, looked up as its owner.
    expect(hs.calls.filter((c) => c.method === 'GET' && c.path.includes('/delayed_events/') && c.userId === ALICE).length).toBeGreaterThanOrEqual(2);
    lk.clear();
  });

  it('checks at participant_joined, and fails open while the homeserver cannot answer', async () => {
    const hs = await homeserver();
    const d = await daemon(hs, tempDbPath('membership-join'));
    const p = await inCall(hs, d, 'PA_join');
    hs.setMembershipDown(true);
    hs.setJoined(ROOM_ID, ALICE, false);
    expect((await p.sender.participantJoined(p.room, { sid: 'PA_join', identity: p.identity })).status).toBe(200);
    await waitFor('a failed check', async () => (await metricValue(d.daemon.metrics.registry, 'futures_sidecar_membership_checks_total', { outcome: 'error' })) >= 1, 20_000);
    expect(removals(p.identity)).toHaveLength(0);
    expect(hs.status(p.delayId)).toBe('pending');
    hs.setMembershipDown(false);
    // LiveKit announces the same session again (a webhook retry): this time the homeserver answers.
    expect((await p.sender.participantJoined(p.room, { sid: 'PA_join', identity: p.identity })).status).toBe(200);
    await waitFor('RemoveParticipant', () => removals(p.identity).length >= 1, 20_000);
    await waitFor('the leave attempted', () => hs.status(p.delayId) === 'invalidated', 20_000);
    lk.clear();
  });
});

describe('limits per mode', () => {
  it("admits delegations made as users beyond the one-address budget of the homeserver's origin, and counts their calls as as_user", async () => {
    const hs = await homeserver();
    // 0.05 calls/s: with 4 s delays one standalone delegation already takes more than the origin's budget.
    const d = await daemon(hs, tempDbPath('limits'), { SIDECAR_HOMESERVER_RATE: '0.05' });
    const users = ['@u1:hs.test', '@u2:hs.test', '@u3:hs.test'];
    for (const [i, user] of users.entries()) {
      const delayId = await hs.createDelayedEvent({ asUser: user, roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${user}_d`, content: {}, delayMs: DELAY_MS });
      const a = await proxied(d, `${CS}/delegate_delayed_leave`, { ...tokenBody({ member_id: `m${i}` }), delay_id: delayId }, { 'x-matrix-user-identifier': user });
      expect([a.status, a.json]).toEqual([200, {}]);
    }
    expect(d.daemon.engine.openCount).toBe(3);
    await waitFor('first refreshes made as the users', async () => (await metricValue(d.daemon.metrics.registry, 'futures_sidecar_homeserver_calls_total', { limit: 'as_user' })) >= 3, 20_000);
    expect(await metricValue(d.daemon.metrics.registry, 'futures_sidecar_homeserver_calls_total', { limit: 'per_origin' })).toBe(0);
    // The same budget refuses a standalone delegation to that homeserver once one holds it.
    const jwt = (identity: string) => mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room: 'standalone' });
    const anonymous = async (identity: string) => {
      const delayId = await hs.createDelayedEvent({ roomId: '!s:hs.test', eventType: 'org.matrix.msc3401.call.member', stateKey: `_${identity}`, content: {}, delayMs: DELAY_MS });
      return api(d.url, 'POST', '/v1/delegations', { token: await jwt(identity), body: { homeserver: hs.url, dialect: 'delayed_events', token: delayId, timeout_ms: DELAY_MS } });
    };
    const answers = [await anonymous('s1'), await anonymous('s2')];
    expect(answers.map((a) => a.status)).toContain(429);
  });

  it("leaves the origin's standalone budget to standalone delegations: the load of calls made as users is not counted in it", async () => {
    const hs = await homeserver();
    // Budget 0.8 calls/s; six delegations as users with 4 s delays make about 1.5/s of their own.
    const d = await daemon(hs, tempDbPath('limits-apart'), { SIDECAR_HOMESERVER_RATE: '1' });
    for (let i = 0; i < 6; i++) {
      const user = `@v${i}:hs.test`;
      const delayId = await hs.createDelayedEvent({ asUser: user, roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${user}_d`, content: {}, delayMs: DELAY_MS });
      const a = await proxied(d, `${CS}/delegate_delayed_leave`, { ...tokenBody({ member_id: `v${i}` }), delay_id: delayId }, { 'x-matrix-user-identifier': user });
      expect([a.status, a.json]).toEqual([200, {}]);
    }
    await waitFor('first refreshes made as the users', async () => (await metricValue(d.daemon.metrics.registry, 'futures_sidecar_homeserver_calls_total', { limit: 'as_user' })) >= 6, 15_000);
    // A standalone delegation of 60 s (about 0.03 calls/s) fits the budget those do not use.
    const delayId = await hs.createDelayedEvent({ roomId: '!s:hs.test', eventType: 'org.matrix.msc3401.call.member', stateKey: '_solo', content: {}, delayMs: 60_000 });
    const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'solo', room: 'standalone' });
    const created = await api(d.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'delayed_events', token: delayId, timeout_ms: 60_000 } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
  });
});

describe('what the real Synapse sends (test/real/appservice.test.ts)', () => {
  it("takes matrix-js-sdk 43's `member: {id, claimed_device_id}` in place of `member_id`, and refuses neither or both differing", async () => {
    const hs = await homeserver();
    const d = await daemon(hs, tempDbPath('sdk-member'));
    const sdkBody = { room_id: ROOM_ID, slot_id: SLOT_ID, url: lk.url, member: { id: MEMBER, claimed_device_id: 'DEV' } };
    const token = await proxied(d, `${CS}/get_token`, sdkBody);
    expect(token.status, JSON.stringify(token.json)).toBe(200);
    expect((await grantOf(String(token.json?.jwt))).sub).toBe(msc4195Identity(ALICE, MEMBER));
    const delayId = await hs.createDelayedEvent({ asUser: ALICE, roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${ALICE}_sdk`, content: {}, delayMs: DELAY_MS });
    const delegated = await proxied(d, `${CS}/delegate_delayed_leave`, { ...sdkBody, delay_id: delayId });
    expect([delegated.status, delegated.json]).toEqual([200, {}]);
    const listed = (await api(d.url, 'GET', '/v1/admin/delegations', { token: ADMIN_TOKEN })).body.delegations as Array<{ identity: string }>;
    expect(listed.map((x) => x.identity)).toEqual([msc4195Identity(ALICE, MEMBER)]);
    for (const body of [{ ...sdkBody, member: undefined }, { ...sdkBody, member_id: 'another' }]) {
      const a = await proxied(d, `${CS}/get_token`, body);
      expect([a.status, a.json?.errcode]).toEqual([400, 'M_BAD_JSON']);
    }
  });

  it("acknowledges the homeserver's event transactions (its hs_token only), so that Synapse does not retry them for ever", async () => {
    const hs = await homeserver();
    const d = await daemon(hs, tempDbPath('transactions'));
    const put = (token: string | null) =>
      requestJson(`${d.url}/_matrix/app/v1/transactions/1`, 'PUT', { events: [{ type: 'm.room.message', content: {} }] }, token ? { authorization: `Bearer ${token}` } : {});
    expect(await put(HS_TOKEN)).toMatchObject({ status: 200, json: {} });
    expect((await put(null)).status).toBe(401);
    expect((await put(AS_TOKEN)).json?.errcode).toBe('M_UNKNOWN_TOKEN');
  });
});

describe('calls to our own homeserver and the address guard', () => {
  /** `.well-known/matrix/client` of hs.test naming `baseUrl`, served from an origin the resolver is told to trust. */
  async function wellKnown(baseUrl: string) {
    const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ 'm.homeserver': { base_url: baseUrl } })));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    open.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
    return url;
  }

  it('refuses a discovered homeserver whose name resolves to a private address at connect time, and trusts the URL the operator set', async () => {
    const hs = await homeserver();
    const port = new URL(hs.url).port;
    // Discovery sees a public address (a DNS answer that changes later); the connection would go to loopback.
    const wk = await wellKnown(`http://localhost:${port}`);
    const resolver = new MatrixResolver({ federationOverrides: new Map([['wk.test', wk]]), csApiOverrides: new Map(), allowPrivateAddresses: false, lookupAll: async () => ['203.0.113.7'], wellKnownOrigin: () => wk });
    open.push({ close: () => resolver.close() });
    const strict = { SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false', SIDECAR_CS_API_URL_OVERRIDES: '' };
    const discovered = await startDaemon(env(hs, tempDbPath('guard-discovered'), strict), { resolver });
    open.push(discovered);
    const refused = await proxied(discovered, `${CS}/get_token`, tokenBody());
    expect([refused.status, refused.json?.errcode]).toEqual([502, 'M_UNKNOWN']);
    expect(hs.calls.filter((c) => c.path.includes('is_joined'))).toHaveLength(0);
    // The operator's own URL for it (SIDECAR_CS_API_URL_OVERRIDES) may be private: it is theirs.
    const listed = await daemon(hs, tempDbPath('guard-listed'), { ...strict, SIDECAR_CS_API_URL_OVERRIDES: `${SERVER}=http://localhost:${port}` });
    const granted = await proxied(listed, `${CS}/get_token`, tokenBody());
    expect(granted.status, JSON.stringify(granted.json)).toBe(200);
  });
});
