import type { Logger } from 'pino';
import { limitExceeded } from '../errors.js';
import { clientKey, identityKey, type AdmissionRefusal, type ClusterLoad } from './homeserver-load.js';
import type { Dialect } from './model.js';
import type { Narrator } from './narrator.js';
import type { OpenDelegations } from './open-delegations.js';

export interface AdmissionLimits {
  maxPerIdentity: number;
  maxPerRoom: number;
  /** Calls per second each homeserver origin accepts from us (SIDECAR_HOMESERVER_RATE). */
  homeserverRate: number;
  /** Homeserver origins with open delegations at once (SIDECAR_MAX_HOMESERVER_ORIGINS); unbounded when absent. */
  maxHomeserverOrigins?: number;
}

/**
 * Share of a homeserver's rate that steady-state refreshes may take: the rest is for first refreshes, actions and
 * retries. Beyond it new delegations for that homeserver are refused rather than making every refresh late.
 */
export const REFRESH_CAPACITY_SHARE = 0.8;

/** How long a refused client is asked to wait before it tries again. */
const RETRY_AFTER_MS = 60_000;
/** A share held by unconfirmed delegations frees up within their lease. */
const SHARE_RETRY_AFTER_MS = 30_000;

const REFUSALS: Record<AdmissionRefusal, string> = {
  homeserver_full: 'This homeserver cannot take more delegations without refreshes running late',
  identity_share: 'This participant holds its share of this homeserver with delegations not yet accepted by it',
  client_share: 'This address holds its share of this homeserver with delegations not yet accepted by it',
  too_many_homeservers: 'Too many homeservers are in use; try again later',
};

export interface AdmissionRequest {
  dialect: Dialect;
  room: string;
  identity: string;
  homeserver: string;
  timeoutMs: number;
  /** The client's address (IPv6 counted by /64): its unconfirmed delegations may hold only a share of a homeserver. */
  client?: string | null | undefined;
  /** Made as this user (application-service mode): not under the origin's one-address budget. */
  owner?: string | null | undefined;
}

/** Whether one more delegation fits the limits per participant, per room and per homeserver origin. */
export class Admission {
  constructor(private readonly deps: { open: OpenDelegations; limits: AdmissionLimits; narrator: Narrator; logger: Logger; cluster?: ClusterLoad | null }) {}

  /**
   * Throws the refusal for a new delegation the limits do not admit. `sameParticipant`: how many open delegations
   * its participant keeps besides it. In a cluster, the homeserver's load is the cluster's, and the new delegation
   * `id` is held there (until its owner confirms or drops it) when it fits.
   */
  async check(req: AdmissionRequest, sameParticipant: number, id: string): Promise<void> {
    const { open, limits, narrator } = this.deps;
    if (sameParticipant >= limits.maxPerIdentity) {
      narrator.registration(req.dialect, 'limited');
      throw limitExceeded('Too many open delegations for this participant', RETRY_AFTER_MS);
    }
    if (open.countInRoom(req.room) >= limits.maxPerRoom) {
      narrator.registration(req.dialect, 'limited');
      throw limitExceeded('Too many open delegations in this room', RETRY_AFTER_MS);
    }
    // Calls made as a user are limited per user by the homeserver (or not at all): the origin's budget is the
    // one-address bucket of unauthenticated calls and does not apply.
    if (req.owner) return;
    const origin = open.originOf(req.homeserver);
    const load = this.loadRequest(req);
    let refusal = open.load.check(load);
    if (!refusal && this.deps.cluster) {
      const limitsOfCluster = { budget: limits.homeserverRate * REFRESH_CAPACITY_SHARE, identity: identityKey(origin, req.room, req.identity), client: clientKey(origin, load.client) };
      refusal = await this.deps.cluster.reserve(origin, id, load.load, limitsOfCluster);
    }
    if (refusal) {
      narrator.registration(req.dialect, refusal === 'homeserver_full' ? 'overloaded' : 'limited');
      this.deps.logger.warn({ refusal, homeserver_load: Number(open.load.loadOf(origin).toFixed(3)), rate: limits.homeserverRate }, 'new delegation refused by admission control');
      throw limitExceeded(REFUSALS[refusal], refusal === 'homeserver_full' || refusal === 'too_many_homeservers' ? RETRY_AFTER_MS : SHARE_RETRY_AFTER_MS);
    }
  }

  /** A new delegation, already open here, holds its load provisionally until its homeserver accepts a refresh. */
  hold(id: string, req: AdmissionRequest): void {
    if (req.owner) return;
    this.deps.open.load.hold(id, this.loadRequest(req));
  }

  /** Its first refresh was not accepted: it stops holding a share (here and in the cluster). */
  release(id: string, homeserver: string): void {
    this.deps.open.load.endHold(id, this.deps.open.originOf(homeserver));
  }

  private loadRequest(req: AdmissionRequest) {
    const { open } = this.deps;
    return { origin: open.originOf(req.homeserver), load: open.refreshRate(req.timeoutMs), room: req.room, identity: req.identity, client: req.client ?? null };
  }
}
