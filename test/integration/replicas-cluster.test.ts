import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { liveKitIdentity, liveKitRoomName } from '../../src/compat/livekit-names.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, spawnDaemon, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { shardOf } from '../../src/store/shard-leases.js';
import { redisTestsEnabled, startRedis, type RedisServer } from '../helpers/redis.js';
import { actionsFired, createHomeserverToken, refreshCalls, uniqueName, webhookSender } from '../helpers/scenario.js';

/**
 * Issue 18: replicas on one Redis see the cluster, not only the shards they own. Admission weighs a homeserver's
 * load across every replica; replacement and revocation reach whichever replica owns the old delegation.
 */

const LEASE_MS = 2000;
const PREFIX = 'futures-sidecar:';
/** Default refresh point (0.5) and rate 1/s: budget 0.8 calls/s, one 30 s delegation 1000/(0.45 * 30000) calls/s. */
const TIMEOUT_MS = 30_000;
const EXPECTED_ADMITTED = Math.floor((1 * 0.8) / (1000 / (0.45 * TIMEOUT_MS)));

interface Registered {
  id: string;
  jwt: string;
  token: string;
  room: string;
  identity: string;
}

let clientSeq = 0;
/** Registers one delegation through `url` as a distinct client (X-Forwarded-For), so only the homeserver's budget binds. */
async function register(url: string, hs: FakeHomeserver, who: { room?: string; identity?: string } = {}): Promise<{ status: number; body: any; reg: Registered }> {
  const room = who.room ?? uniqueName('room');
  const identity = who.identity ?? uniqueName('user');
  const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
  const token = await createHomeserverToken(hs, 'futures', `!${room}:hs`, TIMEOUT_MS);
  const n = ++clientSeq;
  const res = await fetch(`${url}/v1/delegations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json', 'x-forwarded-for': `198.51.${n >> 8}.${n & 255}` },
    body: JSON.stringify({ homeserver: hs.url, dialect: 'futures', token, timeout_ms: TIMEOUT_MS }),
  });
  const body = (await res.json()) as any;
  return { status: res.status, body, reg: { id: body.delegation_id, jwt, token, room, identity } };
}

/** Registers through the daemons in turn until one refuses; returns the admitted ones and the refusal. */
async function fill(urls: string[], hs: FakeHomeserver): Promise<{ admitted: Registered[]; refusal: { status: number; body: any } }> {
  const admitted: Registered[] = [];
  for (let i = 0; i < 100; i++) {
    const r = await register(urls[i % urls.length]!, hs);
    if (r.status !== 201) return { admitted, refusal: r };
    admitted.push(r.reg);
  }
  throw new Error('never refused');
}

const SERVER = 'example.com';
const ALICE = '@alice:example.com';
const DEVICE = 'DEVICE';
const MEMBER_ID = 'member-1';
const ROOM_ID = '!room:example.com';
const SLOT_ID = 'm.call#';
const ALICE_OPENID = 'openid-token-alice-5d1e';

/** Element Call's body for `/delegate_delayed_leave` (lk-jwt-service's shape). */
function compatBody(delayId: string): Record<string, unknown> {
  return {
    room_id: ROOM_ID,
    slot_id: SLOT_ID,
    openid_token: { access_token: ALICE_OPENID, token_type: 'Bearer', matrix_server_name: SERVER, expires_in: 3600 },
    member: { id: MEMBER_ID, claimed_user_id: ALICE, claimed_device_id: DEVICE },
    delay_id: delayId,
    delay_timeout: 10_000,
  };
}

describe.runIf(redisTestsEnabled('replicas-cluster'))('replicas see the cluster (issue 18)', () => {
  let redis: RedisServer;
  let hs: FakeHomeserver;
  let client: Redis;
  const replicas: ChildDaemon[] = [];
  let single: ChildDaemon;
  let fed: FakeMatrixFederation;

  const common = { SIDECAR_HOMESERVER_RATE: '1', SIDECAR_TRUST_PROXY: 'true', SIDECAR_MAX_DELEGATIONS_PER_IDENTITY: '10' };

  beforeAll(async () => {
    redis = await startRedis();
    hs = await startFakeHomeserver();
    client = new Redis(redis.url);
    fed = await startFakeMatrixFederation({ tokens: { [ALICE_OPENID]: ALICE } });
    const compat = { SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true', SIDECAR_CS_API_URL_OVERRIDES: `${SERVER}=${hs.url}`, SIDECAR_FEDERATION_URL_OVERRIDES: `${SERVER}=${fed.url}` };
    const env = { ...common, ...compat, SIDECAR_STORE: redis.url, SIDECAR_REDIS_LEASE_MS: String(LEASE_MS) };
    for (let i = 0; i < 3; i++) replicas.push(await spawnDaemon(env));
    single = await spawnDaemon(common);
    await waitFor('every shard owned, spread over the three', async () => {
      const owners = await client.mget(Array.from({ length: 32 }, (_, s) => `${PREFIX}shard:${s}:owner`));
      return owners.every(Boolean) && new Set(owners.map((o) => o!.split('-')[0])).size === 3;
    }, 20_000);
  }, 180_000);
  afterAll(async () => {
    for (const r of [...replicas, single]) if (r && r.proc.exitCode === null) r.kill('SIGKILL');
    client?.disconnect();
    await fed?.close();
    await hs?.close();
    await redis?.stop();
  });

  /** Which replica holds a delegation's shard (its lease record names the replica's pid). */
  async function owned(id: string): Promise<number> {
    const owner = await client.get(`${PREFIX}shard:${shardOf(id)}:owner`);
    return replicas.findIndex((r) => owner?.startsWith(`${r.proc.pid}-`));
  }

  /** A delegation as any replica reads it from the shared store (admin API). */
  async function stored(id: string): Promise<{ state: string }> {
    const res = await api(replicas[0]!.url, 'GET', `/v1/admin/delegations/${id}`, { token: ADMIN_TOKEN });
    expect(res.status).toBe(200);
    return res.body;
  }

  it("replaces Element Call's delegation for the same participant when the new one lands on a replica that does not own the old one", async () => {
    const room = liveKitRoomName(ROOM_ID, SLOT_ID);
    const idsInRoom = async () => (await api(replicas[1]!.url, 'GET', `/v1/admin/delegations?room=${encodeURIComponent(room)}`, { token: ADMIN_TOKEN })).body.delegations as Array<{ delegation_id: string; state: string }>;
    const delayOf = () => hs.createDelayedEvent({ roomId: ROOM_ID, eventType: 'org.matrix.msc3401.call.member', stateKey: `_${ALICE}_${DEVICE}`, content: {}, delayMs: 10_000 });

    const first = await delayOf();
    expect((await api(replicas[0]!.url, 'POST', '/delegate_delayed_leave', { body: compatBody(first) })).status).toBe(200);
    const [old] = await idsInRoom();
    expect(old).toBeDefined();
    await waitFor('the first delegation restarted by its owner', () => refreshCalls(hs, first) >= 1, 20_000);
    const ownerOfOld = await owned(old!.delegation_id);
    expect(ownerOfOld).toBeGreaterThanOrEqual(0);

    // The replacement goes to a replica that does not own the old delegation.
    const via = replicas[(ownerOfOld + 1) % 3]!;
    const second = await delayOf();
    expect((await api(via.url, 'POST', '/delegate_delayed_leave', { body: compatBody(second) })).status).toBe(200);
    expect((await stored(old!.delegation_id)).state, 'the old delegation is revoked by the time the new one is accepted').toBe('revoked');
    const open = (await idsInRoom()).filter((d) => d.state !== 'revoked');
    expect(open).toHaveLength(1);
    const restartsOfFirst = hs.calls.filter((c) => c.handle === first && c.op !== 'create').length;

    // The participant leaves: only the new delegation's leave is sent; the old one is left alone.
    const participant = { sid: 'PA_replaced', identity: liveKitIdentity(ALICE, DEVICE, MEMBER_ID) };
    const lk = webhookSender(replicas[ownerOfOld]!.url);
    await lk.participantJoined(room, participant);
    await lk.participantLeft(room, participant, 'CLIENT_INITIATED');
    await waitFor('the new delegation\'s leave sent', () => hs.status(second) === 'sent', 20_000);
    expect(hs.status(first)).toBe('pending');
    expect(hs.calls.filter((c) => c.handle === first && c.op !== 'create')).toHaveLength(restartsOfFirst);
  });

  it('revokes through a replica that does not own the delegation: the owner stops acting on it', async () => {
    const room = uniqueName('room');
    const target = await register(replicas[0]!.url, hs, { room });
    const control = await register(replicas[0]!.url, hs, { room });
    expect([target.status, control.status]).toEqual([201, 201]);
    const owner = await owned(target.reg.id);
    const via = replicas[(owner + 1) % 3]!;
    const res = await api(via.url, 'DELETE', `/v1/delegations/${target.reg.id}`, { token: target.reg.jwt });
    expect(res).toMatchObject({ status: 200, body: { state: 'revoked' } });

    const lk = webhookSender(replicas[2]!.url);
    for (const r of [target.reg, control.reg]) {
      const p = { sid: `PA_${r.identity}`, identity: r.identity };
      await lk.participantJoined(room, p);
      await lk.participantLeft(room, p, 'CLIENT_INITIATED');
    }
    await waitFor('the control delegation\'s leave fired', () => actionsFired(hs, control.reg.token).length === 1, 20_000);
    expect(actionsFired(hs, target.reg.token)).toEqual([]);
    expect(hs.status(target.reg.token)).toBe('pending');
  });

  it('refuses registrations spread over three replicas for one homeserver at the same total as one process', async () => {
    const one = await fill([single.url], hs);
    expect(one.admitted.length).toBe(EXPECTED_ADMITTED);
    expect(one.refusal.status).toBe(429);
    expect(one.refusal.body.errcode).toBe('M_LIMIT_EXCEEDED');

    const hs2 = await startFakeHomeserver();
    try {
      const urls = replicas.map((r) => r.url);
      const three = await fill(urls, hs2);
      expect(three.admitted.length, 'admitted by the cluster').toBe(one.admitted.length);
      expect(three.refusal.status).toBe(429);
      const owners = new Set(await Promise.all(three.admitted.map((r) => owned(r.id))));
      expect(owners.size, 'the admitted delegations are owned by more than one replica').toBeGreaterThan(1);
      await waitFor('every admitted delegation refreshed (confirmed) by its owner', () => three.admitted.every((r) => refreshCalls(hs2, r.token) >= 1), 20_000);
      // Confirmed now, not held: still full, through every replica.
      for (const url of urls) expect((await register(url, hs2)).status, `refused through ${url}`).toBe(429);

      // One ends (revoked through a replica that may not own it): exactly one more fits, wherever it is asked.
      const gone = three.admitted[0]!;
      const del = await api(urls[2]!, 'DELETE', `/v1/delegations/${gone.id}`, { token: gone.jwt });
      expect(del.status).toBe(200);
      expect(del.body.state).toBe('revoked');
      const again = await waitFor('one more admitted after a revoke', async () => {
        const r = await register(urls[1]!, hs2);
        return r.status === 201 ? r.reg : null;
      }, 10_000, 200);
      expect(again.id).toBeTruthy();
      expect((await register(urls[0]!, hs2)).status).toBe(429);

      // A replica dies: its share lapses while its shards' new owners count the delegations: still exactly full.
      const victim = replicas[2]!;
      const victimPid = `${victim.proc.pid}-`;
      victim.kill('SIGKILL');
      await victim.exited;
      await waitFor('the dead replica\'s shards taken over', async () => (await client.mget(Array.from({ length: 32 }, (_, s) => `${PREFIX}shard:${s}:owner`))).every((o) => o && !o.startsWith(victimPid)), 20_000, 50);
      const loadKey = `${PREFIX}load:${new URL(hs2.url).origin}`;
      await waitFor('the dead replica\'s entry lapsed', async () => {
        await register(urls[0]!, hs2).then((r) => expect(r.status).toBe(429));
        return !Object.keys(await client.hgetall(loadKey)).some((f) => f.startsWith(`r:${victimPid}`));
      }, 20_000, 250);
      const total = Object.values(await client.hgetall(loadKey)).reduce((sum, v) => sum + Number(v.split('|')[0]), 0);
      expect(total).toBeCloseTo(EXPECTED_ADMITTED * (1000 / (0.45 * TIMEOUT_MS)), 6);
      expect((await register(urls[1]!, hs2)).status).toBe(429);
    } finally {
      await hs2.close();
    }
  }, 120_000);

  it("shows a delegation's history through any replica, and after its owner died and another took it over", async () => {
    const alive = replicas.filter((r) => r.proc.exitCode === null && r.proc.signalCode === null);
    expect(alive.length).toBe(2);
    const room = uniqueName('room');
    const jwtFor = async (identity: string) => mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
    const identity = uniqueName('user');
    const jwt = await jwtFor(identity);
    const token = await createHomeserverToken(hs, 'futures', `!${room}:hs`, 8000);
    const res = await api(alive[0]!.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'futures', token, timeout_ms: 8000 } });
    expect(res.status).toBe(201);
    const id = res.body.delegation_id as string;
    const owner = alive[(await owned(id)) === replicas.indexOf(alive[0]!) ? 0 : 1]!;
    const other = alive.find((r) => r !== owner)!;
    await webhookSender(other.url).participantJoined(room, { sid: 'PA_hist', identity });

    const lines = async (url: string) => ((await api(url, 'GET', `/v1/admin/delegations/${id}`, { token: ADMIN_TOKEN })).body.history as Array<{ what: string }>).map((e) => e.what);
    const refreshLines = (ls: string[]) => ls.filter((l) => l.startsWith('refresh answered')).length;
    const before = await waitFor('the owner\'s join and refresh, read through the other replica', async () => {
      const ls = await lines(other.url);
      return ls.some((l) => l.includes('-> connected')) && refreshLines(ls) >= 1 ? ls : null;
    }, 10_000, 100);
    const key = `${PREFIX}hist:${id}`;
    // The owner keeps refreshing (8 s futures): a line may have been added since `before` was read.
    expect(await client.llen(key)).toBeGreaterThanOrEqual(before.length);
    expect(await client.pttl(key)).toBeGreaterThan(0);

    owner.kill('SIGKILL');
    await owner.exited;
    const survivorRefreshes = refreshLines(before);
    await waitFor('the survivor took over and refreshed, continuing the history', async () => refreshLines(await lines(other.url)) > survivorRefreshes + 1, 20_000, 200);
    const after = await lines(other.url);
    expect(after.slice(0, before.length)).toEqual(before);
    expect(hs.status(token)).toBe('pending');
  }, 180_000);
});
