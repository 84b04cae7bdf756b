import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEGACY_SLOT_ID, legacyIdentity, liveKitIdentity, liveKitRoomName, msc4195Identity } from '../../src/compat/livekit-names.js';
import { shardOf } from '../../src/store/shard-leases.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { startFakeRoomService, type FakeRoomService } from '../fakes/livekit.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, spawnDaemon, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { requestJson } from '../helpers/lk-jwt.js';
import { redisTestsEnabled, shardsSpread, startRedis, type RedisServer } from '../helpers/redis.js';
import { refreshCalls, webhookSender } from '../helpers/scenario.js';

/**
 * Issue 18: a new delegation for the same (LiveKit room, identity) that arrives through lk-jwt-service's token
 * routes (`/get_token`, `/sfu/get`) or the application-service route the homeserver proxies
 * (`delegate_delayed_leave`) on a replica that does not own the old delegation replaces it there: the old one is
 * cancelled on our side and never fired. A revoke through a non-owner takes effect too. Real processes, real Redis;
 * the fake homeserver's record is the judge.
 */

const LEASE_MS = 2000;
const SERVER = 'example.com';
const ALICE = `@alice:${SERVER}`;
const ALICE_OPENID = 'openid-token-alice-7c2f';
const ROOM_ID = `!call:${SERVER}`;
const SLOT_ID = 'm.call#ROOM';
const MEMBER = 'member-a';
const DELAY_MS = 10_000;
const MEMBERSHIP = 'org.matrix.msc3401.call.member';
const AS_TOKEN = 'as-token-of-the-sidecar-replicas-0123456789';
const HS_TOKEN = 'hs-token-of-the-homeserver-replicas-0123456789';
const AS_PATH = '/_matrix/client/v1/rtc/livekit/delegate_delayed_leave';

interface Cluster {
  prefix: string;
  replicas: ChildDaemon[];
}

describe.runIf(redisTestsEnabled('replicas-token-routes'))('replacement and revocation through the token routes across replicas (issue 18)', () => {
  let redis: RedisServer;
  let client: Redis;
  let lk: FakeRoomService;
  let fed: FakeMatrixFederation;
  /** The standalone cluster's homeserver (lk-jwt-service's unauthenticated management). */
  let hs: FakeHomeserver;
  /** The application-service cluster's homeserver (calls as the user with the as_token). */
  let asHs: FakeHomeserver;
  let standalone: Cluster;
  let appservice: Cluster;

  async function startCluster(prefix: string, env: Record<string, string>): Promise<Cluster> {
    const all = { ...env, SIDECAR_STORE: redis.url, SIDECAR_REDIS_PREFIX: prefix, SIDECAR_REDIS_LEASE_MS: String(LEASE_MS), LIVEKIT_URL: lk.url, SIDECAR_RECONCILE_INTERVAL_MS: '600000' };
    const replicas = [await spawnDaemon(all), await spawnDaemon(all)];
    await waitFor(`${prefix}: every shard owned, spread over both replicas`, () => shardsSpread(client, prefix, 2), 30_000, 100);
    return { prefix, replicas };
  }

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    lk = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
    hs = await startFakeHomeserver();
    asHs = await startFakeHomeserver({ appservice: { asToken: AS_TOKEN }, serverName: SERVER });
    asHs.setJoined(ROOM_ID, ALICE, true);
    asHs.setJoined(ROOM_ID, SERVER, true);
    fed = await startFakeMatrixFederation({ tokens: { [ALICE_OPENID]: ALICE } });
    standalone = await startCluster('tokens:', {
      SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true',
      SIDECAR_CS_API_URL_OVERRIDES: `${SERVER}=${hs.url}`,
      SIDECAR_FEDERATION_URL_OVERRIDES: `${SERVER}=${fed.url}`,
    });
    appservice = await startCluster('as:', {
      SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true',
      SIDECAR_CS_API_URL_OVERRIDES: `${SERVER}=${asHs.url}`,
      LIVEKIT_AS_TOKEN: AS_TOKEN,
      LIVEKIT_HS_TOKEN: HS_TOKEN,
      LIVEKIT_HS_SERVER_NAME: SERVER,
      LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS: '0',
    });
  }, 120_000);
  afterAll(async () => {
    for (const r of [...(standalone?.replicas ?? []), ...(appservice?.replicas ?? [])]) if (r.proc.exitCode === null) r.kill('SIGKILL');
    client?.disconnect();
    await Promise.all([fed?.close(), hs?.close(), asHs?.close(), lk?.close()]);
    await redis?.stop();
  });

  /** The index (in `cluster.replicas`) of the replica whose lease covers a delegation's shard. */
  async function ownerOf(cluster: Cluster, id: string): Promise<number> {
    const owner = await client.get(`${cluster.prefix}shard:${shardOf(id)}:owner`);
    const i = cluster.replicas.findIndex((r) => owner?.startsWith(`${r.proc.pid}-`));
    expect(i, `an owner of ${id}`).toBeGreaterThanOrEqual(0);
    return i;
  }

  /** Every delegation of one participant as the shared store has it (read through a replica's admin API). */
  async function delegationsOf(cluster: Cluster, room: string, identity: string): Promise<Array<{ delegation_id: string; state: string }>> {
    const res = await api(cluster.replicas[0]!.url, 'GET', `/v1/admin/delegations?room=${encodeURIComponent(room)}&identity=${encodeURIComponent(identity)}`, { token: ADMIN_TOKEN });
    expect(res.status).toBe(200);
    return res.body.delegations;
  }

  const managementCalls = (server: FakeHomeserver, handle: string) => server.calls.filter((c) => c.handle === handle && c.op !== 'create');
  const sends = (server: FakeHomeserver, handle: string) => server.calls.filter((c) => c.handle === handle && c.op === 'send');

  /**
   * The scenario every route shares: a first delegation through replica 0, a second for the same participant through
   * the replica that does not own the first, then the participant joins and leaves. Only the second leave is sent;
   * the first delegation is revoked by the time the second is accepted, and no call is made for it after that.
   */
  async function replacedAcrossReplicas(opts: {
    cluster: Cluster;
    server: FakeHomeserver;
    room: string;
    identity: string;
    newDelay: () => Promise<string>;
    delegate: (url: string, delayId: string) => Promise<{ status: number; text: string }>;
  }): Promise<void> {
    const { cluster, server, room, identity } = opts;
    const first = await opts.newDelay();
    const one = await opts.delegate(cluster.replicas[0]!.url, first);
    expect(one.status, one.text).toBe(200);
    const [old] = await delegationsOf(cluster, room, identity);
    expect(old?.state).toBe('awaiting_join');
    await waitFor('the first delegation restarted by its owner', () => refreshCalls(server, first) >= 1, 15_000);
    const owner = await ownerOf(cluster, old!.delegation_id);

    const second = await opts.newDelay();
    const two = await opts.delegate(cluster.replicas[1 - owner]!.url, second);
    expect(two.status, two.text).toBe(200);
    const after = await delegationsOf(cluster, room, identity);
    expect(after.find((d) => d.delegation_id === old!.delegation_id)?.state, 'the old delegation is revoked when the new one is accepted').toBe('revoked');
    expect(after.filter((d) => d.state !== 'revoked')).toHaveLength(1);
    const callsOfFirst = managementCalls(server, first).length;

    const participant = { sid: `PA_${Math.random().toString(36).slice(2, 10)}`, identity };
    lk.join(room, { identity, sid: participant.sid });
    const lkHooks = webhookSender(cluster.replicas[owner]!.url);
    await lkHooks.participantJoined(room, participant);
    await waitFor('the new delegation refreshed', () => refreshCalls(server, second) >= 1, 15_000);
    lk.leave(room, identity);
    await lkHooks.participantLeft(room, participant, 'CLIENT_INITIATED');
    await waitFor("the new delegation's leave sent", () => server.status(second) === 'sent', 15_000);
    expect(sends(server, second)).toHaveLength(1);
    expect(server.status(first), 'the old delegated leave was never sent').toBe('pending');
    expect(sends(server, first)).toEqual([]);
    expect(managementCalls(server, first), 'no call for the old delegation after it was replaced').toHaveLength(callsOfFirst);
  }

  const openIdToken = { access_token: ALICE_OPENID, token_type: 'Bearer', matrix_server_name: SERVER, expires_in: 3600 };
  /** Element Call's `/get_token` with a delayed leave to delegate, for Alice's device `device`. */
  const getToken = (url: string, device: string, delayId: string) =>
    requestJson(`${url}/get_token`, 'POST', {
      room_id: ROOM_ID,
      slot_id: SLOT_ID,
      openid_token: openIdToken,
      member: { id: MEMBER, claimed_user_id: ALICE, claimed_device_id: device },
      delay_id: delayId,
      delay_timeout: DELAY_MS,
    });
  const delayedLeave = (server: FakeHomeserver, stateKey: string, asUser?: string) => () =>
    server.createDelayedEvent({ ...(asUser ? { asUser } : {}), roomId: ROOM_ID, eventType: MEMBERSHIP, stateKey, content: {}, delayMs: DELAY_MS });

  it('/get_token: the replacement lands on the replica that does not own the old delegation', async () => {
    const device = 'DEVICE_GT';
    await replacedAcrossReplicas({
      cluster: standalone,
      server: hs,
      room: liveKitRoomName(ROOM_ID, SLOT_ID),
      identity: liveKitIdentity(ALICE, device, MEMBER),
      newDelay: delayedLeave(hs, `_${ALICE}_${device}`),
      delegate: (url, delayId) => getToken(url, device, delayId),
    });
  }, 90_000);

  it('/sfu/get: the replacement lands on the replica that does not own the old delegation', async () => {
    const device = 'DEVICE_SFU';
    await replacedAcrossReplicas({
      cluster: standalone,
      server: hs,
      room: liveKitRoomName(ROOM_ID, LEGACY_SLOT_ID),
      identity: legacyIdentity(ALICE, device),
      newDelay: delayedLeave(hs, `_${ALICE}_${device}`),
      delegate: (url, delayId) => requestJson(`${url}/sfu/get`, 'POST', { room: ROOM_ID, openid_token: openIdToken, device_id: device, delay_id: delayId, delay_timeout: DELAY_MS }),
    });
  }, 90_000);

  it("the homeserver's proxied delegate_delayed_leave (application-service mode): the replacement lands on the replica that does not own the old delegation", async () => {
    const member = 'member-as';
    await replacedAcrossReplicas({
      cluster: appservice,
      server: asHs,
      room: liveKitRoomName(ROOM_ID, SLOT_ID),
      identity: msc4195Identity(ALICE, member),
      newDelay: delayedLeave(asHs, `_${ALICE}_${member}`, ALICE),
      delegate: (url, delayId) =>
        requestJson(`${url}${AS_PATH}`, 'POST', { url: lk.url, room_id: ROOM_ID, slot_id: SLOT_ID, member_id: member, delay_id: delayId }, { authorization: `Bearer ${HS_TOKEN}`, 'x-matrix-user-identifier': ALICE }),
    });
  }, 90_000);

  it('revokes a /get_token delegation through the replica that does not own it: its owner never fires it', async () => {
    const device = 'DEVICE_REVOKE';
    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const identity = liveKitIdentity(ALICE, device, MEMBER);
    const delayId = await delayedLeave(hs, `_${ALICE}_${device}`)();
    const res = await getToken(standalone.replicas[0]!.url, device, delayId);
    expect(res.status, res.text).toBe(200);
    const [d] = await delegationsOf(standalone, room, identity);
    await waitFor('restarted by its owner', () => refreshCalls(hs, delayId) >= 1, 15_000);
    const owner = await ownerOf(standalone, d!.delegation_id);
    const revoked = await api(standalone.replicas[1 - owner]!.url, 'DELETE', `/v1/admin/delegations/${d!.delegation_id}`, { token: ADMIN_TOKEN });
    expect([revoked.status, revoked.body.state]).toEqual([200, 'revoked']);
    const callsAtRevoke = managementCalls(hs, delayId).length;

    const participant = { sid: 'PA_revoked', identity };
    const lkHooks = webhookSender(standalone.replicas[owner]!.url);
    lk.join(room, { identity, sid: participant.sid });
    await lkHooks.participantJoined(room, participant);
    lk.leave(room, identity);
    await lkHooks.participantLeft(room, participant, 'CLIENT_INITIATED');
    // A control delegation of the same owner leaves after it: every replica reads one stream in order, so once the
    // control's leave is sent, the owner has read the revoked delegation's departure too.
    let control: { delayId: string; identity: string } | null = null;
    for (let i = 0; i < 20 && !control; i++) {
      const device = `DEVICE_CONTROL_${i}`;
      const delay = await delayedLeave(hs, `_${ALICE}_${device}`)();
      const ctl = await getToken(standalone.replicas[owner]!.url, device, delay);
      expect(ctl.status, ctl.text).toBe(200);
      const ctlIdentity = liveKitIdentity(ALICE, device, MEMBER);
      const [c] = await delegationsOf(standalone, room, ctlIdentity);
      if ((await ownerOf(standalone, c!.delegation_id)) === owner) control = { delayId: delay, identity: ctlIdentity };
    }
    expect(control, 'a control delegation owned by the same replica').not.toBeNull();
    const controlParticipant = { sid: 'PA_control', identity: control!.identity };
    await lkHooks.participantJoined(room, controlParticipant);
    await lkHooks.participantLeft(room, controlParticipant, 'CLIENT_INITIATED');
    await waitFor("the control delegation's leave sent", () => hs.status(control!.delayId) === 'sent', 15_000);
    expect(hs.status(delayId)).toBe('pending');
    expect(sends(hs, delayId)).toEqual([]);
    expect(managementCalls(hs, delayId)).toHaveLength(callsAtRevoke);
  }, 90_000);
});
