import type { Logger } from 'pino';
import { limitExceeded } from '../errors.js';
import type { Dialect } from './model.js';
import type { Narrator } from './narrator.js';
import type { OpenDelegations } from './open-delegations.js';

export interface AdmissionLimits {
  maxPerIdentity: number;
  maxPerRoom: number;
  /** Calls per second each homeserver origin accepts from us (SIDECAR_HOMESERVER_RATE). */
  homeserverRate: number;
}

/**
 * Share of a homeserver's rate that steady-state refreshes may take: the rest is for first refreshes, actions and
 * retries. Beyond it new delegations for that homeserver are refused rather than making every refresh late.
 */
const REFRESH_CAPACITY_SHARE = 0.8;

/** How long a refused client is asked to wait before it tries again. */
const RETRY_AFTER_MS = 60_000;

/** Whether one more delegation fits the limits per participant, per room and per homeserver origin. */
export class Admission {
  constructor(private readonly deps: { open: OpenDelegations; limits: AdmissionLimits; narrator: Narrator; logger: Logger }) {}

  /**
   * Throws the refusal for a new delegation the limits do not admit. `sameParticipant`: how many open delegations
   * its participant keeps besides it.
   */
  check(req: { dialect: Dialect; room: string; homeserver: string; timeoutMs: number }, sameParticipant: number): void {
    const { open, limits, narrator } = this.deps;
    if (sameParticipant >= limits.maxPerIdentity) {
      narrator.registration(req.dialect, 'limited');
      throw limitExceeded('Too many open delegations for this participant', RETRY_AFTER_MS);
    }
    if (open.countInRoom(req.room) >= limits.maxPerRoom) {
      narrator.registration(req.dialect, 'limited');
      throw limitExceeded('Too many open delegations in this room', RETRY_AFTER_MS);
    }
    const projected = open.load.projected(req.homeserver, req.timeoutMs);
    if (projected > limits.homeserverRate * REFRESH_CAPACITY_SHARE) {
      narrator.registration(req.dialect, 'overloaded');
      this.deps.logger.warn({ homeserver_load: Number(projected.toFixed(3)), rate: limits.homeserverRate }, 'homeserver at refresh capacity: new delegation refused');
      throw limitExceeded('This homeserver cannot take more delegations without refreshes running late', RETRY_AFTER_MS);
    }
  }
}
