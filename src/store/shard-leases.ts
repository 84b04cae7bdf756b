import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.js';
import type { RedisKeys } from './redis-keys.js';

/** How delegations are split between replicas. Fixed: changing it would move every delegation. */
export const SHARD_COUNT = 32;

export function shardOf(delegationId: string): number {
  return createHash('sha1').update(delegationId).digest().readUInt16BE(0) % SHARD_COUNT;
}

/** Compare-and-set on a shard's owner record `replica:fence`: renew, release, or write only while we hold it. */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;
const ACQUIRE = `if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return fence`;

/**
 * Why a replica stopped holding a shard: its renewals lapsed, another replica holds the lease now, it gave the shard
 * to a replica short of its share, loading the shard failed, or it is shutting down.
 */
export const SHARD_LOSS_REASONS = ['not_renewed', 'taken_over', 'rebalanced', 'load_failed', 'stopped'] as const;
export type ShardLossReason = (typeof SHARD_LOSS_REASONS)[number];

export interface ShardOwnership {
  readonly replicaId: string;
  /** `replica:fence` while this replica holds the shard's lease, else null. */
  holding(shard: number): string | null;
  owns(delegationId: string): boolean;
}

/**
 * Shard ownership over Redis (contract section 6): each of SHARD_COUNT shards has a lease `SET NX PX` with a fencing
 * token from `INCR`; the holder renews it by compare-and-set. Replicas announce themselves in a sorted set and each
 * aims for its fair share, so work spreads out and a dead replica's shards are taken over within one lease time.
 * A replica that cannot renew stops acting on its shards before their leases can expire.
 */
export class ShardLeases implements ShardOwnership {
  readonly replicaId = `${process.pid}-${randomBytes(6).toString('hex')}`;
  private readonly held = new Map<number, { value: string; renewedAt: number }>();
  private timer: TimerHandle | null = null;
  private stopped = false;
  private ticking: Promise<void> | null = null;

  constructor(
    private readonly deps: {
      redis: Redis;
      keys: RedisKeys;
      clock: Clock;
      logger: Logger;
      leaseMs: number;
      /** Test only: a lost lease is logged but the shard is kept (and acted on), leaving only the store's fence. */
      ignoreLoss?: boolean;
      onGain: (shard: number) => Promise<void>;
      onLose: (shard: number, reason: ShardLossReason) => void;
    },
  ) {}

  holding(shard: number): string | null {
    return this.held.get(shard)?.value ?? null;
  }

  owns(delegationId: string): boolean {
    return this.held.has(shardOf(delegationId));
  }

  get heldCount(): number {
    return this.held.size;
  }

  /** Takes a first share of the shards, then keeps renewing and rebalancing. */
  async start(): Promise<void> {
    await this.tick();
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) this.deps.clock.clearTimeout(this.timer);
    await this.ticking;
    const { redis } = this.deps;
    for (const [shard, h] of this.held) {
      this.held.delete(shard);
      this.deps.onLose(shard, 'stopped');
      await redis.eval(RELEASE, 1, this.deps.keys.shardOwner(shard), h.value).catch(() => undefined);
    }
    await redis.zrem(this.deps.keys.replicas(), this.replicaId).catch(() => undefined);
  }

  private get renewEveryMs(): number {
    return Math.max(200, Math.floor(this.deps.leaseMs / 4));
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.deps.clock.setTimeout(() => {
      this.ticking = this.tick()
        .catch((err) => this.deps.logger.warn({ err: { message: (err as Error).message } }, 'shard lease round failed'))
        .finally(() => {
          this.ticking = null;
          this.schedule();
        });
    }, this.renewEveryMs);
  }

  /** One round: drop leases we can no longer vouch for, renew the rest, then move towards our fair share. */
  async tick(): Promise<void> {
    const { redis, keys, clock, leaseMs } = this.deps;
    const now = clock.now();
    // Stop acting well before a lease we failed to renew can expire and be taken by another replica.
    for (const [shard, h] of this.held) {
      if (now - h.renewedAt > leaseMs - 2 * this.renewEveryMs) this.lose(shard, 'not_renewed');
    }
    await redis.zadd(keys.replicas(), now, this.replicaId);
    await redis.zremrangebyscore(keys.replicas(), '-inf', now - 3 * leaseMs);
    // A replica counts as alive while its heartbeat is younger than a lease: a dead one stops counting about when
    // its leases run out, so the survivors' fair share grows just as its shards become free.
    const replicas = await redis.zcount(keys.replicas(), now - leaseMs, '+inf');
    for (const [shard, h] of this.held) {
      const ok = await redis.eval(RENEW, 1, this.deps.keys.shardOwner(shard), h.value, String(leaseMs));
      if (Number(ok) === 1) h.renewedAt = now;
      else this.lose(shard, 'taken_over');
    }
    if (this.stopped) return;
    const fairShare = Math.ceil(SHARD_COUNT / Math.max(1, replicas));
    const owners = await redis.mget(Array.from({ length: SHARD_COUNT }, (_, s) => this.deps.keys.shardOwner(s)));
    if (this.held.size > fairShare) {
      // Give shards back only to a replica that has fewer than its share, so nothing moves while counts settle.
      const counts = new Map<string, number>();
      for (const o of owners) if (o) counts.set(o.slice(0, o.lastIndexOf(':')), (counts.get(o.slice(0, o.lastIndexOf(':'))) ?? 0) + 1);
      const starving = replicas > counts.size || [...counts.entries()].some(([r, n]) => r !== this.replicaId && n < fairShare - 1);
      if (!starving) return;
      for (const shard of [...this.held.keys()].slice(fairShare)) {
        const h = this.held.get(shard)!;
        this.lose(shard, 'rebalanced');
        await redis.eval(RELEASE, 1, this.deps.keys.shardOwner(shard), h.value);
      }
      return;
    }
    for (let shard = 0; shard < SHARD_COUNT && this.held.size < fairShare; shard++) {
      if (this.held.has(shard) || owners[shard]) continue;
      const fence = Number(await redis.eval(ACQUIRE, 2, this.deps.keys.shardOwner(shard), keys.shardFence(shard), this.replicaId, String(leaseMs)));
      if (fence > 0) {
        this.held.set(shard, { value: `${this.replicaId}:${fence}`, renewedAt: now });
        this.deps.logger.info({ shard, fence }, 'shard acquired');
        try {
          await this.deps.onGain(shard);
        } catch (err) {
          this.deps.logger.error({ err, shard }, 'could not load an acquired shard; releasing it');
          const h = this.held.get(shard);
          this.lose(shard, 'load_failed');
          if (h) await redis.eval(RELEASE, 1, this.deps.keys.shardOwner(shard), h.value).catch(() => undefined);
        }
      }
    }
  }

  private lose(shard: number, why: ShardLossReason): void {
    if (this.deps.ignoreLoss && why !== 'stopped' && this.held.has(shard)) {
      this.deps.logger.warn({ shard, why }, 'shard lease lost, kept anyway (SIDECAR_TEST_IGNORE_LEASE_LOSS)');
      return;
    }
    if (!this.held.delete(shard)) return;
    this.deps.logger.warn({ shard, why }, 'shard released');
    this.deps.onLose(shard, why);
  }
}
