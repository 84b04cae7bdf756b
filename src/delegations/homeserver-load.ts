import { isIP } from 'node:net';
import type { Clock } from '../clock.js';
import { ipv6Groups } from '../homeserver/address-guard.js';

/** Why a new delegation was refused: for the metric's outcome, the log line and the participant's error. */
export type AdmissionRefusal = 'homeserver_full' | 'identity_share' | 'client_share' | 'too_many_homeservers';

/**
 * How long a new delegation counts before the homeserver has accepted its first refresh. Its first refresh is due at
 * once; this covers the limiter's queue and the call's own timeout (10 s).
 */
export const PROVISIONAL_LEASE_MS = 30_000;
/** Of a homeserver's refresh budget, what one participant's, or one client address's, unconfirmed delegations may hold. */
export const IDENTITY_SHARE = 0.25;
export const CLIENT_SHARE = 0.5;

interface Hold {
  origin: string;
  load: number;
  identityKey: string;
  clientKey: string | null;
  until: number;
}

/**
 * The load of every replica of a cluster, per origin (replicas on Redis): admission then weighs a new delegation
 * against what the whole cluster refreshes, not only what this replica owns. Each replica publishes its confirmed
 * load per origin; a new delegation's provisional hold is kept there by id until its owner confirms or drops it.
 */
export interface ClusterLoad {
  /**
   * Atomically: when the cluster's load of `origin` plus `load` fits `budget`, and what the holder's participant and
   * client address hold across the cluster stays within their shares, holds `load` for delegation `id`.
   */
  reserve(origin: string, id: string, load: number, limits: ClusterLimits): Promise<AdmissionRefusal | null>;
  /** This replica now carries `confirmed` for `origin`; the hold of `endHold` (if any) goes in the same step. */
  publish(origin: string, confirmed: number, endHold?: string): void;
}

/** What a new delegation is weighed against in the cluster: the origin's budget and its holder's shares of it. */
export interface ClusterLimits {
  budget: number;
  identity: string;
  client: string | null;
}

interface OriginLoad {
  /** Refresh calls/s of open delegations the homeserver has accepted at least one refresh of. */
  confirmed: number;
  /** Of those it has not (yet): counted only under a lease. */
  provisional: number;
  open: number;
}

/**
 * The refresh load per homeserver origin that admission control weighs a new delegation against (contract section
 * 2), made hard to exhaust with delegations the homeserver
 * would never accept: a delegation counts for good only once its first refresh was accepted; before that it is held
 * provisionally, until its first answer or for `PROVISIONAL_LEASE_MS`, and one participant or one client address
 * (IPv6 by /64) may hold only a share of the budget that way. Also bounds how many origins are in use at once, and
 * says when an origin is no longer used so that what is kept for it can be released.
 */
export class HomeserverLoad {
  private readonly origins = new Map<string, OriginLoad>();
  /** Insertion order is lease order (all leases are equally long), so expired holds are at the front. */
  private readonly holds = new Map<string, Hold>();
  private readonly shares = new Map<string, number>();

  constructor(
    private readonly opts: {
      /** Steady-state refresh calls per second one origin may carry. */
      budget: number;
      maxOrigins: number;
      clock: Clock;
      onOriginIdle: (origin: string) => void;
      cluster?: ClusterLoad | null;
    },
  ) {}

  /** This replica's confirmed load per origin (what it republishes to the cluster). */
  *confirmedByOrigin(): Iterable<[string, number]> {
    for (const [origin, o] of this.origins) yield [origin, o.confirmed];
  }

  /** Load an origin carries now, counted and held (for metrics and tests). */
  loadOf(origin: string): number {
    this.expireHolds();
    const o = this.origins.get(origin);
    return o ? o.confirmed + o.provisional : 0;
  }

  get originsInUse(): number {
    return this.origins.size;
  }

  check(req: { origin: string; load: number; room: string; identity: string; client: string | null }): AdmissionRefusal | null {
    this.expireHolds();
    const o = this.origins.get(req.origin);
    if (!o && this.origins.size >= this.opts.maxOrigins) return 'too_many_homeservers';
    if ((o ? o.confirmed + o.provisional : 0) + req.load > this.opts.budget) return 'homeserver_full';
    // A share bounds what a holder adds on top of what it already holds: its first unconfirmed delegation is always
    // taken while the homeserver has room, even when one delegation alone is more than a share (Element Call's 10 s
    // delays cost 0.22 calls/s, more than a quarter of Synapse's default 1/s).
    if (exceedsShare(this.shares.get(identityKey(req.origin, req.room, req.identity)), req.load, this.opts.budget * IDENTITY_SHARE)) return 'identity_share';
    const client = clientKey(req.origin, req.client);
    if (client !== null && exceedsShare(this.shares.get(client), req.load, this.opts.budget * CLIENT_SHARE)) return 'client_share';
    return null;
  }

  /** A delegation is open in this process; `confirmed` when the homeserver has accepted a refresh of it. */
  track(origin: string, load: number, confirmed: boolean): void {
    let o = this.origins.get(origin);
    if (!o) this.origins.set(origin, (o = { confirmed: 0, provisional: 0, open: 0 }));
    o.open++;
    if (confirmed) {
      o.confirmed += load;
      this.opts.cluster?.publish(origin, o.confirmed);
    }
  }

  untrack(id: string, origin: string, load: number, confirmed: boolean): void {
    this.release(id);
    const o = this.origins.get(origin);
    if (!o) return;
    o.open--;
    if (confirmed) o.confirmed -= load;
    this.opts.cluster?.publish(origin, o.open <= 0 ? 0 : o.confirmed, id);
    if (o.open <= 0) {
      this.origins.delete(origin);
      this.opts.onOriginIdle(origin);
    }
  }

  /** A new delegation, tracked already, counts provisionally until `confirm`, `release` or its lease ends. */
  hold(id: string, req: { origin: string; load: number; room: string; identity: string; client: string | null }): void {
    const o = this.origins.get(req.origin);
    if (!o) return;
    const h: Hold = { origin: req.origin, load: req.load, identityKey: identityKey(req.origin, req.room, req.identity), clientKey: clientKey(req.origin, req.client), until: this.opts.clock.now() + PROVISIONAL_LEASE_MS };
    this.holds.set(id, h);
    o.provisional += h.load;
    this.addShare(h.identityKey, h.load);
    if (h.clientKey !== null) this.addShare(h.clientKey, h.load);
  }

  /** The homeserver accepted a refresh for the first time (or, with `sign` -1, that is undone). */
  confirm(id: string, origin: string, load: number, sign: 1 | -1 = 1): void {
    this.release(id);
    const o = this.origins.get(origin);
    if (!o) return;
    o.confirmed += sign * load;
    this.opts.cluster?.publish(origin, o.confirmed, id);
  }

  /** A delegation's first refresh was not accepted: its hold ends here and in the cluster. */
  endHold(id: string, origin: string): void {
    this.release(id);
    this.opts.cluster?.publish(origin, this.origins.get(origin)?.confirmed ?? 0, id);
  }

  /** Stops holding capacity for a delegation (its first refresh was not accepted, or it ended). */
  release(id: string): void {
    const h = this.holds.get(id);
    if (!h) return;
    this.holds.delete(id);
    const o = this.origins.get(h.origin);
    if (o) o.provisional = Math.max(0, o.provisional - h.load);
    this.addShare(h.identityKey, -h.load);
    if (h.clientKey !== null) this.addShare(h.clientKey, -h.load);
  }

  private addShare(key: string, load: number): void {
    const next = (this.shares.get(key) ?? 0) + load;
    if (next <= 1e-12) this.shares.delete(key);
    else this.shares.set(key, next);
  }

  private expireHolds(): void {
    const now = this.opts.clock.now();
    for (const [id, h] of this.holds) {
      if (h.until > now) break;
      this.release(id);
    }
  }
}

export function identityKey(origin: string, room: string, identity: string): string {
  return `${origin}\u0000i\u0000${room}\u0000${identity}`;
}

/** IPv6 clients are counted by /64, the block one subscriber usually gets, so they cannot pick a fresh address each time. */
export function clientKey(origin: string, client: string | null): string | null {
  if (!client) return null;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(client);
  const address = mapped ? mapped[1]! : client;
  const key = isIP(address) === 6 ? `${ipv6Groups(address.replace(/%.*$/, '')).slice(0, 4).map((g) => g.toString(16)).join(':')}::/64` : address;
  return `${origin}\u0000c\u0000${key}`;
}

function exceedsShare(held: number | undefined, load: number, share: number): boolean {
  return held !== undefined && held > 0 && held + load > share;
}
