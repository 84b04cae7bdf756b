/**
 * MSC4195's "SHOULD" (contract section 8): a participant whose user is no longer joined to the Matrix room (left,
 * kicked, banned) is removed from the LiveKit room and its delegation fires `leave`. Checked with MSC4502's
 * `is_joined` when the participant joins and on a sweep. Every homeserver error fails open: nobody is removed because
 * the homeserver could not answer.
 */
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { PresenceTracker } from '../livekit/presence.js';
import type { Metrics } from '../metrics.js';

/** The part of LiveKit's RoomService that removes a participant. */
export interface ParticipantRemover {
  removeParticipant(room: string, identity: string): Promise<unknown>;
}

interface Tracked {
  matrixRoom: string;
  user: string;
  /** Last time a token was issued or a delegation made for it. */
  seenAt: number;
}

/** A token lives an hour: a participant tracked longer than that without being in the call will not join with it. */
const FORGET_AFTER_MS = 60 * 60_000;
/** How many tracked participants trigger a pass that forgets stale ones when no sweep runs. */
const PRUNE_EVERY = 4096;
/** `is_joined` questions one sweep asks at once. */
const SWEEP_CONCURRENCY = 8;

export class MembershipMonitor {
  /** `room\0identity` (LiveKit's names) -> whose Matrix membership decides. */
  private readonly tracked = new Map<string, Tracked>();
  private timer: ReturnType<Clock['setTimeout']> | null = null;
  private sweeping: Promise<void> | null = null;
  private recovering: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private readonly deps: {
      isJoined: (matrixRoom: string, user: string) => Promise<boolean>;
      remover: ParticipantRemover;
      /** The participant's delegations fire `leave`. */
      removed: (room: string, identity: string, cause: string) => Promise<void>;
      presence: Pick<PresenceTracker, 'activeSid'>;
      clock: Clock;
      logger: Logger;
      metrics: Metrics;
      /** 0: no sweep (participant_joined is still checked). */
      intervalMs: number;
      /** At start: the participants of delegations that outlived a restart, tracked again and swept at once. */
      recover?: () => Promise<Array<{ room: string; identity: string; matrixRoom: string; user: string }>>;
    },
  ) {}

  /** A token was issued or a delegation made: (room, identity) belongs to `user` in Matrix room `matrixRoom`. */
  track(room: string, identity: string, matrixRoom: string, user: string): void {
    const now = this.deps.clock.now();
    this.tracked.set(`${room}\u0000${identity}`, { matrixRoom, user, seenAt: now });
    // Without a sweep (interval 0) nothing else forgets: every so many tokens, the ones too old to be used go.
    if (this.tracked.size % PRUNE_EVERY === 0) {
      for (const [key, t] of this.tracked) if (now - t.seenAt > FORGET_AFTER_MS && this.deps.presence.activeSid(...(key.split('\u0000') as [string, string])) === null) this.tracked.delete(key);
    }
  }

  get trackedCount(): number {
    return this.tracked.size;
  }

  /** A participant joined: checked at once (MSC4195 asks to re-check on participant-joined webhooks). */
  onJoined(room: string, identity: string): void {
    const t = this.tracked.get(`${room}\u0000${identity}`);
    if (t) void this.check(room, identity, t);
  }

  start(): void {
    const recover = this.deps.recover;
    if (!recover) {
      if (this.deps.intervalMs > 0) this.schedule();
      return;
    }
    this.recovering = (async () => {
      try {
        const members = await recover();
        for (const m of members) this.track(m.room, m.identity, m.matrixRoom, m.user);
        if (members.length) this.deps.logger.info({ count: members.length }, 'memberships of delegations open before the restart tracked again');
        if (!this.stopped) await this.sweep();
      } catch (err) {
        this.deps.logger.warn({ reason: (err as Error).message }, 'memberships of open delegations not recovered; they are checked at their next token');
      }
      if (this.deps.intervalMs > 0) this.schedule();
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.recovering;
    if (this.timer) this.deps.clock.clearTimeout(this.timer);
    await this.sweeping;
  }

  /** One pass over every tracked participant that is in the call; at most one pass runs at a time. */
  async sweep(): Promise<void> {
    if (this.sweeping) return this.sweeping;
    this.sweeping = this.sweepOnce().finally(() => {
      this.sweeping = null;
    });
    return this.sweeping;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.deps.clock.setTimeout(() => {
      void this.sweep().finally(() => this.schedule());
    }, this.deps.intervalMs);
  }

  private async sweepOnce(): Promise<void> {
    const now = this.deps.clock.now();
    const present: Array<[string, string, Tracked]> = [];
    for (const [key, t] of this.tracked) {
      const [room, identity] = key.split('\u0000') as [string, string];
      if (this.deps.presence.activeSid(room, identity) !== null) present.push([room, identity, t]);
      else if (now - t.seenAt > FORGET_AFTER_MS) this.tracked.delete(key);
    }
    for (let i = 0; i < present.length; i += SWEEP_CONCURRENCY) {
      await Promise.all(present.slice(i, i + SWEEP_CONCURRENCY).map(([room, identity, t]) => this.check(room, identity, t)));
    }
  }

  private async check(room: string, identity: string, t: Tracked): Promise<void> {
    let joined: boolean;
    try {
      joined = await this.deps.isJoined(t.matrixRoom, t.user);
    } catch (err) {
      // Fail open: a homeserver that cannot answer removes nobody.
      this.deps.logger.warn({ reason: (err as Error).message }, 'membership check failed; the participant stays');
      this.deps.metrics.membershipChecks.inc({ outcome: 'error' });
      return;
    }
    if (joined) {
      this.deps.metrics.membershipChecks.inc({ outcome: 'joined' });
      return;
    }
    this.deps.metrics.membershipChecks.inc({ outcome: 'not_joined' });
    this.tracked.delete(`${room}\u0000${identity}`);
    try {
      await this.deps.remover.removeParticipant(room, identity);
    } catch (err) {
      const status = (err as { status?: number }).status;
      // Not found: already gone, which is what we wanted.
      if (status !== 404) this.deps.logger.warn({ status }, 'RemoveParticipant failed; the delegation fires leave anyway');
    }
    this.deps.logger.info({ room }, 'participant removed: its user is no longer joined to the Matrix room');
    await this.deps.removed(room, identity, 'user no longer joined to the Matrix room (MSC4502)');
  }
}
