import { addTo, countOf, idsOf, removeFrom, type IdIndex } from './id-index.js';
import { participantKeysOf, roomsOf, type Delegation, type DelegationState, type Dialect } from './model.js';
import { OriginLoad } from './origin-load.js';
import { StringPool } from './string-pool.js';

/**
 * The delegations this process acts on, and every index over them: by room, by participant, the ones waiting for
 * their participant's session, and the refresh load per homeserver origin. Synchronous and without I/O: what is in
 * here is what the engine decided, after the store took it.
 */
export class OpenDelegations {
  private readonly open = new Map<string, Delegation>();
  /** room -> identity -> delegation ids; nested so that no key string is built per delegation. */
  private readonly byParticipant = new Map<string, IdIndex>();
  private readonly byRoom: IdIndex = new Map();
  /** Before the first join, and in the grace after a lost connection. */
  private readonly waiting = new Set<string>();
  private readonly strings = new StringPool();
  readonly load: OriginLoad;

  constructor(refreshAt: number) {
    this.load = new OriginLoad(refreshAt);
  }

  get size(): number {
    return this.open.size;
  }

  get(id: string): Delegation | undefined {
    return this.open.get(id);
  }

  has(id: string): boolean {
    return this.open.has(id);
  }

  values(): IterableIterator<Delegation> {
    return this.open.values();
  }

  /** Starts holding a loaded or registered delegation (compacted in place); returns the held object. */
  add(loaded: Delegation): Delegation {
    const d = this.strings.compact(loaded);
    if (!this.open.has(d.id)) this.load.add(d);
    this.open.set(d.id, d);
    for (const { room, identity } of participantKeysOf(d)) this.indexParticipant(room, identity, d.id, true);
    for (const room of roomsOf(d)) addTo(this.byRoom, room, d.id);
    this.updateWaiting(d);
    return d;
  }

  /** The delegation's new state, for the same participant (transitions never change who it is for). */
  replace(after: Delegation): void {
    this.open.set(after.id, after);
    this.updateWaiting(after);
  }

  remove(d: Delegation): void {
    if (this.open.has(d.id)) this.load.remove(d);
    this.open.delete(d.id);
    this.waiting.delete(d.id);
    for (const { room, identity } of participantKeysOf(d)) this.indexParticipant(room, identity, d.id, false);
    for (const room of roomsOf(d)) removeFrom(this.byRoom, room, d.id);
  }

  ofParticipant(room: string, identity: string): string[] {
    const identities = this.byParticipant.get(room);
    return identities ? idsOf(identities, identity) : [];
  }

  /** Ids of the delegations whose participant may be in the room. */
  inRoom(room: string): string[] {
    return idsOf(this.byRoom, room);
  }

  countInRoom(room: string): number {
    return countOf(this.byRoom, room);
  }

  /** Rooms with open delegations (including Element Call's legacy rooms). */
  rooms(): string[] {
    return [...this.byRoom.keys()];
  }

  /** Delegations waiting for their participant's session. */
  awaitingSession(): Delegation[] {
    return [...this.waiting].map((id) => this.open.get(id)!).filter(Boolean);
  }

  *countByStateAndDialect(): Iterable<{ state: DelegationState; dialect: Dialect; count: number }> {
    const counts = new Map<string, number>();
    for (const d of this.open.values()) counts.set(`${d.state}|${d.dialect}`, (counts.get(`${d.state}|${d.dialect}`) ?? 0) + 1);
    for (const [k, count] of counts) {
      const [state, dialect] = k.split('|') as [DelegationState, Dialect];
      yield { state, dialect, count };
    }
  }

  private updateWaiting(d: Delegation): void {
    if (d.state === 'awaiting_join' || d.state === 'grace') this.waiting.add(d.id);
    else this.waiting.delete(d.id);
  }

  private indexParticipant(room: string, identity: string, id: string, add: boolean): void {
    let identities = this.byParticipant.get(room);
    if (add) {
      if (!identities) this.byParticipant.set(room, (identities = new Map()));
      addTo(identities, identity, id);
    } else if (identities) {
      removeFrom(identities, identity, id);
      if (identities.size === 0) this.byParticipant.delete(room);
    }
  }
}
