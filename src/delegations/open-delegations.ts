import { addTo, countOf, idsOf, removeFrom, type IdIndex } from './id-index.js';
import { participantKeysOf, roomsOf, type Delegation, type DelegationState, type Dialect } from './model.js';
import { steadyRefreshIntervalMs, type MachineSettings } from './machine.js';
import { InternTable } from '../lib/intern-table.js';
import { HomeserverLoad } from './homeserver-load.js';
import { StringPool } from './string-pool.js';

/** Interned strings are swept after at least this many delegations ended (see `remove`). */
const SWEEP_AFTER_ENDED = 256;

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
    // Calls made as a user (application-service mode) are limited per user, not in the origin's one-address budget.
    if (!this.open.has(d.id) && !d.owner) this.load.track(this.originOf(d.homeserver), this.refreshRate(d.timeoutMs), d.lastRefreshAt !== null);
    this.open.set(d.id, d);
    for (const { room, identity } of participantKeysOf(d)) this.indexParticipant(room, identity, d.id, true);
    for (const room of roomsOf(d)) addTo(this.byRoom, room, d.id);
    this.updateWaiting(d);
    return d;
  }

  /** The delegation's new state, for the same participant (transitions never change who it is for). */
  replace(after: Delegation): void {
    const before = this.open.get(after.id);
    this.open.set(after.id, after);
    this.updateWaiting(after);
    // Admission counts a delegation for good from the first refresh its homeserver accepted (or no longer, when a
    // state the store refused is rolled back).
    if (before && !after.owner && (before.lastRefreshAt === null) !== (after.lastRefreshAt === null)) {
      this.load.confirm(after.id, this.originOf(after.homeserver), this.refreshRate(after.timeoutMs), after.lastRefreshAt !== null ? 1 : -1);
    }
  }

  remove(d: Delegation): void {
    // Counted as it was held: `d` may be a newer state whose first accepted refresh was never counted.
    const held = this.open.get(d.id);
    if (held && !held.owner) this.load.untrack(d.id, this.originOf(held.homeserver), this.refreshRate(held.timeoutMs), held.lastRefreshAt !== null);
    this.open.delete(d.id);
    this.waiting.delete(d.id);
    for (const { room, identity } of participantKeysOf(d)) this.indexParticipant(room, identity, d.id, false);
    for (const room of roomsOf(d)) removeFrom(this.byRoom, room, d.id);
    this.sweepWhenDue();
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

  /**
   * Forgets shared strings that no open delegation uses any more once as many delegations have ended as are open (at
   * least `SWEEP_AFTER_ENDED`): the walk over the open ones is spread over the ends, and what ended delegations leave
   * behind stays bounded.
   */
  private sweepWhenDue(): void {
    if (++this.endedSinceSweep < Math.max(SWEEP_AFTER_ENDED, this.open.size)) return;
    this.endedSinceSweep = 0;
    this.strings.sweep(() => this.open.values());
    const origins = this.open;
    this.origins.sweep(
      (function* () {
        for (const d of origins.values()) yield d.homeserver;
      })(),
    );
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
