import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Delegation } from '../../src/delegations/model.js';
import { RedisKeys } from '../../src/store/redis-keys.js';
import { RedisStore } from '../../src/store/redis.js';
import { shardOf, type ShardOwnership } from '../../src/store/shard-leases.js';
import { ManualClock } from '../../src/clock.js';
import { redisTestsEnabled, startRedis, type RedisServer } from '../helpers/redis.js';
import { uniqueName } from '../helpers/scenario.js';
import { aDelegation } from '../helpers/delegation.js';

/**
 * Issue 18, the Redis store's own bookkeeping, store-level against a real redis-server: what a participant has open
 * is one set read whole (no limit of 1000 on the lookup), an ended delegation leaves it in the same step, and once
 * the retention has passed an ended delegation is deleted with every index entry that named it (its room's and
 * identity's sets, the listing, its token key, secrets and history). And the write fence on its own: a store whose
 * ownership still believes in a lease that another replica has taken is refused.
 */

const logger = pino({ level: 'silent' });

function delegation(id: string, room: string, identity: string, now: number): Delegation {
  return aDelegation(
    { id, dialect: 'delayed_events', room, identity, timeoutMs: 60_000, createdAt: now },
    { ctx: { now, settings: { reconnectGraceMs: 1_000, joinTimeoutMs: 60_000, refreshAt: 0.5, refreshMarginMs: null }, random: () => 0.5 } },
  );
}

/** An ownership that believes it holds every shard with `value` (a replica whose own lease round is defeated). */
function believes(value: string): ShardOwnership {
  return { replicaId: value.split(':')[0]!, holding: () => value, owns: () => true };
}

describe.runIf(redisTestsEnabled('redis store indexes'))('the Redis store keeps its indexes bounded (issue 18)', () => {
  let redis: RedisServer;
  let client: Redis;
  const stores: RedisStore[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
  }, 30_000);
  afterAll(async () => {
    for (const s of stores) await s.close();
    client?.disconnect();
    await redis?.stop();
  });

  async function store(prefix: string, opts: { retentionMs?: number; clock?: ManualClock } = {}): Promise<RedisStore> {
    const s = new RedisStore(redis.url, { keys: new RedisKeys(prefix), logger, ...opts });
    await s.connect();
    stores.push(s);
    return s;
  }

  it("reads a participant's open delegations whole (more than 1000), and an ended one leaves the set at once", async () => {
    const prefix = `${uniqueName('open')}:`;
    const s = await store(prefix);
    const [room, identity] = ['room-many', 'user-many'];
    const now = Date.now();
    const ids = Array.from({ length: 1200 }, (_, i) => `dg_many_${String(i).padStart(4, '0')}`);
    for (const id of ids) await s.insertDelegation(delegation(id, room, identity, now), { token: `t-${id}`, accessToken: null }, `k-${id}`);
    // Another participant in the same room, and the same identity in another room, are not this participant.
    await s.insertDelegation(delegation('dg_other_identity', room, 'someone-else', now), { token: 't-o1', accessToken: null }, 'k-o1');
    await s.insertDelegation(delegation('dg_other_room', 'another-room', identity, now), { token: 't-o2', accessToken: null }, 'k-o2');
    expect((await s.openOfParticipant(room, identity)).map((d) => d.id).sort()).toEqual(ids);

    const ended = { ...(await s.getDelegation(ids[7]!))!, state: 'revoked' as const };
    await s.saveDelegation(ended);
    expect(await client.sismember(new RedisKeys(prefix).openOfParticipant(room, identity), ids[7]!)).toBe(0);
    const open = await s.openOfParticipant(room, identity);
    expect(open).toHaveLength(1199);
    expect(open.map((d) => d.id)).not.toContain(ids[7]);
  }, 60_000);

  it('deletes an ended delegation after the retention, with its entry in every index', async () => {
    const prefix = `${uniqueName('prune')}:`;
    const keys = new RedisKeys(prefix);
    const clock = new ManualClock(1_000_000);
    const s = await store(prefix, { retentionMs: 60_000, clock });
    const [room, identity] = ['room-prune', 'user-prune'];
    const a = delegation('dg_prune_a', room, identity, clock.now());
    const b = delegation('dg_prune_b', room, identity, clock.now());
    const keep = delegation('dg_prune_open', room, identity, clock.now());
    for (const d of [a, b, keep]) await s.insertDelegation(d, { token: `secret-${d.id}`, accessToken: null }, `tk-${d.id}`);
    await s.appendHistory([{ id: a.id, entry: { at: clock.now(), what: 'registered', state: 'awaiting_join' } }], 50);

    await s.saveDelegation({ ...a, state: 'revoked' });
    // Within the retention an ended delegation is still listed and read.
    clock.advance(59_000);
    await s.saveDelegation({ ...b, state: 'revoked' });
    expect((await s.listDelegations({ room, limit: 10 })).items.map((d) => d.id).sort()).toEqual([a.id, b.id, keep.id].sort());
    expect(await s.getDelegation(a.id)).toBeDefined();

    // Past it, the next end deletes it: nothing names it any more.
    clock.advance(2_000);
    const c = delegation('dg_prune_c', 'room-other', 'user-other', clock.now());
    await s.insertDelegation(c, { token: 'secret-c', accessToken: null }, 'tk-c');
    await s.saveDelegation({ ...c, state: 'fired' });
    expect(await s.getDelegation(a.id)).toBeUndefined();
    expect(await s.getSecrets(a.id)).toBeUndefined();
    expect(await s.findByTokenKey(`tk-${a.id}`)).toBeUndefined();
    expect(await s.historyOf(a.id)).toEqual([]);
    expect(await client.smembers(keys.room(room))).toEqual(expect.not.arrayContaining([a.id]));
    expect(await client.smembers(keys.identity(identity))).toEqual(expect.not.arrayContaining([a.id]));
    expect(await client.zscore(keys.allDelegations(), a.id)).toBeNull();
    expect(await client.zscore(keys.ended(), a.id)).toBeNull();
    expect((await s.listDelegations({ room, limit: 10 })).items.map((d) => d.id).sort()).toEqual([b.id, keep.id].sort());
    // What ended later, and what is open, stay.
    expect((await s.getDelegation(b.id))?.state).toBe('revoked');
    expect((await s.openOfParticipant(room, identity)).map((d) => d.id)).toEqual([keep.id]);

    // Once every delegation of the room has gone, its sets are gone too.
    await s.saveDelegation({ ...keep, state: 'fired' });
    clock.advance(61_000);
    expect(await s.pruneEnded(100)).toBeGreaterThanOrEqual(2);
    for (const key of [keys.room(room), keys.identity(identity), keys.openOfParticipant(room, identity), keys.delegation(b.id), keys.delegation(keep.id), keys.tokenKey(`tk-${b.id}`)]) {
      expect(await client.exists(key), key).toBe(0);
    }
    expect(await client.zcard(keys.ended())).toBe(0);
    expect(await client.zcard(keys.allDelegations())).toBe(0);
  }, 30_000);

  it('upgrades a store of the previous layout: its open delegations are found per participant, its ended ones deleted after the retention', async () => {
    const prefix = `${uniqueName('upgrade')}:`;
    const keys = new RedisKeys(prefix);
    const clock = new ManualClock(5_000_000);
    const [room, identity] = ['room-up', 'user-up'];
    const open = delegation('dg_up_open', room, identity, clock.now());
    const ended = { ...delegation('dg_up_ended', room, identity, clock.now()), state: 'fired' as const, updatedAt: clock.now() };
    // What the previous version left: the delegations and their old indexes, without participant sets, the deletion
    // queue or a layout version.
    const writer = await store(prefix, { clock });
    for (const d of [open, ended]) await writer.insertDelegation(d, { token: `secret-${d.id}`, accessToken: null }, `tk-${d.id}`);
    await client.del(keys.openOfParticipant(room, identity), keys.ended(), keys.schema());
    expect(await writer.openOfParticipant(room, identity)).toEqual([]);

    const upgraded = await store(prefix, { clock, retentionMs: 60_000 });
    expect(await client.get(keys.schema())).toBe('2');
    expect((await upgraded.openOfParticipant(room, identity)).map((d) => d.id)).toEqual([open.id]);
    expect(await upgraded.pruneEnded(100)).toBe(0);
    clock.advance(61_000);
    expect(await upgraded.pruneEnded(100)).toBe(1);
    expect(await upgraded.getDelegation(ended.id)).toBeUndefined();
    expect(await client.smembers(keys.room(room))).toEqual([open.id]);

    // During a rolling upgrade a replica of the old version still registers without the participant set: loading
    // the shard indexes it.
    const late = delegation('dg_up_late', 'room-late', 'user-late', clock.now());
    await writer.insertDelegation(late, { token: 'secret-late', accessToken: null }, 'tk-late');
    await client.del(keys.openOfParticipant('room-late', 'user-late'));
    expect(await upgraded.openOfParticipant('room-late', 'user-late')).toEqual([]);
    expect((await upgraded.loadOpen(shardOf(late.id))).map((d) => d.id)).toContain(late.id);
    expect((await upgraded.openOfParticipant('room-late', 'user-late')).map((d) => d.id)).toEqual([late.id]);
  });

  it("refuses a write by a replica whose lease another has taken, even when it believes it still holds it (the fence alone)", async () => {
    const prefix = `${uniqueName('fence')}:`;
    const keys = new RedisKeys(prefix);
    const d = delegation('dg_fenced', 'room-f', 'user-f', Date.now());
    const owner = keys.shardOwner(shardOf(d.id));
    const stale = await store(prefix);
    const fresh = await store(prefix);
    await client.set(owner, 'replica-a:1', 'PX', 60_000);
    stale.useOwnership(believes('replica-a:1'));
    await stale.insertDelegation(d, { token: 'secret-f', accessToken: null }, 'tk-f');
    await stale.saveDelegation({ ...d, state: 'connected', sid: 'PA_1' });

    // Its lease lapses and another replica takes the shard with a higher fence; the first one never notices.
    await client.del(owner);
    await client.set(owner, 'replica-b:2', 'PX', 60_000);
    fresh.useOwnership(believes('replica-b:2'));
    const firing = { ...d, state: 'firing' as const, sid: 'PA_1' };
    await expect(stale.saveDelegation(firing)).rejects.toThrow(/does not hold the lease/);
    expect((await fresh.getDelegation(d.id))?.state).toBe('connected');
    expect(await client.sismember(keys.openInShard(shardOf(d.id)), d.id)).toBe(1);
    // The new owner's writes go through.
    await fresh.saveDelegation({ ...d, state: 'revoked' });
    expect((await stale.getDelegation(d.id))?.state).toBe('revoked');
    await expect(stale.saveDelegation(firing)).rejects.toThrow(/does not hold the lease/);
    expect((await fresh.getDelegation(d.id))?.state).toBe('revoked');
  });
});
