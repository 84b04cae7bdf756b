import { type Delegation, type DelegationState, type Dialect } from './model.js';
import { steadyRefreshIntervalMs, type MachineSettings } from './machine.js';
import { InternTable } from '../lib/intern-table.js';
import { HomeserverLoad } from './homeserver-load.js';
import { DelegationColumns } from './delegation-columns.js';
import type { ScheduleSlots } from './schedule.js';
import { SlotLists } from './slot-lists.js';

/** Homeserver origins are swept after at least this many delegations ended (see `remove`). */
const SWEEP_AFTER_ENDED = 256;

/**
 * The delegations this process acts on, and every index over them: by room, by participant, the ones waiting for
 * their participant's session, and the refresh load per homeserver origin. Synchronous and without I/O: what is in
 * here is what the engine decided, after the store took it. Held as columns (`DelegationColumns`); `get` builds the
 * object, so two reads of one delegation are equal but not the same object. The slots also number the engine's
 * schedule.
 */
export class OpenDelegations implements ScheduleSlots {
  private readonly columns = new DelegationColumns();
  /**
   * Participants, by a hash of (room number, identity) into buckets that grow with the open set; link 0 is the own
   * participant, link 1 Element Call's legacy one. A lookup walks its bucket and compares the names.
   */
  private readonly byParticipant = new SlotLists();
  private participantBuckets = 0;
  private participantHash = new Uint32Array(0);
  /** Rooms by room number: link 0 the own room, link 1 the legacy room (when another). */
  private readonly byRoom = new SlotLists();
  /** Before the first join, and in the grace after a lost connection. */
  private readonly waiting = new Set<number>();
  private readonly origins = new InternTable<string>();
  private endedSinceSweep = 0;

  /**
   * `refresh`: the refresh policy (the machine's settings); `load` counts each open delegation's steady refresh rate
   * against its homeserver origin.
   */
  constructor(
    private readonly refresh: MachineSettings,
    readonly load: HomeserverLoad,
  ) {}

  /** Steady-state refresh calls per second one delegation with this timeout needs, under the machine's policy. */
  refreshRate(timeoutMs: number): number {
    return 1000 / steadyRefreshIntervalMs(timeoutMs, this.refresh);
  }

  originOf(homeserver: string): string {
    return this.origins.get(homeserver, (h) => new URL(h).origin);
  }

  get size(): number {
    return this.columns.size;
  }

  get(id: string): Delegation | undefined {
    const slot = this.columns.slotOf(id);
    return slot === undefined ? undefined : this.columns.read(slot);
  }

  has(id: string): boolean {
    return this.columns.slotOf(id) !== undefined;
  }

  /** True when `d` is what is held for its id (field by field: held delegations are not objects). */
  holds(d: Delegation): boolean {
    const slot = this.columns.slotOf(d.id);
    return slot !== undefined && this.columns.holds(slot, d);
  }

  *values(): Iterable<Delegation> {
    for (const slot of this.columns.occupied()) yield this.columns.read(slot);
  }

  // The schedule's numbering: a delegation's slot, for as long as it is held.
  claim(id: string): number {
    const slot = this.columns.slotOf(id);
    if (slot === undefined) throw new Error('only held delegations are scheduled');
    return slot;
  }

  slotOf(id: string): number | undefined {
    return this.columns.slotOf(id);
  }

  idAt(slot: number): string | undefined {
    return this.columns.idAt(slot);
  }

  release(): void {}

  /** Starts holding a loaded or registered delegation; returns it. */
  add(d: Delegation): Delegation {
    if (this.has(d.id)) {
      this.replace(d);
      return d;
    }
    // Calls made as a user (application-service mode) are limited per user, not in the origin's one-address budget.
    if (!d.owner) this.load.track(this.originOf(d.homeserver), this.refreshRate(d.timeoutMs), d.lastRefreshAt !== null);
    const slot = this.columns.insert(d);
    this.byRoom.link(this.columns.roomAt(slot), slot, 0);
    if (this.hasOwnAltRoom(slot)) this.byRoom.link(this.columns.altRoomOrRoomAt(slot), slot, 1);
    this.indexParticipant(slot, d.identity);
    this.updateWaiting(slot, d.state);
    return d;
  }

  /** The delegation's new state, for the same participant (transitions never change who it is for). */
  replace(after: Delegation): void {
    const slot = this.columns.slotOf(after.id);
    if (slot === undefined) return;
    const refreshedBefore = this.columns.refreshedAt(slot) !== null;
    this.columns.write(slot, after);
    this.updateWaiting(slot, after.state);
    // Admission counts a delegation for good from the first refresh its homeserver accepted (or no longer, when a
    // state the store refused is rolled back).
    if (!after.owner && refreshedBefore !== (after.lastRefreshAt !== null)) {
      this.load.confirm(after.id, this.originOf(after.homeserver), this.refreshRate(after.timeoutMs), after.lastRefreshAt !== null ? 1 : -1);
    }
  }

  remove(d: Delegation): void {
    const slot = this.columns.slotOf(d.id);
    if (slot === undefined) return;
    // Counted as it was held: `d` may be a newer state whose first accepted refresh was never counted.
    const homeserver = this.columns.homeserverAt(slot);
    if (!this.columns.ownerAt(slot)) this.load.untrack(d.id, this.originOf(homeserver), this.refreshRate(this.columns.timeoutAt(slot)), this.columns.refreshedAt(slot) !== null);
    this.waiting.delete(slot);
    this.byRoom.unlink(this.columns.roomAt(slot), slot, 0);
    if (this.hasOwnAltRoom(slot)) this.byRoom.unlink(this.columns.altRoomOrRoomAt(slot), slot, 1);
    const mask = this.participantBuckets - 1;
    this.byParticipant.unlink(this.participantHash[slot * 2]! & mask, slot, 0);
    if (this.columns.altIdentityAt(slot)) this.byParticipant.unlink(this.participantHash[slot * 2 + 1]! & mask, slot, 1);
    this.columns.delete(slot);
    this.sweepWhenDue();
  }

  ofParticipant(room: string, identity: string): string[] {
    const roomNo = this.columns.roomNumberOf(room);
    if (roomNo === undefined || this.participantBuckets === 0) return [];
    const slots: number[] = [];
    for (const e of this.byParticipant.entries(participantHashOf(roomNo, identity) & (this.participantBuckets - 1))) {
      const slot = e >> 1;
      const matches = (e & 1) === 0 ? this.columns.roomAt(slot) === roomNo && this.columns.hasIdentity(slot, identity) : this.columns.altRoomOrRoomAt(slot) === roomNo && this.columns.altIdentityAt(slot) === identity;
      if (matches && !slots.includes(slot)) slots.push(slot);
    }
    return this.idsAt(slots);
  }

  /** Ids of the delegations whose participant may be in the room. */
  inRoom(room: string): string[] {
    const roomNo = this.columns.roomNumberOf(room);
    return roomNo === undefined ? [] : this.idsAt([...this.byRoom.entries(roomNo)].map((e) => e >> 1));
  }

  countInRoom(room: string): number {
    const roomNo = this.columns.roomNumberOf(room);
    return roomNo === undefined ? 0 : this.byRoom.count(roomNo);
  }

  /** Rooms with open delegations (including Element Call's legacy rooms). */
  rooms(): string[] {
    return [...this.columns.liveRooms()];
  }

  /** Delegations waiting for their participant's session. */
  awaitingSession(): Delegation[] {
    return [...this.waiting].map((slot) => this.columns.read(slot));
  }

  *countByStateAndDialect(): Iterable<{ state: DelegationState; dialect: Dialect; count: number }> {
    const counts = new Map<string, number>();
    for (const slot of this.columns.occupied()) {
      const k = `${this.columns.stateAt(slot)}|${this.columns.dialectAt(slot)}`;
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    for (const [k, count] of counts) {
      const [state, dialect] = k.split('|') as [DelegationState, Dialect];
      yield { state, dialect, count };
    }
  }

  /** Open delegations per state. */
  countByState(): Record<string, number> {
    const byState: Record<string, number> = {};
    for (const slot of this.columns.occupied()) {
      const state = this.columns.stateAt(slot);
      byState[state] = (byState[state] ?? 0) + 1;
    }
    return byState;
  }

  /** The earliest time a future of a delegation not yet firing would expire (Infinity when none). */
  earliestExpiry(): number {
    let min = Infinity;
    for (const slot of this.columns.occupied()) if (this.columns.stateAt(slot) !== 'firing') min = Math.min(min, this.columns.expiresAtOf(slot));
    return min;
  }

  private idsAt(slots: number[]): string[] {
    return slots.map((slot) => this.columns.idAt(slot)!);
  }

  /**
   * Forgets origins that no open delegation uses any more once as many delegations have ended as are open (at least
   * `SWEEP_AFTER_ENDED`): what ended delegations leave behind stays bounded.
   */
  private sweepWhenDue(): void {
    if (++this.endedSinceSweep < Math.max(SWEEP_AFTER_ENDED, this.size)) return;
    this.endedSinceSweep = 0;
    this.origins.sweep(this.columns.liveHomeservers());
  }

  private updateWaiting(slot: number, state: DelegationState): void {
    if (state === 'awaiting_join' || state === 'grace') this.waiting.add(slot);
    else this.waiting.delete(slot);
  }

  /** The legacy room is linked when there is one and it is not the own room (a room lists a delegation once). */
  private hasOwnAltRoom(slot: number): boolean {
    return this.columns.hasAltRoom(slot) && this.columns.altRoomOrRoomAt(slot) !== this.columns.roomAt(slot);
  }

  private indexParticipant(slot: number, identity: string): void {
    if (slot * 2 + 1 >= this.participantHash.length) {
      const hashes = new Uint32Array(Math.max(2048, slot * 4 + 2));
      hashes.set(this.participantHash);
      this.participantHash = hashes;
    }
    this.participantHash[slot * 2] = participantHashOf(this.columns.roomAt(slot), identity);
    const alt = this.columns.altIdentityAt(slot);
    if (alt) this.participantHash[slot * 2 + 1] = participantHashOf(this.columns.altRoomOrRoomAt(slot), alt);
    // A rehash links every held slot, this one included.
    if (this.columns.size > this.participantBuckets) this.rehashParticipants();
    else this.linkParticipant(slot);
  }

  private linkParticipant(slot: number): void {
    const mask = this.participantBuckets - 1;
    this.byParticipant.link(this.participantHash[slot * 2]! & mask, slot, 0);
    if (this.columns.altIdentityAt(slot)) this.byParticipant.link(this.participantHash[slot * 2 + 1]! & mask, slot, 1);
  }

  /** More buckets as the open set grows (the lists stay about one entry long); every held slot is linked again. */
  private rehashParticipants(): void {
    this.participantBuckets = Math.max(1024, this.participantBuckets * 4);
    this.byParticipant.clear(this.participantBuckets);
    for (const slot of this.columns.occupied()) this.linkParticipant(slot);
  }
}

/** FNV-1a over the identity's UTF-16 units, seeded with the room number. */
function participantHashOf(room: number, identity: string): number {
  let h = (0x811c9dc5 ^ Math.imul(room + 1, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < identity.length; i++) h = Math.imul(h ^ identity.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
