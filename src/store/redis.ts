import type { ChainableCommander, Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Delegation, DelegationSecrets } from '../delegations/model.js';
import { isTerminal } from '../delegations/model.js';
import { systemClock, type Clock } from '../clock.js';
import { redisClient } from './redis-connection.js';
import { RedisKeys } from './redis-keys.js';
import { SecretBox } from './secret-box.js';
import { SHARD_COUNT, shardOf, type ShardOwnership } from './shard-leases.js';
import type { HistoryEntry } from '../delegations/history.js';
import { DuplicateTokenError, HISTORY_RETENTION_MS, type DelegationFilter, type HistoryLine, type Store, type WebhookRecord } from './store.js';

/** Event ids are remembered this long (the contract asks for at least the 10-minute dedupe window). */
const DEDUPE_TTL_MS = 15 * 60_000;
/** The event stream keeps about this many entries; at LiveKit rates that is far more than the presence window. */
export const STREAM_MAXLEN = 200_000;
const COMMAND_TIMEOUT_MS = 2_000;
/** Connection options of every connection to the store (a blocking reader drops the command timeout). */
export const REDIS_OPTIONS = { maxRetriesPerRequest: 1, commandTimeout: COMMAND_TIMEOUT_MS, enableOfflineQueue: true, lazyConnect: true };

/** Records a webhook once: the dedupe mark and the stream entry in one step. */
const RECORD_WEBHOOK = `if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'w', ARGV[3])
  return 1
end
return 0`;

/**
 * Writes a delegation, fenced by its shard's lease when ARGV[1] names the caller's `replica:fence`, and keeps its
 * open-set entries (its shard's, its participant's) in the same step; an ended one is marked for deletion.
 */
const SAVE = `if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('NOTOWNER') end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[3])
else
  redis.call('SREM', KEYS[3], ARGV[3])
  redis.call('SREM', KEYS[4], ARGV[3])
  redis.call('ZADD', KEYS[5], 'NX', ARGV[5], ARGV[3])
end
return 1`;

/**
 * Deletes delegations that ended before ARGV[1] (at most ARGV[2] of them): the delegation, its secrets, token key
 * and history, and its entries in every index, in one step. ARGV[3..8] are the key prefixes (from `RedisKeys`).
 */
const PRUNE_ENDED = `local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[3] .. id)
  if raw then
    local d = cjson.decode(raw)
    redis.call('SREM', ARGV[6] .. d.room, id)
    redis.call('SREM', ARGV[7] .. d.identity, id)
  end
  local s = redis.call('GET', ARGV[4] .. id)
  if s then
    local tk = cjson.decode(s).tokenKey
    if type(tk) == 'string' then redis.call('DEL', ARGV[8] .. tk) end
  end
  redis.call('DEL', ARGV[3] .. id, ARGV[4] .. id, ARGV[5] .. id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids`;

/**
 * The layout this code reads and writes. Version 1 (before 2026-12-07) kept no per-participant sets of open
 * delegations and no queue of ended ones to delete; `upgrade` adds both for what it wrote.
 */
const SCHEMA_VERSION = 2;

/** How many ended delegations one save of an ended one deletes at most (more than one, so deletion keeps up). */
const PRUNE_PER_END = 4;
/** Delegations read per step while upgrading the store's layout. */
const UPGRADE_BATCH = 1000;

/** Runs a pipeline and throws the first command's error, which `exec` only reports per command. */
async function execAll(p: ChainableCommander): Promise<void> {
  for (const [err] of (await p.exec()) ?? []) if (err) throw err;
}

class NotOwnerError extends Error {
  constructor(id: string) {
    super(`this replica does not hold the lease of delegation ${id}'s shard`);
    this.name = 'NotOwnerError';
  }
}

/**
 * The replicated store: delegations as JSON strings, their secrets sealed apart, per-shard sets of open ids, and the
 * webhook journal, one stream of webhooks (and control messages) that every replica reads (contract section 6; the
 * reading is the `RedisReplicas` topology's). Writes to an existing delegation are fenced by its shard's lease.
 */
export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly redis: Redis;
  readonly keys: RedisKeys;
  private readonly box: SecretBox;
  private ownership: ShardOwnership | null = null;
  private readonly clock: Clock;
  private readonly logger: Logger;
  /** How long an ended delegation is kept (with its history) before it is deleted. */
  private readonly retentionMs: number;

  constructor(
    readonly url: string,
    opts: { keys?: RedisKeys; secretBox?: SecretBox; logger: Logger; clock?: Clock; retentionMs?: number },
  ) {
    this.redis = redisClient(url, REDIS_OPTIONS);
    this.redis.on('error', (err: Error) => opts.logger.debug({ err: { message: err.message } }, 'redis connection error'));
    this.keys = opts.keys ?? new RedisKeys();
    this.box = opts.secretBox ?? new SecretBox(null);
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger;
    this.retentionMs = opts.retentionMs ?? HISTORY_RETENTION_MS;
  }

  async connect(): Promise<void> {
    await this.redis.connect();
    await this.upgrade();
  }

  /**
   * Brings a store an older version wrote up to this layout, once: every open delegation joins its participant's set
   * and every ended one the deletion queue (by when it last changed). Each step is idempotent, so replicas that start
   * together may both run it; what a replica of the old version writes later is indexed when its shard is loaded.
   */
  private async upgrade(): Promise<void> {
    const version = Number((await this.redis.get(this.keys.schema())) ?? '1');
    if (version >= SCHEMA_VERSION) return;
    let open = 0;
    let ended = 0;
    for (let cursor = '-'; ; ) {
      const ids = await this.redis.zrangebylex(this.keys.allDelegations(), cursor, '+', 'LIMIT', 0, UPGRADE_BATCH);
      if (ids.length === 0) break;
      const raws = await this.redis.mget(ids.map((id) => this.keys.delegation(id)));
      const p = this.redis.pipeline();
      for (const raw of raws) {
        if (!raw) continue;
        const d = JSON.parse(raw) as Delegation;
        if (isTerminal(d.state)) {
          p.zadd(this.keys.ended(), 'NX', d.updatedAt, d.id);
          ended++;
        } else {
          p.sadd(this.keys.openOfParticipant(d.room, d.identity), d.id);
          open++;
        }
      }
      await execAll(p);
      cursor = `(${ids[ids.length - 1]!}`;
    }
    await this.redis.set(this.keys.schema(), String(SCHEMA_VERSION));
    if (open + ended > 0) this.logger.info({ from: version, to: SCHEMA_VERSION, open, ended }, 'redis store upgraded: participant sets and the deletion queue of ended delegations filled in');
  }

  /** The lease holder whose fencing token guards every write to an existing delegation. */
  useOwnership(ownership: ShardOwnership): void {
    this.ownership = ownership;
  }

  async insertDelegation(d: Delegation, secrets: DelegationSecrets, tokenKey: string): Promise<void> {
    const claimed = await this.redis.set(this.keys.tokenKey(tokenKey), d.id, 'NX');
    if (claimed !== 'OK') throw new DuplicateTokenError();
    const shard = shardOf(d.id);
    const m = this.redis.multi();
    m.set(this.keys.delegation(d.id), JSON.stringify(d));
    m.set(this.keys.secrets(d.id), JSON.stringify({ ...this.sealed(secrets), tokenKey }));
    if (!isTerminal(d.state)) {
      m.sadd(this.keys.openInShard(shard), d.id);
      m.sadd(this.keys.openOfParticipant(d.room, d.identity), d.id);
    }
    m.zadd(this.keys.allDelegations(), 0, d.id);
    m.sadd(this.keys.room(d.room), d.id);
    m.sadd(this.keys.identity(d.identity), d.id);
    await m.exec();
  }

  async saveDelegation(d: Delegation): Promise<void> {
    const shard = shardOf(d.id);
    const holding = this.ownership?.holding(shard) ?? null;
    if (this.ownership && !holding) throw new NotOwnerError(d.id);
    const ended = isTerminal(d.state);
    const keys = [this.keys.shardOwner(shard), this.keys.delegation(d.id), this.keys.openInShard(shard), this.keys.openOfParticipant(d.room, d.identity), this.keys.ended()];
    try {
      await this.redis.eval(SAVE, keys.length, ...keys, holding ?? '', JSON.stringify(d), d.id, ended ? '0' : '1', String(this.clock.now()));
    } catch (err) {
      if (String((err as Error).message).includes('NOTOWNER')) throw new NotOwnerError(d.id);
      throw err;
    }
    if (ended) await this.pruneEnded(PRUNE_PER_END).catch((err: Error) => this.logger.warn({ err: { message: err.message } }, 'deleting ended delegations failed; the next end retries'));
  }

  /** Deletes up to `limit` delegations that ended more than the retention ago, each with all its keys and index entries. */
  async pruneEnded(limit: number): Promise<number> {
    const k = this.keys;
    const res = await this.redis.eval(PRUNE_ENDED, 2, k.ended(), k.allDelegations(), String(this.clock.now() - this.retentionMs), String(limit), k.delegation(''), k.secrets(''), k.history(''), k.room(''), k.identity(''), k.tokenKey(''));
    return Number(res);
  }

  /** The open delegations of exactly this (room, identity), across every shard. */
  async openOfParticipant(room: string, identity: string): Promise<Delegation[]> {
    const ids = await this.redis.smembers(this.keys.openOfParticipant(room, identity));
    const out: Delegation[] = [];
    for (let i = 0; i < ids.length; i += 1000) {
      const raws = await this.redis.mget(ids.slice(i, i + 1000).map((id) => this.keys.delegation(id)));
      for (const raw of raws) if (raw) out.push(JSON.parse(raw) as Delegation);
    }
    return out.filter((d) => !isTerminal(d.state));
  }

  async getDelegation(id: string): Promise<Delegation | undefined> {
    const raw = await this.redis.get(this.keys.delegation(id));
    return raw ? (JSON.parse(raw) as Delegation) : undefined;
  }

  async findByTokenKey(tokenKey: string): Promise<Delegation | undefined> {
    const id = await this.redis.get(this.keys.tokenKey(tokenKey));
    return id ? this.getDelegation(id) : undefined;
  }

  async getSecrets(id: string): Promise<DelegationSecrets | undefined> {
    const raw = await this.redis.get(this.keys.secrets(id));
    if (!raw) return undefined;
    const s = JSON.parse(raw) as { token: string; accessToken: string | null };
    return { token: this.box.open(s.token), accessToken: s.accessToken === null ? null : this.box.open(s.accessToken) };
  }

  async saveSecrets(id: string, secrets: DelegationSecrets): Promise<void> {
    // The token key stays beside the secrets: deleting an ended delegation deletes its token key too.
    const before = await this.redis.get(this.keys.secrets(id));
    const tokenKey = before ? (JSON.parse(before) as { tokenKey?: string }).tokenKey : undefined;
    await this.redis.set(this.keys.secrets(id), JSON.stringify({ ...this.sealed(secrets), ...(tokenKey ? { tokenKey } : {}) }));
  }

  private sealed(secrets: DelegationSecrets): { token: string; accessToken: string | null } {
    return { token: this.box.seal(secrets.token), accessToken: secrets.accessToken === null ? null : this.box.seal(secrets.accessToken) };
  }

  async loadOpen(shard?: number): Promise<Delegation[]> {
    const shards = shard === undefined ? [...Array(SHARD_COUNT).keys()] : [shard];
    const out: Delegation[] = [];
    for (const s of shards) {
      const ids = await this.redis.smembers(this.keys.openInShard(s));
      for (let i = 0; i < ids.length; i += 1000) {
        const raws = await this.redis.mget(ids.slice(i, i + 1000).map((id) => this.keys.delegation(id)));
        const loaded = raws.flatMap((raw) => (raw ? [JSON.parse(raw) as Delegation] : [])).filter((d) => !isTerminal(d.state));
        await this.indexParticipants(loaded);
        out.push(...loaded);
      }
    }
    return out;
  }

  /**
   * Puts open delegations in their participant's set: a no-op for what this version wrote, and how registrations a
   * replica of the previous layout took during a rolling upgrade get there. A set entry of a delegation that ends
   * meanwhile is harmless: the lookup reads each delegation and skips ended ones.
   */
  private async indexParticipants(open: Delegation[]): Promise<void> {
    if (open.length === 0) return;
    const p = this.redis.pipeline();
    for (const d of open) p.sadd(this.keys.openOfParticipant(d.room, d.identity), d.id);
    await execAll(p);
  }

  async listDelegations(filter: DelegationFilter): Promise<{ items: Delegation[]; nextCursor: string | null }> {
    let candidates: string[];
    if (filter.room !== undefined || filter.identity !== undefined) {
      const sets = [
        ...(filter.room !== undefined ? [this.keys.room(filter.room)] : []),
        ...(filter.identity !== undefined ? [this.keys.identity(filter.identity)] : []),
      ];
      candidates = (sets.length === 1 ? await this.redis.smembers(sets[0]!) : await this.redis.sinter(...sets)).sort();
      if (filter.cursor !== undefined) candidates = candidates.filter((id) => id > filter.cursor!);
    } else {
      candidates = await this.redis.zrangebylex(this.keys.allDelegations(), filter.cursor !== undefined ? `(${filter.cursor}` : '-', '+');
    }
    const items: Delegation[] = [];
    let i = 0;
    while (i < candidates.length && items.length <= filter.limit) {
      const batch = candidates.slice(i, i + 500);
      i += batch.length;
      const raws = await this.redis.mget(batch.map((id) => this.keys.delegation(id)));
      for (const raw of raws) {
        if (!raw) continue;
        const d = JSON.parse(raw) as Delegation;
        if (filter.state === undefined || d.state === filter.state) items.push(d);
        if (items.length > filter.limit) break;
      }
    }
    const page = items.slice(0, filter.limit);
    return { items: page, nextCursor: items.length > filter.limit ? page[page.length - 1]!.id : null };
  }

  async recordWebhooks(records: WebhookRecord[]): Promise<boolean[]> {
    const p = this.redis.pipeline();
    for (const r of records) p.eval(RECORD_WEBHOOK, 2, this.keys.webhook(r.id), this.keys.events(), String(DEDUPE_TTL_MS), String(STREAM_MAXLEN), JSON.stringify(r));
    const results = (await p.exec()) ?? [];
    return results.map(([err, res]) => {
      if (err) throw err;
      return Number(res) === 1;
    });
  }

  async appendHistory(lines: HistoryLine[], perDelegation: number): Promise<void> {
    const p = this.redis.pipeline();
    const ids = new Set<string>();
    for (const { id, entry } of lines) {
      p.rpush(this.keys.history(id), JSON.stringify(entry));
      ids.add(id);
    }
    for (const id of ids) {
      p.ltrim(this.keys.history(id), -perDelegation, -1);
      p.pexpire(this.keys.history(id), HISTORY_RETENTION_MS);
    }
    await execAll(p);
  }

  async historyOf(id: string): Promise<HistoryEntry[]> {
    return (await this.redis.lrange(this.keys.history(id), 0, -1)).map((raw) => JSON.parse(raw) as HistoryEntry);
  }

  async ping(): Promise<void> {
    await this.redis.ping();
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
