import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, api, spawnDaemon, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { shardOf } from '../../src/store/shard-leases.js';
import { redisTestsEnabled, startRedis, type RedisServer } from '../helpers/redis.js';
import { createHomeserverToken, refreshCalls, uniqueName } from '../helpers/scenario.js';

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

describe.runIf(redisTestsEnabled('replicas-cluster'))('replicas see the cluster (issue 18)', () => {
  let redis: RedisServer;
  let hs: FakeHomeserver;
  let client: Redis;
  const replicas: ChildDaemon[] = [];
  let single: ChildDaemon;

  const common = { SIDECAR_HOMESERVER_RATE: '1', SIDECAR_TRUST_PROXY: 'true', SIDECAR_MAX_DELEGATIONS_PER_IDENTITY: '10' };

  beforeAll(async () => {
    redis = await startRedis();
    hs = await startFakeHomeserver();
    client = new Redis(redis.url);
    const env = { ...common, SIDECAR_STORE: redis.url, SIDECAR_REDIS_LEASE_MS: String(LEASE_MS) };
    for (let i = 0; i < 3; i++) replicas.push(await spawnDaemon(env));
    single = await spawnDaemon(common);
    await waitFor('every shard owned, spread over the three', async () => {
      const owners = await client.mget(Array.from({ length: 32 }, (_, s) => `${PREFIX}shard:${s}:owner`));
      return owners.every(Boolean) && new Set(owners.map((o) => o!.split('-')[0])).size === 3;
    }, 20_000);
  }, 60_000);
  afterAll(async () => {
    for (const r of [...replicas, single]) if (r && r.proc.exitCode === null) r.kill('SIGKILL');
    client?.disconnect();
    await hs?.close();
    await redis?.stop();
  });

  /** Which replica holds a delegation's shard (its lease record names the replica's pid). */
  async function owned(id: string): Promise<number> {
    const owner = await client.get(`${PREFIX}shard:${shardOf(id)}:owner`);
    return replicas.findIndex((r) => owner?.startsWith(`${r.proc.pid}-`));
  }

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
});
