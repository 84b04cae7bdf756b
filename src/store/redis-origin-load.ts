import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.js';
import { CLIENT_SHARE, IDENTITY_SHARE, PROVISIONAL_LEASE_MS, type AdmissionRefusal, type ClusterLimits, type ClusterLoad } from '../delegations/homeserver-load.js';
import type { RedisStore } from './redis.js';

/**
 * One hash per origin, every field `load|until[|participant|client]`: `r:<replica>` is a replica's confirmed load,
 * `h:<delegation>` a new delegation's provisional hold, with (hashes of) its participant's and client address's keys.
 * Fields past their `until` no longer count and are dropped when read, so a replica that dies stops counting once it
 * misses its heartbeats. Answers 1 when the hold was taken, 0 when the origin is full, -1 or -2 when the participant
 * or the address would hold more than its share (the shares bound what a holder adds on top of what it holds, as
 * `HomeserverLoad` does for one process).
 */
const RESERVE = `local now = tonumber(ARGV[1])
local want = tonumber(ARGV[3])
local total, byIdentity, byClient = 0, 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local load, untilMs, ik, ck = string.match(fields[i + 1], '^([^|]*)|([^|]*)|?([^|]*)|?([^|]*)$')
  if tonumber(untilMs) <= now then redis.call('HDEL', KEYS[1], fields[i]) else
    local l = tonumber(load)
    total = total + l
    if ik ~= '' and ik == ARGV[7] then byIdentity = byIdentity + l end
    if ck ~= '' and ck == ARGV[9] then byClient = byClient + l end
  end
end
if total + want > tonumber(ARGV[4]) then return 0 end
if byIdentity > 0 and byIdentity + want > tonumber(ARGV[8]) then return -1 end
if ARGV[9] ~= '' and byClient > 0 and byClient + want > tonumber(ARGV[10]) then return -2 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. '|' .. ARGV[5] .. '|' .. ARGV[7] .. '|' .. ARGV[9])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return 1`;

const RESERVE_ANSWERS: Record<string, AdmissionRefusal | null> = { '1': null, '0': 'homeserver_full', '-1': 'identity_share', '-2': 'client_share' };

/** A holder's key as the hash keeps it: short, and free of the separators a room or identity may contain. */
function holderHash(key: string | null): string {
  return key === null ? '' : createHash('sha256').update(key).digest('base64url').slice(0, 22);
}

/** Sets (or, at 0, removes) this replica's confirmed load, and removes an ended hold in the same step. */
const PUBLISH = `if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[4])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
end
return 1`;

/**
 * The cluster's load per homeserver origin, kept in Redis by every replica (issue 18): admission on any replica
 * weighs a new delegation against what all replicas refresh for its homeserver. A replica's entry is republished
 * every `heartbeatMs` and counts for `ttlMs` after, so a crashed replica's share lapses at about the time its shards
 * are taken over (whose new owners then count them); a hold lapses like a local one, after `PROVISIONAL_LEASE_MS`.
 */
export class RedisOriginLoad implements ClusterLoad {
  private readonly field = `r:${process.pid}-${randomBytes(6).toString('hex')}`;
  private timer: TimerHandle | null = null;
  private source: (() => Iterable<[string, number]>) | null = null;

  constructor(
    private readonly deps: { store: RedisStore; clock: Clock; logger: Logger; heartbeatMs: number; ttlMs: number },
  ) {}

  async reserve(origin: string, id: string, load: number, limits: ClusterLimits): Promise<AdmissionRefusal | null> {
    const now = this.deps.clock.now();
    const res = await this.deps.store.redis.eval(
      RESERVE,
      1,
      this.deps.store.keys.originLoad(origin),
      String(now),
      `h:${id}`,
      String(load),
      String(limits.budget),
      String(now + PROVISIONAL_LEASE_MS),
      String(Math.max(this.deps.ttlMs, PROVISIONAL_LEASE_MS)),
      holderHash(limits.identity),
      String(limits.budget * IDENTITY_SHARE),
      holderHash(limits.client),
      String(limits.budget * CLIENT_SHARE),
    );
    const answer = RESERVE_ANSWERS[String(res)];
    if (answer === undefined) throw new Error(`unexpected answer from the cluster's admission: ${String(res)}`);
    return answer;
  }

  publish(origin: string, confirmed: number, endHold?: string): void {
    this.write(origin, confirmed, endHold).catch((err: Error) => this.deps.logger.warn({ err: { message: err.message } }, 'publishing the homeserver load to the cluster failed; the next heartbeat retries'));
  }

  /** Republishes this replica's load every heartbeat, from `source`, until `stop`. */
  start(source: () => Iterable<[string, number]>): void {
    this.source = source;
    this.schedule();
  }

  /** Stops the heartbeat and withdraws this replica's entries (its delegations go to other replicas). */
  async stop(): Promise<void> {
    if (this.timer) this.deps.clock.clearTimeout(this.timer);
    this.timer = null;
    const source = this.source;
    this.source = null;
    if (!source) return;
    await Promise.all([...source()].map(([origin]) => this.write(origin, 0))).catch((err: Error) => this.deps.logger.warn({ err: { message: err.message } }, 'withdrawing the homeserver load failed; it lapses by itself'));
  }

  private schedule(): void {
    this.timer = this.deps.clock.setTimeout(() => {
      const source = this.source;
      if (!source) return;
      for (const [origin, confirmed] of source()) this.publish(origin, confirmed);
      this.schedule();
    }, this.deps.heartbeatMs);
  }

  private async write(origin: string, confirmed: number, endHold?: string): Promise<void> {
    const now = this.deps.clock.now();
    await this.deps.store.redis.eval(PUBLISH, 1, this.deps.store.keys.originLoad(origin), this.field, confirmed > 1e-12 ? String(confirmed) : '', endHold ? `h:${endHold}` : '', String(now + this.deps.ttlMs), String(Math.max(this.deps.ttlMs, PROVISIONAL_LEASE_MS)));
  }
}
