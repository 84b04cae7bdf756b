import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shardOf } from '../../src/store/shard-leases.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { freePort, testEnv, waitFor } from '../helpers/daemon.js';
import { createNamespaces, netnsAvailable, type Namespaces } from '../helpers/netns.js';
import { redisTestsEnabled } from '../helpers/redis.js';
import { actionsFired, delegate, refreshCalls, webhookSender, type Participant } from '../helpers/scenario.js';

const LEASE_MS = 2000;
const PREFIX = 'futures-sidecar:';
const INNER_HTTP_PORT = 8080;

function enabled(): boolean {
  if (!redisTestsEnabled('replicas-partition')) return false;
  if (netnsAvailable()) return true;
  if (process.env.SIDECAR_TEST_REQUIRE_REDIS === '1') throw new Error('replicas-partition: network namespaces (root and `ip netns`) are required with SIDECAR_TEST_REQUIRE_REDIS=1');
  console.warn('\n!!! replicas-partition: SKIPPED — needs root and `ip netns` to put each replica in its own network namespace !!!\n');
  return false;
}

/**
 * Issue 18: two replicas in their own network namespaces, Redis in a third. One replica's link is cut (a partition:
 * the process lives on and still reaches the homeserver); its leases lapse and the other takes over; when the link
 * is back it stops acting on the shards it lost. The homeserver's record is the judge.
 */
describe.runIf(enabled())('a replica partitioned from Redis', () => {
  let net: Namespaces;
  let hs: FakeHomeserver;
  let client: Redis;
  const urls: Record<string, string> = {};
  const outputs: Record<string, string[]> = {};
  /** `ip netns exec` execs the daemon: the child's pid is the daemon's (no pid namespace). */
  const pids: Record<string, string> = {};

  beforeAll(async () => {
    net = createNamespaces(['a', 'b']);
    hs = await startFakeHomeserver();
    const hsPort = Number(new URL(hs.url).port);
    const hsSock = join(net.dir, 'hs.sock');
    await net.forward(null, `unix:${hsSock}`, `tcp:${hsPort}`);
    const redisSock = join(net.dir, 'redis.sock');
    const redis = net.spawnIn(net.names.hub!, 'redis-server', ['--port', '6379', '--bind', net.hubAddress('a'), net.hubAddress('b'), '--unixsocket', redisSock, '--unixsocketperm', '777', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--dir', net.dir]);
    redis.stdout!.resume();
    redis.stderr!.resume();
    await waitFor('redis in the hub namespace', () => existsSync(redisSock), 20_000, 50);
    client = new Redis({ path: redisSock, maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
    await client.ping();
    for (const r of ['a', 'b']) {
      const ns = net.names[r]!;
      await net.forward(ns, `tcp:${hsPort}`, `unix:${hsSock}`);
      const httpSock = join(net.dir, `${r}-http.sock`);
      const proc = net.spawnIn(ns, process.execPath, ['--import', 'tsx', 'src/main.ts', '--dev'], {
        env: { ...process.env, ...testEnv({ SIDECAR_STORE: `redis://${net.hubAddress(r)}:6379`, SIDECAR_REDIS_LEASE_MS: String(LEASE_MS), SIDECAR_HOMESERVER_RATE: '500' }), SIDECAR_PORT: String(INNER_HTTP_PORT), SIDECAR_HOST: '127.0.0.1', LOG_LEVEL: 'info' },
      });
      pids[r] = String(proc.pid);
      const out: string[] = (outputs[r] = []);
      proc.stdout!.on('data', (d) => out.push(...String(d).split('\n').filter(Boolean)));
      proc.stderr!.on('data', (d) => out.push(...String(d).split('\n').filter(Boolean)));
      await net.forward(ns, `unix:${httpSock}`, `tcp:${INNER_HTTP_PORT}`);
      const port = await freePort();
      await net.forward(null, `tcp:${port}`, `unix:${httpSock}`);
      urls[r] = `http://127.0.0.1:${port}`;
      await waitFor(`replica ${r} ready`, async () => fetch(`${urls[r]}/readyz`).then((res) => res.ok, () => false), 30_000, 100).catch((err: Error) => {
        throw new Error(`${err.message}\n${out.join('\n')}`);
      });
    }
    await waitFor('shards spread over the two', async () => {
      const owners = await client.mget(Array.from({ length: 32 }, (_, s) => `${PREFIX}shard:${s}:owner`));
      return owners.every(Boolean) && new Set(owners.map((o) => o!.split('-')[0])).size === 2;
    }, 20_000, 100);
  }, 90_000);
  afterAll(async () => {
    client?.disconnect();
    net?.destroy();
    await hs?.close();
  });

  const ownerOf = async (id: string) => (await client.get(`${PREFIX}shard:${shardOf(id)}:owner`))?.split('-')[0];
  const callsOf = (token: string) => hs.calls.filter((c) => c.handle === token && c.op !== 'create');

  it('takes over from the cut-off replica, and after the heal the cut-off replica does not act on what it lost', async () => {
    const ps: Participant[] = [];
    for (let i = 0; i < 12; i++) {
      const p = await delegate(urls.b!, hs, i % 2 ? 'futures' : 'delayed_events', { timeoutMs: 6000 });
      await webhookSender(urls.b!).participantJoined(p.room, p);
      ps.push(p);
    }
    await waitFor('every delegation refreshed', () => ps.every((p) => refreshCalls(hs, p.token) >= 1), 20_000);
    const pidA = pids.a!;
    const ofA: Participant[] = [];
    for (const p of ps) if ((await ownerOf(p.delegationId)) === pidA) ofA.push(p);
    expect(ofA.length).toBeGreaterThan(0);

    const cutAt = Date.now();
    net.cut('a');
    await waitFor('replica b holds every shard', async () => (await client.mget(Array.from({ length: 32 }, (_, s) => `${PREFIX}shard:${s}:owner`))).every((o) => o && !o.startsWith(`${pidA}-`)), 20_000, 50);
    const takeoverMs = Date.now() - cutAt;
    // While a is cut off (and still reaches the homeserver), its delegations' participants leave: b fires each.
    for (const p of ofA) await webhookSender(urls.b!).participantLeft(p.room, p, 'CLIENT_INITIATED');
    await waitFor('every leave fired by b', () => ofA.every((p) => actionsFired(hs, p.token).length === 1), 20_000);
    // Stay cut off until a has noticed on its own that it can no longer vouch for its leases.
    await waitFor('a drops the leases it could not renew', () => outputs.a!.some((l) => l.includes('shard released')), 20_000, 50);
    const callsAtHeal = new Map(ps.map((p) => [p.token, callsOf(p.token).length]));
    net.heal('a');
    await waitFor('a answers again', async () => fetch(`${urls.a}/livez`).then((r) => r.ok, () => false), 20_000, 100);
    expect(outputs.a!.some((l) => l.includes('gave up a shard'))).toBe(true);
    const open = ps.filter((p) => !ofA.includes(p));
    await waitFor('every open delegation refreshed after the heal', () => open.every((p) => callsOf(p.token).length > callsAtHeal.get(p.token)!), 20_000, 100);
    console.log(`partition: shards of the cut-off replica taken over ${takeoverMs} ms after the cut (lease ${LEASE_MS} ms); ${ofA.length} of its delegations fired once by the other`);
    for (const p of ofA) {
      expect(actionsFired(hs, p.token), 'fired once').toHaveLength(1);
      expect(callsOf(p.token).length, 'no call for a fired delegation after the heal').toBe(callsAtHeal.get(p.token));
    }
    for (const p of open) {
      expect(hs.status(p.token)).toBe('pending');
      expect(actionsFired(hs, p.token)).toEqual([]);
    }
  }, 120_000);
});
