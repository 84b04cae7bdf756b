import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { spawnDaemon, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { redisTestsEnabled, shardsSpread, startRedis, type RedisServer } from '../helpers/redis.js';
import { delegate, refreshCalls, webhookSender, type Participant } from '../helpers/scenario.js';
import { shardOf } from '../../src/store/shard-leases.js';

const LEASE_MS = 2000;
const PREFIX = 'futures-sidecar:';

/**
 * Issue 18, the write fence by itself. A replica is frozen (SIGSTOP) past its leases and another takes its shards;
 * when it runs again, its own lease round would normally drop the shards before any timer of theirs runs (see
 * replicas-frozen.test.ts). Here that round is defeated (SIDECAR_TEST_IGNORE_LEASE_LOSS=1: it keeps the shards and
 * acts on them), so only the store's fence stands between it and a second `leave`: every write it makes to those
 * delegations carries its old fencing token, and Redis refuses it before the call it would lead to. The fake
 * homeserver's record of action calls is the judge.
 */
describe.runIf(redisTestsEnabled('replicas-fence'))('a stale replica that keeps acting is stopped by the write fence alone', () => {
  let redis: RedisServer;
  let hs: FakeHomeserver;
  let client: Redis;
  let stale: ChildDaemon;
  let other: ChildDaemon;

  beforeAll(async () => {
    redis = await startRedis();
    hs = await startFakeHomeserver();
    client = new Redis(redis.url);
    const env = { SIDECAR_STORE: redis.url, SIDECAR_REDIS_LEASE_MS: String(LEASE_MS), SIDECAR_HOMESERVER_RATE: '500' };
    stale = await spawnDaemon({ ...env, SIDECAR_TEST_IGNORE_LEASE_LOSS: '1' });
    other = await spawnDaemon(env);
    await waitFor('shards spread over the two', () => shardsSpread(client, PREFIX, 2), 30_000, 100);
  }, 90_000);
  afterAll(async () => {
    for (const r of [stale, other]) if (r && r.proc.exitCode === null && r.proc.signalCode === null) {
      r.kill('SIGCONT');
      r.kill('SIGKILL');
    }
    client?.disconnect();
    await hs?.close();
    await redis?.stop();
  });

  const ownerPid = async (id: string) => (await client.get(`${PREFIX}shard:${shardOf(id)}:owner`))?.split('-')[0];
  /** Calls that carry out a delegated leave (a future's action, a delayed event's send). */
  const actionCalls = (p: Participant) => hs.calls.filter((c) => c.handle === p.token && (c.op === 'action' || c.op === 'send'));

  it('refuses every write of the stale replica: each leave is called once, by the new owner', async () => {
    const stalePid = String(stale.proc.pid);
    const ps: Participant[] = [];
    for (let i = 0; i < 12; i++) {
      const p = await delegate(other.url, hs, i % 2 ? 'futures' : 'delayed_events', { timeoutMs: 6000 });
      await webhookSender(other.url).participantJoined(p.room, p);
      ps.push(p);
    }
    await waitFor('every delegation refreshed', () => ps.every((p) => refreshCalls(hs, p.token) >= 1), 20_000);
    const ofStale: Participant[] = [];
    for (const p of ps) if ((await ownerPid(p.delegationId)) === stalePid) ofStale.push(p);
    expect(ofStale.length).toBeGreaterThan(0);

    stale.kill('SIGSTOP');
    await waitFor('the other replica holds every shard', async () => (await client.mget(Array.from({ length: 32 }, (_, s) => `${PREFIX}shard:${s}:owner`))).every((o) => o && !o.startsWith(`${stalePid}-`)), 30_000, 50);
    // The departures arrive while it is frozen: the new owner calls each leave. The stale replica reads them from the
    // shared stream when it runs again, still believing it owns these delegations.
    for (const p of ofStale) await webhookSender(other.url).participantLeft(p.room, p, 'CLIENT_INITIATED');
    await waitFor('every leave called by the new owner', () => ofStale.every((p) => actionCalls(p).length >= 1), 20_000);
    stale.kill('SIGCONT');
    // Its own round sees the loss and, defeated, keeps the shards: from here on it acts on delegations it lost.
    await waitFor('the stale replica keeps the shards it lost', () => stale.output.some((l) => l.includes('kept anyway')), 15_000, 50);
    expect(stale.output.some((l) => l.includes('gave up a shard'))).toBe(false);
    // The stale replica applies each departure it reads: the store refuses the write that would lead to the call
    // (without the fence it would change the state and call the leave a second time).
    const refused = (p: Participant, from = 0) => stale.output.slice(from).some((l) => l.includes(`does not hold the lease of delegation ${p.delegationId}`));
    // Its timers may reach a delegation before the departure does ("tick failed"): that write is refused the same way.
    const applied = (p: Participant) => refused(p) || stale.output.some((l) => l.includes(p.delegationId) && l.includes('left on purpose'));
    // A loaded machine may leave the thawed replica minutes behind on the stream; its log says where it is.
    await waitFor('the stale replica applied each departure', () => ofStale.every(applied), 90_000, 50).catch((err: Error) => {
      const missing = ofStale.filter((p) => !applied(p)).map((p) => p.delegationId);
      throw new Error(`${err.message}; not applied: ${missing.join(', ')}; the stale replica's last lines:\n${stale.output.slice(-40).join('\n')}`);
    });
    // It keeps trying (its timers, the webhook's retries): wait for one more refusal of each (or a second call), then
    // judge.
    const mark = stale.output.length;
    await waitFor('a later refusal for every delegation it lost', () => ofStale.every((p) => refused(p, mark) || actionCalls(p).length > 1), 60_000, 100);
    for (const p of ofStale) {
      expect(actionCalls(p), `${p.delegationId}: one leave call`).toHaveLength(1);
      expect(hs.sent.filter((e) => e.handle === p.token)).toHaveLength(1);
      expect(refused(p), `${p.delegationId}: a write of the stale replica refused by the fence`).toBe(true);
    }
    for (const p of ps.filter((q) => !ofStale.includes(q))) expect(actionCalls(p)).toEqual([]);
  }, 240_000);
});
