import type { Redis } from 'ioredis';
import { redisClient } from '../store/redis-connection.js';
import type { Logger } from 'pino';
import { sleep, type Clock } from '../clock.js';
import { REDIS_OPTIONS, STREAM_MAXLEN, type RedisStore } from '../store/redis.js';
import { RedisOriginLoad } from '../store/redis-origin-load.js';
import { ShardLeases } from '../store/shard-leases.js';
import type { FeedMessage, WebhookRecord } from '../store/store.js';
import type { ControlMessage, Topology } from './topology.js';
import type { Metrics } from '../metrics.js';

/** After a failed read of the stream, the next try waits this long. */
const FEED_RETRY_MS = 500;

/**
 * Replicas sharing a Redis store (contract section 6): shards split by leases (`ShardLeases`), and one stream of
 * webhooks and control messages that every replica reads in order, so that presence is known everywhere and each
 * delegation's events reach the replica that owns it.
 */
export class RedisReplicas implements Topology {
  readonly applied = null;
  readonly shared = true;
  readonly clusterLoad: RedisOriginLoad;
  private readonly leases: ShardLeases;
  /** XREAD BLOCK holds its connection: the stream gets one of its own, without a command timeout. */
  private readonly reader: Redis;
  private parts: Parameters<Topology['start']>[0] | null = null;
  private feeding = false;

  constructor(
    private readonly deps: {
      store: RedisStore;
      clock: Clock;
      logger: Logger;
      leaseMs: number;
      /** Test only: keep acting on shards whose leases were lost (see `Config.redisIgnoreLeaseLoss`). */
      ignoreLeaseLoss?: boolean;
      /** How far back the stream is read at start, to rebuild presence before taking over shards. */
      backlogMs: number;
      metrics: Metrics;
    },
  ) {
    const { store, clock, logger, leaseMs } = deps;
    this.leases = new ShardLeases({
      redis: store.redis,
      keys: store.keys,
      clock,
      logger: logger.child({ component: 'leases' }),
      leaseMs,
      ignoreLoss: deps.ignoreLeaseLoss ?? false,
      onGain: (shard) => this.started().engine.gainShard(shard),
      onLose: (shard, reason) => {
        if (reason !== 'stopped') deps.metrics.shardLeasesLost.inc({ reason });
        this.started().engine.loseShard(shard);
      },
    });
    store.useOwnership(this.leases);
    // A replica's load counts for two lease times after its last heartbeat: a dead replica's share lapses about when
    // its shards' new owners (which count their delegations themselves) have taken over.
    this.clusterLoad = new RedisOriginLoad({ store, clock, logger: logger.child({ component: 'cluster-load' }), heartbeatMs: Math.max(500, Math.floor(leaseMs / 2)), ttlMs: 2 * leaseMs });
    this.reader = redisClient(store.url, { ...REDIS_OPTIONS, commandTimeout: undefined });
    this.reader.on('error', (err: Error) => logger.debug({ err: { message: err.message } }, 'redis connection error'));
  }

  owns(delegationId: string): boolean {
    return this.leases.owns(delegationId);
  }

  /** Tells the replica that owns a delegation about something another replica did (registered, revoke). */
  async announce(message: ControlMessage): Promise<void> {
    await this.deps.store.redis.xadd(this.deps.store.keys.events(), 'MAXLEN', '~', String(STREAM_MAXLEN), '*', 'c', JSON.stringify(message));
  }

  async start(parts: Parameters<Topology['start']>[0]): Promise<void> {
    this.parts = parts;
    await this.reader.connect();
    // Presence first (recent events of every room), then shards: a delegation taken over is caught up from it.
    await this.feed(this.deps.clock.now() - this.deps.backlogMs, (m) => parts.intake.enqueueFeed(m));
    await this.leases.start();
    this.clusterLoad.start(() => parts.engine.confirmedLoad());
  }

  async stop(): Promise<void> {
    await this.leases.stop();
    await this.clusterLoad.stop();
    this.feeding = false;
    this.reader.disconnect();
  }

  private started(): Parameters<Topology['start']>[0] {
    if (!this.parts) throw new Error('the topology has not started');
    return this.parts;
  }

  /**
   * Delivers the stream in order: first what was recorded since `sinceMs` (so presence is rebuilt), then live.
   * Resolves once the backlog has been delivered; the live part runs until `stop`.
   */
  private async feed(sinceMs: number, deliver: (m: FeedMessage) => Promise<void>): Promise<void> {
    const events = this.deps.store.keys.events();
    let last = `${Math.max(0, sinceMs)}-0`;
    const backlog = await this.deps.store.redis.xrange(events, last, '+');
    for (const [id, fields] of backlog) {
      await deliverEntry(fields, deliver);
      last = id;
    }
    this.feeding = true;
    void (async () => {
      while (this.feeding) {
        try {
          const res = (await this.reader.xread('COUNT', 500, 'BLOCK', 1000, 'STREAMS', events, last)) as Array<[string, Array<[string, string[]]>]> | null;
          for (const [, entries] of res ?? []) {
            for (const [id, fields] of entries) {
              await deliverEntry(fields, deliver);
              last = id;
            }
          }
        } catch (err) {
          if (!this.feeding) break;
          this.deps.logger.warn({ err: { message: (err as Error).message } }, 'reading the event stream failed; retrying');
          await sleep(this.deps.clock, FEED_RETRY_MS);
        }
      }
    })();
  }
}

async function deliverEntry(fields: string[], deliver: (m: FeedMessage) => Promise<void>): Promise<void> {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const [name, value] = [fields[i], fields[i + 1]!];
    if (name === 'w') await deliver({ kind: 'webhook', record: JSON.parse(value) as WebhookRecord });
    else if (name === 'c') await deliver(JSON.parse(value) as FeedMessage);
  }
}
