/** The default key prefix (SIDECAR_REDIS_PREFIX); every replica of one deployment must use the same. */
export const DEFAULT_REDIS_PREFIX = 'futures-sidecar:';

/** Every Redis key the daemon reads or writes, in one place, under one prefix. */
export class RedisKeys {
  constructor(readonly prefix: string = DEFAULT_REDIS_PREFIX) {}

  /** A delegation, as JSON. */
  delegation(id: string): string {
    return `${this.prefix}d:${id}`;
  }

  /** A delegation's secrets, sealed. */
  secrets(id: string): string {
    return `${this.prefix}s:${id}`;
  }

  /** A delegation's history lines (JSON), the newest last, trimmed and expiring. */
  history(id: string): string {
    return `${this.prefix}hist:${id}`;
  }

  /** Token key -> delegation id: the idempotency index. */
  tokenKey(tokenKey: string): string {
    return `${this.prefix}tk:${tokenKey}`;
  }

  /** Ids of a shard's open delegations. */
  openInShard(shard: number): string {
    return `${this.prefix}open:${shard}`;
  }

  /** Every delegation id, lexically ordered, for listing. */
  allDelegations(): string {
    return `${this.prefix}all`;
  }

  room(room: string): string {
    return `${this.prefix}room:${room}`;
  }

  identity(identity: string): string {
    return `${this.prefix}ident:${identity}`;
  }

  /**
   * Ids of one participant's open delegations (exactly this room and identity; the length keeps the two apart), for
   * replacement and the per-participant cap. An id leaves it in the same step as its delegation ends.
   */
  openOfParticipant(room: string, identity: string): string {
    return `${this.prefix}openp:${room.length}:${room}:${identity}`;
  }

  /** Ended delegations by when they ended: what is deleted (with its index entries) once the retention has passed. */
  ended(): string {
    return `${this.prefix}ended`;
  }

  /** A webhook id's dedupe mark. */
  webhook(eventId: string): string {
    return `${this.prefix}wh:${eventId}`;
  }

  /** The stream of webhooks and control messages every replica reads. */
  events(): string {
    return `${this.prefix}events`;
  }

  /** A shard's lease: `replica:fence` of its holder. */
  shardOwner(shard: number): string {
    return `${this.prefix}shard:${shard}:owner`;
  }

  /** A shard's fencing counter. */
  shardFence(shard: number): string {
    return `${this.prefix}shard:${shard}:fence`;
  }

  /** A homeserver origin's load across the cluster: each replica's confirmed load and each new delegation's hold. */
  originLoad(origin: string): string {
    return `${this.prefix}load:${origin}`;
  }

  /** The layout version the store was last brought up to (`RedisStore.upgrade`). */
  schema(): string {
    return `${this.prefix}schema`;
  }

  /** Replicas by last heartbeat. */
  replicas(): string {
    return `${this.prefix}replicas`;
  }
}
