import { DELEGATION_STATES, DIALECTS, SOURCE_ROUTES, type ActionKind, type Delegation, type DelegationSource } from './model.js';
import { IdSlots } from './id-slots.js';
import { ShortStrings } from './short-strings.js';
import { StringPool } from './string-pool.js';
import { TimeColumn } from './time-column.js';

const SOURCES = Object.keys(SOURCE_ROUTES) as DelegationSource[];
const PENDING: ReadonlyArray<ActionKind | null> = [null, 'leave', 'connection_lost'];
const STATE_NUMBER = new Map(DELEGATION_STATES.map((s, i) => [s, i]));
const DIALECT_NUMBER = new Map(DIALECTS.map((s, i) => [s, i]));
const SOURCE_NUMBER = new Map(SOURCES.map((s, i) => [s, i]));
const PENDING_NUMBER = new Map(PENDING.map((s, i) => [s, i]));


type Actions = Readonly<Delegation['actions']>;

/**
 * Open delegations as columns indexed by slot: times (`TimeColumn`) and counters in typed arrays, enums as bytes, repeated strings
 * as numbers into shared pools, and only the per-participant strings (id, identity, sid) as strings. About a fifth of
 * the memory of an object per delegation, and nothing for the garbage collector to trace but those strings. A
 * `Delegation` object is built when one is asked for (`read`), and written back into the columns (`write`): the
 * state machine stays a pure function of objects.
 */
export class DelegationColumns {
  private capacity = 0;
  private readonly freeSlots: number[] = [];
  /** Slots ever used; every occupied slot is below it. */
  private end = 0;
  /** Ids by slot and slots by id (our ids as their bytes). */
  private readonly ids = new IdSlots();
  /** Identities inline up to 47 characters: Element Call's (`@user:server:DEVICE`, or a 43-character hash). */
  private readonly identities = new ShortStrings(48);
  private readonly altIdentities: Array<string | null> = [];
  private readonly sids = new ShortStrings();
  /** Rare per delegation (ended ones carry the outcome; application-service ones an owner): kept aside. */
  private readonly outcomes = new Map<number, string>();
  private readonly owners = new Map<number, string>();

  private readonly createdAt = new TimeColumn();
  private readonly updatedAt = new TimeColumn();
  private readonly expiresAt = new TimeColumn();
  private readonly lastRefreshAt = new TimeColumn();
  private readonly nextRefreshAt = new TimeColumn();
  private readonly joinDeadline = new TimeColumn();
  private readonly graceDeadline = new TimeColumn();
  private readonly disconnectedAt = new TimeColumn();
  private readonly nextActionAt = new TimeColumn();
  private readonly timeoutMs = new TimeColumn();
  private refreshFailures = new Uint32Array(0);
  private actionFailures = new Uint32Array(0);
  private homeserver = new Uint32Array(0);
  private room = new Uint32Array(0);
  /** Room number + 1; 0 for none. */
  private altRoom = new Uint32Array(0);
  private actions = new Uint32Array(0);
  private state = new Uint8Array(0);
  private dialect = new Uint8Array(0);
  private source = new Uint8Array(0);
  private pendingAction = new Uint8Array(0);

  private readonly homeservers = new StringPool();
  private readonly rooms = new StringPool();
  private readonly actionPool = new StringPool<Actions>((key) => {
    const [leave, connection_lost] = key.split('\u0000') as [string, string];
    return Object.freeze({ leave, connection_lost });
  });

  get size(): number {
    return this.ids.size;
  }

  slotOf(id: string): number | undefined {
    return this.ids.slotOf(id);
  }

  idAt(slot: number): string | undefined {
    return this.ids.idAt(slot);
  }

  /** Occupied slots, in slot order. */
  *occupied(): Iterable<number> {
    for (let s = 0; s < this.end; s++) if (this.ids.has(s)) yield s;
  }

  /** Takes a slot for a new delegation and writes every field. */
  insert(d: Delegation): number {
    const slot = this.freeSlots.pop() ?? this.end++;
    if (slot >= this.capacity) this.grow(slot + 1);
    this.ids.set(d.id, slot);
    this.identities.set(slot, d.identity);
    this.altIdentities[slot] = d.altIdentity;
    this.homeserver[slot] = this.homeservers.acquire(d.homeserver);
    this.room[slot] = this.rooms.acquire(d.room);
    this.altRoom[slot] = d.altRoom === null ? 0 : this.rooms.acquire(d.altRoom) + 1;
    this.actions[slot] = this.actionPool.acquire(`${d.actions.leave}\u0000${d.actions.connection_lost}`);
    this.timeoutMs.set(slot, d.timeoutMs);
    this.dialect[slot] = DIALECT_NUMBER.get(d.dialect)!;
    this.source[slot] = SOURCE_NUMBER.get(d.source)!;
    this.createdAt.set(slot, d.createdAt);
    if (d.owner !== undefined) this.owners.set(slot, d.owner);
    this.write(slot, d);
    return slot;
  }

  /** Writes the fields a transition may change (who the delegation is for never changes). */
  write(slot: number, d: Delegation): void {
    this.sids.set(slot, d.sid);
    this.state[slot] = STATE_NUMBER.get(d.state)!;
    this.updatedAt.set(slot, d.updatedAt);
    this.expiresAt.set(slot, d.expiresAt);
    this.lastRefreshAt.set(slot, d.lastRefreshAt);
    this.nextRefreshAt.set(slot, d.nextRefreshAt);
    this.refreshFailures[slot] = d.refreshFailures;
    this.joinDeadline.set(slot, d.joinDeadline);
    this.graceDeadline.set(slot, d.graceDeadline);
    this.disconnectedAt.set(slot, d.disconnectedAt);
    this.pendingAction[slot] = PENDING_NUMBER.get(d.pendingAction)!;
    this.nextActionAt.set(slot, d.nextActionAt);
    this.actionFailures[slot] = d.actionFailures;
    if (d.outcome === null) this.outcomes.delete(slot);
    else this.outcomes.set(slot, d.outcome);
  }

  /** True when the slot holds exactly the changeable fields of `d`. */
  holds(slot: number, d: Delegation): boolean {
    return (
      this.sids.equals(slot, d.sid) &&
      DELEGATION_STATES[this.state[slot]!] === d.state &&
      this.updatedAt.value(slot) === d.updatedAt &&
      this.expiresAt.value(slot) === d.expiresAt &&
      this.lastRefreshAt.get(slot) === d.lastRefreshAt &&
      this.nextRefreshAt.get(slot) === d.nextRefreshAt &&
      this.refreshFailures[slot] === d.refreshFailures &&
      this.joinDeadline.get(slot) === d.joinDeadline &&
      this.graceDeadline.get(slot) === d.graceDeadline &&
      this.disconnectedAt.get(slot) === d.disconnectedAt &&
      PENDING[this.pendingAction[slot]!] === d.pendingAction &&
      this.nextActionAt.get(slot) === d.nextActionAt &&
      this.actionFailures[slot] === d.actionFailures &&
      (this.outcomes.get(slot) ?? null) === d.outcome
    );
  }

  /** The delegation in the slot, as a new object. */
  read(slot: number): Delegation {
    const altRoom = this.altRoom[slot]!;
    const owner = this.owners.get(slot);
    return {
      id: this.ids.idAt(slot)!,
      dialect: DIALECTS[this.dialect[slot]!]!,
      homeserver: this.homeservers.value(this.homeserver[slot]!),
      room: this.rooms.value(this.room[slot]!),
      identity: this.identities.get(slot)!,
      altIdentity: this.altIdentities[slot]!,
      altRoom: altRoom === 0 ? null : this.rooms.value(altRoom - 1),
      sid: this.sids.get(slot),
      actions: this.actionPool.value(this.actions[slot]!),
      timeoutMs: this.timeoutMs.value(slot),
      state: DELEGATION_STATES[this.state[slot]!]!,
      source: SOURCES[this.source[slot]!]!,
      createdAt: this.createdAt.value(slot),
      updatedAt: this.updatedAt.value(slot),
      expiresAt: this.expiresAt.value(slot),
      lastRefreshAt: this.lastRefreshAt.get(slot),
      nextRefreshAt: this.nextRefreshAt.get(slot),
      refreshFailures: this.refreshFailures[slot]!,
      joinDeadline: this.joinDeadline.get(slot),
      graceDeadline: this.graceDeadline.get(slot),
      disconnectedAt: this.disconnectedAt.get(slot),
      pendingAction: PENDING[this.pendingAction[slot]!]!,
      nextActionAt: this.nextActionAt.get(slot),
      actionFailures: this.actionFailures[slot]!,
      outcome: this.outcomes.get(slot) ?? null,
      ...(owner !== undefined ? { owner } : {}),
    };
  }

  /** Frees the slot (its number is reused) and the shared strings only it used. */
  delete(slot: number): void {
    if (!this.ids.has(slot)) return;
    this.ids.delete(slot);
    this.identities.set(slot, null);
    this.altIdentities[slot] = null;
    this.sids.set(slot, null);
    for (const times of this.times()) times.set(slot, null);
    this.outcomes.delete(slot);
    this.owners.delete(slot);
    this.homeservers.release(this.homeserver[slot]!);
    this.rooms.release(this.room[slot]!);
    if (this.altRoom[slot]! > 0) this.rooms.release(this.altRoom[slot]! - 1);
    this.actionPool.release(this.actions[slot]!);
    this.freeSlots.push(slot);
  }

  // Column readers for what is asked of every open delegation at once (metrics, the console, loading).
  stateAt(slot: number): Delegation['state'] {
    return DELEGATION_STATES[this.state[slot]!]!;
  }

  dialectAt(slot: number): Delegation['dialect'] {
    return DIALECTS[this.dialect[slot]!]!;
  }

  expiresAtOf(slot: number): number {
    return this.expiresAt.value(slot);
  }

  /** A room's number while some open delegation names it (own or legacy room). */
  roomNumberOf(room: string): number | undefined {
    return this.rooms.numberOf(room);
  }

  roomAt(slot: number): number {
    return this.room[slot]!;
  }

  /** The legacy room's number; the own room's when there is none. */
  altRoomOrRoomAt(slot: number): number {
    const alt = this.altRoom[slot]!;
    return alt === 0 ? this.room[slot]! : alt - 1;
  }

  hasAltRoom(slot: number): boolean {
    return this.altRoom[slot]! > 0;
  }

  identityAt(slot: number): string {
    return this.identities.get(slot)!;
  }

  /** True when the slot's identity is `identity` (compared in place). */
  hasIdentity(slot: number, identity: string): boolean {
    return this.identities.equals(slot, identity);
  }

  altIdentityAt(slot: number): string | null {
    return this.altIdentities[slot]!;
  }

  ownerAt(slot: number): string | undefined {
    return this.owners.get(slot);
  }

  homeserverAt(slot: number): string {
    return this.homeservers.value(this.homeserver[slot]!);
  }

  timeoutAt(slot: number): number {
    return this.timeoutMs.value(slot);
  }

  refreshedAt(slot: number): number | null {
    return this.lastRefreshAt.get(slot);
  }

  /** Rooms that open delegations name (own or legacy). */
  liveRooms(): Iterable<string> {
    return this.rooms.live();
  }

  /** Homeservers that open delegations name. */
  liveHomeservers(): Iterable<string> {
    return this.homeservers.live();
  }

  private times(): TimeColumn[] {
    return [this.createdAt, this.updatedAt, this.expiresAt, this.lastRefreshAt, this.nextRefreshAt, this.joinDeadline, this.graceDeadline, this.disconnectedAt, this.nextActionAt, this.timeoutMs];
  }

  private grow(min: number): void {
    const size = Math.max(min, this.capacity * 2, 1024);
    const u32 = (a: Uint32Array<ArrayBuffer>): Uint32Array<ArrayBuffer> => {
      const b = new Uint32Array(size);
      b.set(a);
      return b;
    };
    const u8 = (a: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> => {
      const b = new Uint8Array(size);
      b.set(a);
      return b;
    };
    this.createdAt.grow(size);
    this.updatedAt.grow(size);
    this.expiresAt.grow(size);
    this.lastRefreshAt.grow(size);
    this.nextRefreshAt.grow(size);
    this.joinDeadline.grow(size);
    this.graceDeadline.grow(size);
    this.disconnectedAt.grow(size);
    this.nextActionAt.grow(size);
    this.timeoutMs.grow(size);
    this.ids.grow(size);
    this.sids.grow(size);
    this.identities.grow(size);
    this.refreshFailures = u32(this.refreshFailures);
    this.actionFailures = u32(this.actionFailures);
    this.homeserver = u32(this.homeserver);
    this.room = u32(this.room);
    this.altRoom = u32(this.altRoom);
    this.actions = u32(this.actions);
    this.state = u8(this.state);
    this.dialect = u8(this.dialect);
    this.source = u8(this.source);
    this.pendingAction = u8(this.pendingAction);
    this.capacity = size;
  }
}
