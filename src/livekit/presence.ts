/**
 * Which LiveKit session (sid) is each (room, identity)'s current one, for every participant the webhooks or the
 * RoomService report, delegated or not. A delegation registered after its participant joined binds to the session
 * found here, and events for a session that is no longer the identity's current one are recognised as stale.
 */
import type { Clock } from '../clock.js';
import type { Departure } from '../delegations/model.js';

export type PresenceVerdict = 'current' | 'stale';

/** How a session ended, kept so that a replica taking over a delegation can apply what it missed. */
export interface SessionEnd {
  sid: string;
  departure: Departure;
  at: number;
}

interface Entry {
  sid: string;
  active: boolean;
  /** When the current session joined LiveKit (ms, LiveKit's `joinedAtMs`), when known: orders sessions. */
  joinedAt: number | null;
  /** When the current session ended (ms), for pruning. */
  endedAt: number | null;
  /** Recently ended sessions of this identity, newest last, so late events for them are ignored. */
  ended: string[];
  /** How the most recent sessions ended (those we saw end), newest last. */
  ends: SessionEnd[];
}

const ENDED_SIDS_KEPT = 4;

function presenceKey(room: string, identity: string): string {
  return `${room}\u0000${identity}`;
}

export interface PresenceRetention {
  clock: Clock;
  /** How long an ended session is remembered (the contract asks for at least SIDECAR_JOIN_TIMEOUT_MS). */
  retentionMs: number;
}

export class PresenceTracker {
  private entries = new Map<string, Entry>();
  private byRoom = new Map<string, Set<string>>();
  /**
   * Ends in the order they were seen, as parallel arrays: each later end of a key queues it again, and a queued
   * end that no longer matches its entry (rejoined, or ended again later) is skipped when it reaches the head.
   */
  private endedKeys: string[] = [];
  private endedAts: number[] = [];
  private endedHead = 0;

  /** Without `retention`, ended sessions are forgotten only by explicit `prune` calls. */
  constructor(private readonly retention: PresenceRetention | null = null) {}

  /** A session became active. Returns `stale` when this sid already ended (a late or replayed join). */
  joined(room: string, identity: string, sid: string, joinedAt: number | null = null): PresenceVerdict {
    this.pruneExpired();
    const key = presenceKey(room, identity);
    const e = this.entries.get(key);
    if (e?.ended.includes(sid)) return 'stale';
    if (e && e.sid === sid) {
      e.active = true;
      e.endedAt = null;
      e.joinedAt ??= joinedAt;
      return 'current';
    }
    // A late webhook of an older session (its queue was held up while reconciliation already saw a newer one) must
    // not displace the newer session: LiveKit's joinedAt orders them.
    if (e && e.active && e.joinedAt !== null && joinedAt !== null && joinedAt < e.joinedAt) {
      pushEnded(e, sid);
      return 'stale';
    }
    if (e) pushEnded(e, e.sid);
    this.entries.set(key, { sid, active: true, joinedAt, endedAt: null, ended: e?.ended ?? [], ends: e?.ends ?? [] });
    this.indexRoom(room, key);
    return 'current';
  }

  /**
   * A session ended. `current` when it is the identity's current session, or when we know of no other active one
   * (a join we never saw); `stale` when it already ended or another session has replaced it.
   */
  departed(room: string, identity: string, sid: string, at: number, departure: Departure = 'connection_lost'): PresenceVerdict {
    this.pruneExpired();
    const key = presenceKey(room, identity);
    const e = this.entries.get(key);
    if (!e) {
      this.entries.set(key, { sid, active: false, joinedAt: null, endedAt: at, ended: [sid], ends: [{ sid, departure, at }] });
      this.indexRoom(room, key);
      this.queueEnd(key, at);
      return 'current';
    }
    if (e.ended.includes(sid)) return 'stale';
    if (e.sid !== sid && e.active) {
      pushEnded(e, sid);
      return 'stale';
    }
    e.sid = sid;
    e.active = false;
    e.endedAt = at;
    pushEnded(e, sid);
    pushEnd(e, { sid, departure, at });
    this.queueEnd(key, at);
    return 'current';
  }

  /** How a session ended, if we saw it end recently. */
  endOf(room: string, identity: string, sid: string): SessionEnd | null {
    return this.entries.get(presenceKey(room, identity))?.ends.find((x) => x.sid === sid) ?? null;
  }

  /** Every active session of the room ends (room_finished). Returns the identities that were active. */
  roomFinished(room: string, at: number): Array<{ identity: string; sid: string }> {
    this.pruneExpired();
    const ended: Array<{ identity: string; sid: string }> = [];
    for (const key of this.byRoom.get(room) ?? []) {
      const e = this.entries.get(key);
      if (!e || !e.active) continue;
      e.active = false;
      e.endedAt = at;
      pushEnded(e, e.sid);
      pushEnd(e, { sid: e.sid, departure: 'connection_lost', at });
      this.queueEnd(key, at);
      ended.push({ identity: key.slice(room.length + 1), sid: e.sid });
    }
    return ended;
  }

  activeSid(room: string, identity: string): string | null {
    const e = this.entries.get(presenceKey(room, identity));
    return e?.active ? e.sid : null;
  }

  /**
   * Forget sessions that ended before `before`, oldest end first. Ends are queued as they are seen, so an end that
   * arrived out of order waits behind a younger one: memory stays bounded by the ends of one retention period.
   */
  prune(before: number): void {
    while (this.endedHead < this.endedKeys.length && this.endedAts[this.endedHead]! < before) {
      const key = this.endedKeys[this.endedHead]!;
      const at = this.endedAts[this.endedHead]!;
      this.endedHead++;
      const e = this.entries.get(key);
      if (!e || e.active || e.endedAt !== at) continue;
      this.entries.delete(key);
      const room = key.slice(0, key.indexOf('\u0000'));
      const keys = this.byRoom.get(room);
      keys?.delete(key);
      if (keys && keys.size === 0) this.byRoom.delete(room);
    }
    if (this.endedHead > 1024 && this.endedHead * 2 > this.endedKeys.length) {
      this.endedKeys = this.endedKeys.slice(this.endedHead);
      this.endedAts = this.endedAts.slice(this.endedHead);
      this.endedHead = 0;
    }
  }

  get size(): number {
    return this.entries.size;
  }

  private pruneExpired(): void {
    if (this.retention) this.prune(this.retention.clock.now() - this.retention.retentionMs);
  }

  private queueEnd(key: string, at: number): void {
    this.endedKeys.push(key);
    this.endedAts.push(at);
  }

  private indexRoom(room: string, key: string): void {
    let keys = this.byRoom.get(room);
    if (!keys) this.byRoom.set(room, (keys = new Set()));
    keys.add(key);
  }
}

function pushEnd(e: Entry, end: SessionEnd): void {
  e.ends.push(end);
  if (e.ends.length > ENDED_SIDS_KEPT) e.ends.shift();
}

function pushEnded(e: Entry, sid: string): void {
  if (e.ended.includes(sid)) return;
  e.ended.push(sid);
  if (e.ended.length > ENDED_SIDS_KEPT) e.ended.shift();
}
