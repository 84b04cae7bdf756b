import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Delegation, DelegationSecrets } from '../delegations/model.js';
import { isTerminal } from '../delegations/model.js';
import { SecretBox } from './secret-box.js';
import { SHARD_COUNT, shardOf, type ShardOwnership } from './shard-leases.js';
import { DuplicateTokenError, type DelegationFilter, type FeedMessage, type Store, type WebhookRecord } from './store.js';

/** Event ids are remembered this long (the contract asks for at least the 10-minute dedupe window). */
const DEDUPE_TTL_MS = 15 * 60_000;
/** The event stream keeps about this many entries; at LiveKit rates that is far more than the presence window. */
const STREAM_MAXLEN = 200_000;
const COMMAND_TIMEOUT_MS = 2_000;

/** Records a webhook once: the dedupe mark and the stream entry in one step. */
const RECORD_WEBHOOK = `if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'w', ARGV[3])
  return 1
end
return 0`;

/** Writes a delegation only while the caller still holds its shard's lease (fencing). */
const FENCED_SAVE = `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('NOTOWNER') end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[3]) else redis.call('SREM', KEYS[3], ARGV[3]) end
return 1`;

class NotOwnerError extends Error {
  constructor(id: string) {
    super(`this replica does not hold the lease of delegation ${id}'s shard`);
    this.name = 'NotOwnerError';
  }
}

/**
 * The replicated store: delegations as JSON strings, their secrets sealed apart, per-shard sets of open ids, and one
 * stream of webhooks and control messages that every replica reads (contract section 6). Writes to an existing
 * delegation are fenced by its shard's lease.
 */
export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly redis: Redis;
  private readonly reader: Redis;
  private readonly box: SecretBox;
  private ownership: ShardOwnership | null = null;
  private feeding = false;

  constructor(
    url: string,
    private readonly opts: { prefix?: string; secretBox?: SecretBox; logger: Logger },
  ) {
    const common = { maxRetriesPerRequest: 1, commandTimeout: COMMAND_TIMEOUT_MS, enableOfflineQueue: true, lazyConnect: true };
    this.redis = new Redis(url, common);
    // XREAD BLOCK holds its connection: it gets one of its own, without a command timeout.
    this.reader = new Redis(url, { ...common, commandTimeout: undefined });
    for (const c of [this.redis, this.reader]) c.on('error', (err: Error) => opts.logger.debug({ err: { message: err.message } }, 'redis connection error'));
    this.box = opts.secretBox ?? new SecretBox(null);
  }

  private get prefix(): string {
    return this.opts.prefix ?? 'fs:';
  }

  private key(...parts: Array<string | number>): string {
    return this.prefix + parts.join(':');
  }

  async connect(): Promise<void> {
    await Promise.all([this.redis.connect(), this.reader.connect()]);
  }

  /** The lease holder whose fencing token guards every write to an existing delegation. */
  useOwnership(ownership: ShardOwnership): void {
    this.ownership = ownership;
  }

  async insertDelegation(d: Delegation, secrets: DelegationSecrets, tokenKey: string): Promise<void> {
    const claimed = await this.redis.set(this.key('tk', tokenKey), d.id, 'NX');
    if (claimed !== 'OK') throw new DuplicateTokenError();
    const shard = shardOf(d.id);
    const m = this.redis.multi();
    m.set(this.key('d', d.id), JSON.stringify(d));
    m.set(this.key('s', d.id), JSON.stringify({ token: this.box.seal(secrets.token), accessToken: secrets.accessToken === null ? null : this.box.seal(secrets.accessToken) }));
    if (!isTerminal(d.state)) m.sadd(this.key('open', shard), d.id);
    m.zadd(this.key('all'), 0, d.id);
    m.sadd(this.key('room', d.room), d.id);
    m.sadd(this.key('ident', d.identity), d.id);
    await m.exec();
  }

  async saveDelegation(d: Delegation): Promise<void> {
    const shard = shardOf(d.id);
    const holding = this.ownership?.holding(shard) ?? null;
    if (this.ownership && !holding) throw new NotOwnerError(d.id);
    const ownerKey = this.key('shard', shard, 'owner');
    if (!holding) {
      await this.redis.set(this.key('d', d.id), JSON.stringify(d));
      return;
    }
    try {
      await this.redis.eval(FENCED_SAVE, 3, ownerKey, this.key('d', d.id), this.key('open', shard), holding, JSON.stringify(d), d.id, isTerminal(d.state) ? '0' : '1');
    } catch (err) {
      if (String((err as Error).message).includes('NOTOWNER')) throw new NotOwnerError(d.id);
      throw err;
    }
  }

  async getDelegation(id: string): Promise<Delegation | undefined> {
    const raw = await this.redis.get(this.key('d', id));
    return raw ? (JSON.parse(raw) as Delegation) : undefined;
  }

  async findByTokenKey(tokenKey: string): Promise<Delegation | undefined> {
    const id = await this.redis.get(this.key('tk', tokenKey));
    return id ? this.getDelegation(id) : undefined;
  }

  async getSecrets(id: string): Promise<DelegationSecrets | undefined> {
    const raw = await this.redis.get(this.key('s', id));
    if (!raw) return undefined;
    const s = JSON.parse(raw) as { token: string; accessToken: string | null };
    return { token: this.box.open(s.token), accessToken: s.accessToken === null ? null : this.box.open(s.accessToken) };
  }

  async saveSecrets(id: string, secrets: DelegationSecrets): Promise<void> {
    await this.redis.set(this.key('s', id), JSON.stringify({ token: this.box.seal(secrets.token), accessToken: secrets.accessToken === null ? null : this.box.seal(secrets.accessToken) }));
  }

  async loadOpen(shard?: number): Promise<Delegation[]> {
    const shards = shard === undefined ? [...Array(SHARD_COUNT).keys()] : [shard];
    const out: Delegation[] = [];
    for (const s of shards) {
      const ids = await this.redis.smembers(this.key('open', s));
      for (let i = 0; i < ids.length; i += 1000) {
        const raws = await this.redis.mget(ids.slice(i, i + 1000).map((id) => this.key('d', id)));
        for (const raw of raws) if (raw) out.push(JSON.parse(raw) as Delegation);
      }
    }
    return out.filter((d) => !isTerminal(d.state));
  }

  async listDelegations(filter: DelegationFilter): Promise<{ items: Delegation[]; nextCursor: string | null }> {
    let candidates: string[];
    if (filter.room !== undefined || filter.identity !== undefined) {
      const sets = [
        ...(filter.room !== undefined ? [this.key('room', filter.room)] : []),
        ...(filter.identity !== undefined ? [this.key('ident', filter.identity)] : []),
      ];
      candidates = (sets.length === 1 ? await this.redis.smembers(sets[0]!) : await this.redis.sinter(...sets)).sort();
      if (filter.cursor !== undefined) candidates = candidates.filter((id) => id > filter.cursor!);
    } else {
      candidates = await this.redis.zrangebylex(this.key('all'), filter.cursor !== undefined ? `(${filter.cursor}` : '-', '+');
    }
    const items: Delegation[] = [];
    let i = 0;
    while (i < candidates.length && items.length <= filter.limit) {
      const batch = candidates.slice(i, i + 500);
      i += batch.length;
      const raws = await this.redis.mget(batch.map((id) => this.key('d', id)));
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
    for (const r of records) p.eval(RECORD_WEBHOOK, 2, this.key('wh', r.id), this.key('events'), String(DEDUPE_TTL_MS), String(STREAM_MAXLEN), JSON.stringify(r));
    const results = (await p.exec()) ?? [];
    return results.map(([err, res]) => {
      if (err) throw err;
      return Number(res) === 1;
    });
  }

  async markWebhooksProcessed(): Promise<void> {
    // Every replica reads the stream; what a replica applied is its own state, and a new owner catches up from presence.
  }

  async pendingWebhooks(): Promise<WebhookRecord[]> {
    return [];
  }

  async pruneWebhooks(): Promise<void> {
    // Dedupe marks expire by themselves and the stream is capped.
  }

  /** Tells the replica that owns a delegation about something another replica did (registered, revoke). */
  async announce(message: Exclude<FeedMessage, { kind: 'webhook' }>): Promise<void> {
    await this.redis.xadd(this.key('events'), 'MAXLEN', '~', String(STREAM_MAXLEN), '*', 'c', JSON.stringify(message));
  }

  /**
   * Delivers the stream in order: first what was recorded since `sinceMs` (so presence is rebuilt), then live.
   * Resolves once the backlog has been delivered; the live part runs until `close`.
   */
  async feed(sinceMs: number, deliver: (m: FeedMessage) => Promise<void>): Promise<void> {
    let last = `${Math.max(0, sinceMs)}-0`;
    const backlog = await this.redis.xrange(this.key('events'), last, '+');
    for (const [id, fields] of backlog) {
      await deliverEntry(fields, deliver);
      last = id;
    }
    this.feeding = true;
    void (async () => {
      while (this.feeding) {
        try {
          const res = (await this.reader.xread('COUNT', 500, 'BLOCK', 1000, 'STREAMS', this.key('events'), last)) as Array<[string, Array<[string, string[]]>]> | null;
          for (const [, entries] of res ?? []) {
            for (const [id, fields] of entries) {
              await deliverEntry(fields, deliver);
              last = id;
            }
          }
        } catch (err) {
          if (!this.feeding) break;
          this.opts.logger.warn({ err: { message: (err as Error).message } }, 'reading the event stream failed; retrying');
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    })();
  }

  async ping(): Promise<void> {
    await this.redis.ping();
  }

  async close(): Promise<void> {
    this.feeding = false;
    this.reader.disconnect();
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

async function deliverEntry(fields: string[], deliver: (m: FeedMessage) => Promise<void>): Promise<void> {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const [name, value] = [fields[i], fields[i + 1]!];
    if (name === 'w') await deliver({ kind: 'webhook', record: JSON.parse(value) as WebhookRecord });
    else if (name === 'c') await deliver(JSON.parse(value) as FeedMessage);
  }
}
