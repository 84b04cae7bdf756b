import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, spawnDaemon, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { redisTestsEnabled, shardsSpread, startRedis, type RedisServer } from '../helpers/redis.js';
import { createHomeserverToken, uniqueName } from '../helpers/scenario.js';

/**
 * Issue 18: the per-participant and per-address shares of a homeserver's budget hold across the cluster. Until the
 * homeserver has accepted a delegation's first refresh, one participant's delegations may hold only a quarter of
 * the budget and one client address's half; with the holds kept in Redis, registrations spread over three replicas
 * are refused at the same count as on one process (before, each replica counted only the holds of delegations it
 * owned). The homeserver answers management calls after 9 s here, so the holds stay unconfirmed while we count.
 */

const LEASE_MS = 2000;
const PREFIX = 'futures-sidecar:';
const TIMEOUT_MS = 60_000;
/** Longer than the registrations take, shorter than the homeserver client's 10 s call timeout. */
const HOMESERVER_LATENCY_MS = 9000;
/** Rate 1/s, refresh budget 0.8/s; the homeserver's budget alone would take this many of these delegations. */
const LOAD = 1000 / (0.45 * TIMEOUT_MS);
const BUDGET_ADMITS = Math.floor(0.8 / LOAD);
/** What a quarter (a participant's share) and a half (an address's) of that budget take: 5 and 10. */
const PARTICIPANT_ADMITS = Math.floor((0.25 * 0.8) / LOAD);
const ADDRESS_ADMITS = Math.floor((0.5 * 0.8) / LOAD);

let addressSeq = 0;
const freshAddress = () => `198.51.${++addressSeq >> 8}.${addressSeq & 255}`;

/** Registers one delegation through `url` for `who`, from `address` (the trusted proxy's X-Forwarded-For). */
async function register(url: string, hs: FakeHomeserver, who: { room: string; identity: string }, address: string): Promise<{ status: number; body: any }> {
  const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: who.identity, room: who.room });
  const token = await createHomeserverToken(hs, 'futures', `!${who.room}:hs`, TIMEOUT_MS);
  const res = await fetch(`${url}/v1/delegations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json', 'x-forwarded-for': address },
    body: JSON.stringify({ homeserver: hs.url, dialect: 'futures', token, timeout_ms: TIMEOUT_MS }),
  });
  return { status: res.status, body: await res.json() };
}

/** Registers through `urls` in turn, each time as `next(i)`, until one is refused; returns how many were admitted and the refusal. */
async function fill(urls: string[], hs: FakeHomeserver, next: (i: number) => { who: { room: string; identity: string }; address: string }): Promise<{ admitted: number; refusal: { status: number; body: any } }> {
  for (let i = 0; i < 60; i++) {
    const { who, address } = next(i);
    const r = await register(urls[i % urls.length]!, hs, who, address);
    if (r.status !== 201) return { admitted: i, refusal: r };
  }
  throw new Error('never refused');
}

describe.runIf(redisTestsEnabled('replicas-shares'))("a participant's and an address's share of a homeserver hold across replicas (issue 18)", () => {
  let redis: RedisServer;
  let client: Redis;
  const replicas: ChildDaemon[] = [];
  let single: ChildDaemon;
  const homeservers: FakeHomeserver[] = [];

  const common = { SIDECAR_HOMESERVER_RATE: '1', SIDECAR_TRUST_PROXY: 'true', SIDECAR_MAX_DELEGATIONS_PER_IDENTITY: '100', SIDECAR_MAX_DELEGATIONS_PER_ROOM: '1000' };

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    const env = { ...common, SIDECAR_STORE: redis.url, SIDECAR_REDIS_LEASE_MS: String(LEASE_MS) };
    for (let i = 0; i < 3; i++) replicas.push(await spawnDaemon(env));
    single = await spawnDaemon(common);
    await waitFor('every shard owned, spread over the three', () => shardsSpread(client, PREFIX, 3), 30_000, 100);
  }, 90_000);
  afterAll(async () => {
    for (const r of [...replicas, single]) if (r && r.proc.exitCode === null) r.kill('SIGKILL');
    client?.disconnect();
    for (const hs of homeservers) await hs.close();
    await redis?.stop();
  });

  /** A homeserver of its own for each count (its own origin, so its own budget), slow to answer management calls. */
  async function slowHomeserver(): Promise<FakeHomeserver> {
    const hs = await startFakeHomeserver({ latencyMs: HOMESERVER_LATENCY_MS });
    homeservers.push(hs);
    return hs;
  }

  const holders = [
    {
      holder: 'one participant',
      refusal: /participant holds its share/,
      expected: PARTICIPANT_ADMITS,
      // One participant, each registration from another address.
      asker: () => {
        const who = { room: uniqueName('room'), identity: uniqueName('user') };
        return () => ({ who, address: freshAddress() });
      },
    },
    {
      holder: 'one client address',
      refusal: /address holds its share/,
      expected: ADDRESS_ADMITS,
      // One address, each registration for another participant.
      asker: () => {
        const [room, address] = [uniqueName('room'), freshAddress()];
        return () => ({ who: { room, identity: uniqueName('user') }, address });
      },
    },
  ];

  it.each(holders)('refuses $holder at the same count on three replicas as on one process', async ({ refusal: text, expected, asker }) => {
    const counts: number[] = [];
    for (const urls of [[single.url], replicas.map((r) => r.url)]) {
      const { admitted, refusal } = await fill(urls, await slowHomeserver(), asker());
      expect([refusal.status, refusal.body.errcode]).toEqual([429, 'M_LIMIT_EXCEEDED']);
      expect(refusal.body.error).toMatch(text);
      counts.push(admitted);
    }
    const [one, three] = counts as [number, number];
    expect(one, 'its share of the budget, not all of it').toBe(expected);
    expect(expected).toBeLessThan(BUDGET_ADMITS);
    expect(three, 'admitted through three replicas').toBe(one);
  }, 90_000);
});
