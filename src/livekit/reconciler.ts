import { ParticipantInfo_State, type ParticipantInfo } from '@livekit/protocol';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { participantKeysOf, type Delegation } from '../delegations/model.js';
import { OriginLimiter } from '../homeserver/limiter.js';
import { joinedAtMs } from './classify.js';
import { liveKitFailure } from './failure.js';

/** The part of livekit-server-sdk's RoomServiceClient we use. */
export interface RoomLister {
  listParticipants(room: string): Promise<ParticipantInfo[]>;
  getParticipant(room: string, identity: string): Promise<ParticipantInfo>;
}

const POLL_FIRST_MS = 1_000;
const POLL_FACTOR = 1.5;
const POLL_MAX_MS = 60_000;
const POLL_TICK_MS = 1_000;
/** Calls per second to LiveKit's API, burst 5x: reconciliation must never load the SFU. */
const LIVEKIT_API_RATE = 50;
/** Room listings in flight at most: at the limiter's 50/s, enough for answers that take 1.2 s. */
const LISTING_WORKERS = 64;
const MISSES_FOR_LOST = 2;

interface Poll {
  nextAt: number;
  intervalMs: number;
  inFlight: boolean;
}

/**
 * Covers for lost webhooks (contract section 3): every interval, the participants LiveKit's RoomService lists for each
 * room with open delegations are compared with what the webhooks said; a delegation still waiting for its join is
 * looked up with getParticipant on backoff. Only successful answers count: LiveKit being unreachable changes nothing.
 */
export class Reconciler {
  private readonly misses = new Map<string, number>();
  private readonly polls = new Map<string, Poll>();
  private readonly limiter: OriginLimiter;
  private cycleTimer: TimerHandle | null = null;
  private pollTimer: TimerHandle | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private lastErrorLog = 0;

  constructor(
    private readonly deps: {
      engine: DelegationEngine;
      rooms: RoomLister;
      clock: Clock;
      logger: Logger;
      intervalMs: number;
    },
  ) {
    this.limiter = new OriginLimiter(LIVEKIT_API_RATE, deps.clock);
  }

  start(): void {
    this.stopped = false;
    void this.runCycle();
    this.schedulePolls();
  }

  stop(): Promise<void> {
    this.stopped = true;
    if (this.cycleTimer) this.deps.clock.clearTimeout(this.cycleTimer);
    if (this.pollTimer) this.deps.clock.clearTimeout(this.pollTimer);
    this.limiter.close();
    return this.running ?? Promise.resolve();
  }

  /** One comparison of every room with open delegations against LiveKit's list. */
  async cycle(): Promise<void> {
    const { engine } = this.deps;
    const rooms = engine.openRooms();
    const listed = new Map<string, Map<string, { sid: string; joinedAt: number | null }>>();
    // A fixed number of workers take the rooms in turn (the limiter sets the pace): one waiting call per room held a
    // closure, a promise and a generator per room, about 80 MiB at 100,000 rooms for the whole of a 30-minute cycle.
    const listRoom = async (room: string): Promise<void> => {
      await this.limiter.acquire({ rank: 1, deadline: 0 });
      if (this.stopped) return;
      try {
        const participants = await this.deps.rooms.listParticipants(room);
        const present = new Map<string, { sid: string; joinedAt: number | null }>();
        for (const p of participants) if (p.state !== ParticipantInfo_State.DISCONNECTED && p.identity && p.sid) present.set(p.identity, { sid: p.sid, joinedAt: joinedAtMs(p) });
        listed.set(room, present);
      } catch (err) {
        this.logError('listParticipants failed', err);
      }
    };
    let next = 0;
    const listNext = async (): Promise<void> => {
      for (let room = rooms[next++]; room !== undefined && !this.stopped; room = rooms[next++]) await listRoom(room);
    };
    await Promise.all(Array.from({ length: Math.min(LISTING_WORKERS, rooms.length) }, listNext));
    if (this.stopped) return;
    for (const [room, present] of listed) {
      for (const [identity, p] of present) await engine.observePresent(room, identity, p.sid, 'reconcile', p.joinedAt);
    }
    const seen = new Set<string>();
    for (const room of listed.keys()) {
      for (const d of engine.delegationsInRoom(room)) {
        if (seen.has(d.id)) continue;
        seen.add(d.id);
        if (d.state !== 'connected') {
          this.misses.delete(d.id);
          continue;
        }
        const verdict = presenceIn(d, listed);
        if (verdict === 'unknown') continue;
        if (verdict === 'present') {
          this.misses.delete(d.id);
          continue;
        }
        const misses = (this.misses.get(d.id) ?? 0) + 1;
        this.misses.set(d.id, misses);
        if (misses >= MISSES_FOR_LOST) {
          this.misses.delete(d.id);
          await engine.observeAbsent(d.id);
        }
      }
    }
    for (const id of this.misses.keys()) if (!engine.getOpen(id)) this.misses.delete(id);
  }

  /** Looks up delegations waiting for a session (first join, or a rejoin within the grace) whose poll is due. */
  async pollAwaiting(): Promise<void> {
    const now = this.deps.clock.now();
    const awaiting = this.deps.engine.awaitingJoin();
    const ids = new Set(awaiting.map((d) => d.id));
    for (const id of this.polls.keys()) if (!ids.has(id)) this.polls.delete(id);
    const due: Delegation[] = [];
    for (const d of awaiting) {
      let poll = this.polls.get(d.id);
      if (!poll) this.polls.set(d.id, (poll = { nextAt: now + POLL_FIRST_MS, intervalMs: POLL_FIRST_MS, inFlight: false }));
      if (!poll.inFlight && poll.nextAt <= now) due.push(d);
    }
    await Promise.all(due.map((d) => this.pollOne(d)));
  }

  private async pollOne(d: Delegation): Promise<void> {
    const poll = this.polls.get(d.id);
    if (!poll) return;
    poll.inFlight = true;
    try {
      for (const { room, identity } of participantKeysOf(d)) {
        await this.limiter.acquire({ rank: 0, deadline: d.joinDeadline ?? 0 });
        if (this.stopped) return;
        try {
          const p = await this.deps.rooms.getParticipant(room, identity);
          // In the grace, LiveKit may still list the session that just dropped: only a new session is a rejoin.
          if (p.state !== ParticipantInfo_State.DISCONNECTED && p.sid && !(d.state === 'grace' && p.sid === d.sid)) {
            await this.deps.engine.observePresent(room, identity, p.sid, 'join_poll', joinedAtMs(p));
            this.polls.delete(d.id);
            return;
          }
        } catch (err) {
          if ((err as { status?: number }).status !== 404) this.logError('getParticipant failed', err);
        }
      }
      poll.intervalMs = Math.min(POLL_MAX_MS, poll.intervalMs * POLL_FACTOR);
      poll.nextAt = this.deps.clock.now() + poll.intervalMs;
    } finally {
      poll.inFlight = false;
    }
  }

  private runCycle(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.running = this.cycle()
      .catch((err) => this.deps.logger.error({ err }, 'reconciliation failed'))
      .finally(() => {
        this.running = null;
        if (!this.stopped) this.cycleTimer = this.deps.clock.setTimeout(() => void this.runCycle(), this.deps.intervalMs);
      });
    return this.running;
  }

  private schedulePolls(): void {
    if (this.stopped) return;
    this.pollTimer = this.deps.clock.setTimeout(() => {
      void this.pollAwaiting()
        .catch((err) => this.deps.logger.error({ err }, 'join polling failed'))
        .finally(() => this.schedulePolls());
    }, POLL_TICK_MS);
  }

  /** LiveKit being down must not flood the log: one line per minute. */
  private logError(what: string, err: unknown): void {
    const now = this.deps.clock.now();
    const level = now - this.lastErrorLog > 60_000 ? 'warn' : 'debug';
    if (level === 'warn') this.lastErrorLog = now;
    this.deps.logger[level](liveKitFailure(err), `${what}; LiveKit's answer is ignored until it succeeds`);
  }
}

/** Whether a delegation's participant is in LiveKit's lists: unknown unless every room it may be in was listed. */
function presenceIn(d: Delegation, listed: Map<string, Map<string, unknown>>): 'present' | 'absent' | 'unknown' {
  for (const { room, identity } of participantKeysOf(d)) {
    const present = listed.get(room);
    if (!present) return 'unknown';
    if (present.has(identity)) return 'present';
  }
  return 'absent';
}
