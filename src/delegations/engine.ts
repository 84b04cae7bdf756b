import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import { forbidden, limitExceeded } from '../errors.js';
import type { HomeserverClient } from '../homeserver/client.js';
import { classifyDeparture } from '../livekit/classify.js';
import { PresenceTracker } from '../livekit/presence.js';
import type { Metrics } from '../metrics.js';
import { shardOf, type ShardOwnership } from '../store/shard-leases.js';
import { DuplicateTokenError, type FeedMessage, type Store, type WebhookRecord } from '../store/store.js';
import { RollingCount } from '../lib/rolling-count.js';
import { DEDUPE_WINDOW_MS } from '../livekit/webhook-intake.js';
import { Schedule } from './schedule.js';
import { nextDueAt, registerDelegation, transition, type DelegationEvent, type Effect, type MachineSettings } from './machine.js';
import { describeOutcome } from '../homeserver/outcome.js';
import { isTerminal, tokenKeyOf, type ActionKind, type Delegation, type DelegationSource, type DelegationState, type Dialect, type LifecycleChange, type LifecycleEvent } from './model.js';

export interface RegistrationRequest {
  dialect: Dialect;
  homeserver: string;
  token: string;
  accessToken: string | null;
  timeoutMs: number;
  actions: { leave: string; connection_lost: string };
  room: string;
  identity: string;
  altIdentity?: string | null;
  altRoom?: string | null;
  source: DelegationSource;
  /** Element Call semantics: a new delegation for the same (room, identity) replaces the old one. */
  replaceSameParticipant?: boolean;
}

/** One line of a delegation's history, for the operator console (never a secret). */
export interface HistoryEntry {
  at: number;
  what: string;
  state: DelegationState;
}

/** Per delegation, and how many delegations' histories are kept (the oldest are forgotten first). */
const HISTORY_ENTRIES = 50;
const HISTORY_DELEGATIONS = 20_000;

/** How replicas sharing a Redis store split the work (absent with SQLite: one process owns everything). */
export interface Coordination {
  ownership: ShardOwnership;
  announce(message: Exclude<FeedMessage, { kind: 'webhook' }>): Promise<void>;
}

/**
 * After a start or a takeover, deadlines that ran out (or are about to) while nobody was listening wait this long:
 * LiveKit retries a webhook that failed for about 15 s (1, 2, 4 and 8 s), so a rejoin within the grace that it
 * could not deliver during our restart still arrives, and is not answered with connection_lost.
 */
const SETTLE_AFTER_START_MS = 15_000;

/**
 * How long an ended session is remembered: the contract asks for at least the join timeout, and a webhook is
 * accepted up to the dedupe window after LiveKit created it, so a late join of an ended session is still known as
 * stale for as long as it can arrive.
 */
export function presenceRetentionMs(settings: MachineSettings): number {
  return Math.max(settings.joinTimeoutMs, DEDUPE_WINDOW_MS);
}

/** How long an API revoke waits for the owning replica to apply it. */
const REMOTE_REVOKE_WAIT_MS = 3_000;
/** A state change the store could not take is retried after this long. */
const STORE_RETRY_MS = 1_000;

export interface EngineLimits {
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

/**
 * Drives every open delegation: applies events through the pure state machine, persists each change before acting
 * on it, keeps one schedule for all timers, and carries out homeserver calls.
 */
export class DelegationEngine {
  private readonly open = new Map<string, Delegation>();
  /** room -> identity -> delegation ids; nested so that no key string is built per delegation. */
  private readonly byParticipant = new Map<string, IdIndex>();
  private readonly byRoom: IdIndex = new Map();
  private readonly awaiting = new Set<string>();
  /** Steady-state refresh calls per second each homeserver origin needs for its open delegations. */
  private readonly originLoad = new Map<string, number>();
  private readonly busy = new Map<string, { refresh: boolean; action: boolean }>();
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly listeners = new Set<(e: LifecycleEvent) => void>();
  private readonly histories = new Map<string, HistoryEntry[]>();
  /** Shared copies of strings that repeat across delegations (see `compact`). */
  private readonly interned = new Map<string, string>();
  private readonly internedActions = new Map<string, Readonly<Delegation['actions']>>();
  private readonly origins = new Map<string, string>();
  readonly presence: PresenceTracker;
  private readonly refreshesLastMinute = new RollingCount();
  private readonly actionsLastMinute = new RollingCount();
  private readonly schedule: Schedule;
  private stopping = false;

  constructor(
    private readonly deps: {
      store: Store;
      homeservers: HomeserverClient;
      clock: Clock;
      logger: Logger;
      metrics: Metrics;
      settings: MachineSettings;
      limits: EngineLimits;
      random?: () => number;
      coordination?: Coordination;
    },
  ) {
    this.schedule = new Schedule(deps.clock, (id) => this.onDue(id));
    this.presence = new PresenceTracker({ clock: deps.clock, retentionMs: presenceRetentionMs(deps.settings) });
    deps.metrics.attach({
      countByStateAndDialect: () => this.countByStateAndDialect(),
      smallestExpiryMarginSeconds: () => this.smallestExpiryMarginSeconds(),
      limiterBacklog: () => deps.homeservers.limiterBacklog(),
    });
  }

  onLifecycle(listener: (e: LifecycleEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Reloads open delegations; overdue refreshes and actions run at once. */
  async start(): Promise<void> {
    if (this.deps.coordination) return;
    const loaded = await this.deps.store.loadOpen();
    for (const d of loaded) this.track(this.settle(d));
    this.deps.logger.info({ open: loaded.length }, 'open delegations loaded');
  }

  get openCount(): number {
    return this.open.size;
  }

  getOpen(id: string): Delegation | undefined {
    return this.open.get(id);
  }

  /** What happened to a delegation, oldest first (kept in memory, bounded). */
  history(id: string): HistoryEntry[] {
    return [...(this.histories.get(id) ?? [])];
  }

  private note(d: Delegation, what: string): void {
    let h = this.histories.get(d.id);
    if (!h) {
      if (this.histories.size >= HISTORY_DELEGATIONS) this.histories.delete(this.histories.keys().next().value!);
      this.histories.set(d.id, (h = []));
    }
    h.push({ at: this.deps.clock.now(), what, state: d.state });
    if (h.length > HISTORY_ENTRIES) h.splice(0, h.length - HISTORY_ENTRIES);
  }

  async register(req: RegistrationRequest): Promise<{ delegation: Delegation; created: boolean }> {
    const tokenKey = tokenKeyOf(req.dialect, req.homeserver, req.token);
    const existing = await this.deps.store.findByTokenKey(tokenKey);
    if (existing) {
      if (existing.identity !== req.identity || existing.room !== req.room) {
        this.deps.metrics.registered.inc({ dialect: req.dialect, outcome: 'forbidden' });
        throw forbidden('This token was delegated by another participant');
      }
      this.deps.metrics.registered.inc({ dialect: req.dialect, outcome: 'existing' });
      return { delegation: this.open.get(existing.id) ?? existing, created: false };
    }
    const sameParticipant = this.participantDelegations(req.room, req.identity).map((id) => this.open.get(id)!).filter((d) => d.room === req.room && d.identity === req.identity);
    if (req.replaceSameParticipant) {
      for (const old of sameParticipant) await this.apply(old.id, { type: 'revoke' }, 'replaced by a new delegation for the same participant');
    } else if (sameParticipant.length >= this.deps.limits.maxPerIdentity) {
      this.deps.metrics.registered.inc({ dialect: req.dialect, outcome: 'limited' });
      throw limitExceeded('Too many open delegations for this participant', 60_000);
    }
    if (countOf(this.byRoom, req.room) >= this.deps.limits.maxPerRoom) {
      this.deps.metrics.registered.inc({ dialect: req.dialect, outcome: 'limited' });
      throw limitExceeded('Too many open delegations in this room', 60_000);
    }
    const origin = this.originOf(req.homeserver);
    const projected = (this.originLoad.get(origin) ?? 0) + this.refreshRate(req.timeoutMs);
    if (projected > this.deps.limits.homeserverRate * REFRESH_CAPACITY_SHARE) {
      this.deps.metrics.registered.inc({ dialect: req.dialect, outcome: 'overloaded' });
      this.deps.logger.warn({ homeserver_load: Number(projected.toFixed(3)), rate: this.deps.limits.homeserverRate }, 'homeserver at refresh capacity: new delegation refused');
      throw limitExceeded('This homeserver cannot take more delegations without refreshes running late', 60_000);
    }
    const now = this.deps.clock.now();
    const sid =
      this.presence.activeSid(req.room, req.identity) ??
      (req.altIdentity ? this.presence.activeSid(req.altRoom ?? req.room, req.altIdentity) : null);
    const t = registerDelegation(
      {
        id: `dg_${randomBytes(12).toString('base64url')}`,
        dialect: req.dialect,
        homeserver: req.homeserver,
        room: req.room,
        identity: req.identity,
        altIdentity: req.altIdentity ?? null,
        altRoom: req.altRoom ?? null,
        sid: null,
        actions: req.actions,
        timeoutMs: req.timeoutMs,
        source: req.source,
        createdAt: now,
      },
      this.ctx(),
      sid,
    );
    try {
      await this.deps.store.insertDelegation(t.delegation, { token: req.token, accessToken: req.accessToken }, tokenKey);
    } catch (err) {
      if (err instanceof DuplicateTokenError) return this.register(req);
      throw err;
    }
    this.deps.metrics.registered.inc({ dialect: req.dialect, outcome: 'created' });
    const coordination = this.deps.coordination;
    if (coordination && !coordination.ownership.owns(t.delegation.id)) {
      await coordination.announce({ kind: 'registered', id: t.delegation.id });
      this.note(t.delegation, `registered (${req.dialect}, timeout ${req.timeoutMs} ms), handed to the replica that owns its shard`);
      this.emit(null, t.delegation, t.changes, 'registered');
      return { delegation: t.delegation, created: true };
    }
    this.track(t.delegation);
    this.note(t.delegation, `registered (${req.dialect}, timeout ${req.timeoutMs} ms${sid ? ', participant already connected' : ''})`);
    this.emit(null, t.delegation, t.changes, 'registered');
    return { delegation: t.delegation, created: true };
  }

  /** Revokes without calling the homeserver; a terminal delegation is returned as it is. */
  async revoke(id: string): Promise<Delegation | undefined> {
    if (this.open.has(id)) return this.apply(id, { type: 'revoke' }, 'revoked');
    const stored = await this.deps.store.getDelegation(id);
    const coordination = this.deps.coordination;
    if (!stored || isTerminal(stored.state) || !coordination) return stored;
    // Another replica owns it: ask that one, and wait (bounded) to answer with the result.
    await coordination.announce({ kind: 'revoke', id });
    const deadline = this.deps.clock.now() + REMOTE_REVOKE_WAIT_MS;
    for (;;) {
      const d = await this.deps.store.getDelegation(id);
      if (!d || isTerminal(d.state) || this.deps.clock.now() >= deadline) return d;
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** A message from the replicated store's stream, in order with the webhooks. */
  async onFeed(m: FeedMessage): Promise<void> {
    if (m.kind === 'webhook') return this.processWebhook(m.record);
    if (!this.deps.coordination?.ownership.owns(m.id)) return;
    if (m.kind === 'revoke') {
      if (this.open.has(m.id)) await this.apply(m.id, { type: 'revoke' }, 'revoked (asked by another replica)');
      return;
    }
    if (this.open.has(m.id)) return;
    const d = await this.deps.store.getDelegation(m.id);
    if (d && !isTerminal(d.state)) {
      this.track(d);
      await this.catchUp(d.id);
    }
  }

  /** After a failed attempt to apply a webhook: bring the delegations it concerns up to date from presence. */
  async catchUpFor(rec: WebhookRecord): Promise<void> {
    const ids = rec.event === 'room_finished' ? (rec.room ? idsOf(this.byRoom, rec.room) : []) : rec.room && rec.identity ? this.participantDelegations(rec.room, rec.identity) : [];
    for (const id of ids) await this.catchUp(id);
  }

  /** Gives a just-loaded delegation's grace or join deadline time to hear what LiveKit retries after our restart. */
  private settle(d: Delegation): Delegation {
    const floor = this.deps.clock.now() + SETTLE_AFTER_START_MS;
    if (d.state === 'grace' && d.graceDeadline !== null && d.graceDeadline < floor) d.graceDeadline = floor;
    if (d.state === 'awaiting_join' && d.joinDeadline !== null && d.joinDeadline < floor) d.joinDeadline = floor;
    return d;
  }

  /** This replica now holds a shard's lease: take over its open delegations. */
  async gainShard(shard: number): Promise<void> {
    const loaded = await this.deps.store.loadOpen(shard);
    for (const d of loaded) if (!this.open.has(d.id)) this.track(this.settle(d));
    for (const d of loaded) await this.catchUp(d.id);
    this.deps.logger.info({ shard, open: loaded.length }, 'took over a shard');
  }

  /** The lease is gone: stop acting on that shard's delegations (their state stays in the store for the new owner). */
  loseShard(shard: number): void {
    let dropped = 0;
    for (const d of [...this.open.values()]) {
      if (shardOf(d.id) !== shard) continue;
      this.untrack(d);
      dropped++;
    }
    this.deps.logger.info({ shard, dropped }, 'gave up a shard');
  }

  /**
   * Applies what presence knows and a delegation's stored state does not yet reflect: a session that ended, or
   * joined, while another replica owned it (or before it was registered).
   */
  private async catchUp(id: string): Promise<void> {
    const d = this.open.get(id);
    if (!d) return;
    const pairs: Array<[string, string]> = [[d.room, d.identity]];
    if (d.altIdentity) pairs.push([d.altRoom ?? d.room, d.altIdentity]);
    if ((d.state === 'connected' || d.state === 'grace') && d.sid) {
      for (const [room, identity] of pairs) {
        const end = this.presence.endOf(room, identity, d.sid);
        if (end) {
          await this.apply(id, { type: 'departed', sid: d.sid, departure: end.departure, at: end.at }, 'catch-up: the session ended earlier');
          return;
        }
      }
    }
    for (const [room, identity] of pairs) {
      const sid = this.presence.activeSid(room, identity);
      if (sid && (d.state === 'awaiting_join' || d.state === 'grace' || (d.state === 'connected' && d.sid !== sid))) {
        await this.apply(id, { type: 'joined', sid }, 'catch-up: the participant is present');
        return;
      }
    }
  }

  async get(id: string): Promise<Delegation | undefined> {
    return this.open.get(id) ?? (await this.deps.store.getDelegation(id));
  }

  /**
   * Applies one recorded LiveKit webhook. Safe to run twice for the same record (transitions are idempotent). Every
   * in-memory change happens before the first await, so records started in arrival order take effect in that order
   * while their writes are committed together.
   */
  async processWebhook(rec: WebhookRecord): Promise<void> {
    const { room, identity, sid } = rec;
    if (rec.event === 'room_finished') {
      if (!room) return;
      this.presence.roomFinished(room, rec.receivedAt);
      await Promise.all(idsOf(this.byRoom, room).map((id) => this.apply(id, { type: 'room_finished', at: rec.receivedAt }, 'room finished')));
      return;
    }
    if (!room || !identity || !sid) return;
    if (rec.event === 'participant_joined') {
      await this.observePresent(room, identity, sid, 'participant_joined', rec.joinedAt ?? null);
      return;
    }
    if (rec.event === 'participant_left' || rec.event === 'participant_connection_aborted') {
      const departure = classifyDeparture(rec.event, rec.reason ?? undefined);
      if (this.presence.departed(room, identity, sid, rec.receivedAt, departure) === 'stale') return;
      const cause = `${rec.event} ${rec.reason ?? 'UNKNOWN_REASON'}`;
      await Promise.all(this.participantDelegations(room, identity).map((id) => this.apply(id, { type: 'departed', sid, departure, at: rec.receivedAt }, cause)));
    }
  }

  /**
   * A session of (room, identity) is present, as a webhook or LiveKit's RoomService says. Delegations waiting for
   * it connect; a delegation bound to an older session rebinds.
   */
  async observePresent(room: string, identity: string, sid: string, source: 'participant_joined' | 'reconcile' | 'join_poll', joinedAt: number | null = null): Promise<void> {
    if (this.presence.joined(room, identity, sid, joinedAt) === 'stale') return;
    await Promise.all(
      this.participantDelegations(room, identity).map(async (id) => {
        const d = this.open.get(id);
        if (!d) return;
        const correction = source === 'participant_joined' ? null : d.state === 'awaiting_join' ? 'joined' : d.state === 'grace' ? 'rejoined' : d.state === 'connected' && d.sid !== sid ? 'rebound' : null;
        const after = await this.apply(id, { type: 'joined', sid }, source);
        if (correction && after && after !== d) this.deps.metrics.reconcileCorrections.inc({ kind: correction });
      }),
    );
  }

  /** LiveKit's RoomService no longer lists a connected delegation's participant (twice in a row): a lost connection. */
  async observeAbsent(id: string): Promise<void> {
    const d = this.open.get(id);
    if (!d || d.state !== 'connected') return;
    const after = await this.apply(id, { type: 'departed', sid: d.sid, departure: 'connection_lost', at: this.deps.clock.now() }, 'reconcile: absent from LiveKit twice in a row');
    if (after && after.state !== d.state) this.deps.metrics.reconcileCorrections.inc({ kind: 'lost' });
  }

  /** Rooms with open delegations (including Element Call's legacy rooms). */
  openRooms(): string[] {
    return [...this.byRoom.keys()];
  }

  delegationsInRoom(room: string): Delegation[] {
    return idsOf(this.byRoom, room).map((id) => this.open.get(id)!).filter(Boolean);
  }

  /**
   * Delegations waiting for their participant's session: before the first join, and in the grace after a lost
   * connection (a rejoin whose webhook was lost would otherwise be seen only by the next reconcile cycle).
   */
  awaitingJoin(): Delegation[] {
    return [...this.awaiting].map((id) => this.open.get(id)!).filter(Boolean);
  }

  /** Stop starting work; wait for homeserver calls already in flight, at most until `deadline`. */
  async drain(deadline: number): Promise<void> {
    this.stopping = true;
    this.schedule.stop();
    const wait = Math.max(0, deadline - this.deps.clock.now());
    await Promise.race([
      Promise.allSettled([...this.inflight]),
      new Promise<void>((resolve) => {
        const h = this.deps.clock.setTimeout(resolve, wait);
        void Promise.allSettled([...this.inflight]).then(() => this.deps.clock.clearTimeout(h));
      }),
    ]);
  }

  /** Totals for the operator console. */
  stats(): { open: number; by_state: Record<string, number>; refreshes_last_minute: number; actions_last_minute: number; smallest_expiry_margin_seconds: number | null } {
    const byState: Record<string, number> = {};
    for (const d of this.open.values()) byState[d.state] = (byState[d.state] ?? 0) + 1;
    const now = this.deps.clock.now();
    const margin = this.smallestExpiryMarginSeconds();
    return {
      open: this.open.size,
      by_state: byState,
      refreshes_last_minute: this.refreshesLastMinute.total(now),
      actions_last_minute: this.actionsLastMinute.total(now),
      smallest_expiry_margin_seconds: Number.isFinite(margin) ? margin : null,
    };
  }

  /** Smallest time left before any open delegation's future would expire, in seconds (+Inf when none). */
  smallestExpiryMarginSeconds(): number {
    const now = this.deps.clock.now();
    let min = Infinity;
    for (const d of this.open.values()) if (d.state !== 'firing') min = Math.min(min, d.expiresAt - now);
    return min === Infinity ? Infinity : min / 1000;
  }

  private *countByStateAndDialect(): Iterable<{ state: DelegationState; dialect: Dialect; count: number }> {
    const counts = new Map<string, number>();
    for (const d of this.open.values()) counts.set(`${d.state}|${d.dialect}`, (counts.get(`${d.state}|${d.dialect}`) ?? 0) + 1);
    for (const [k, count] of counts) {
      const [state, dialect] = k.split('|') as [DelegationState, Dialect];
      yield { state, dialect, count };
    }
  }

  private participantDelegations(room: string, identity: string): string[] {
    const identities = this.byParticipant.get(room);
    return identities ? idsOf(identities, identity) : [];
  }

  private ctx() {
    return { now: this.deps.clock.now(), settings: this.deps.settings, random: this.deps.random ?? Math.random };
  }

  /** Steady-state refresh calls per second one delegation with this timeout needs. */
  private refreshRate(timeoutMs: number): number {
    return 1000 / (Math.max(0.05, this.deps.settings.refreshAt - 0.05) * timeoutMs);
  }

  /**
   * The in-memory form: strings many delegations share (homeserver, room, action names, enum values) are shared
   * instead of one copy per row.
   */
  private compact(d: Delegation): Delegation {
    const i = this.interned;
    const intern = (v: string): string => {
      const have = i.get(v);
      if (have !== undefined) return have;
      i.set(v, v);
      return v;
    };
    const actionsKey = `${d.actions.leave}\u0000${d.actions.connection_lost}`;
    let actions = this.internedActions.get(actionsKey);
    if (!actions) this.internedActions.set(actionsKey, (actions = Object.freeze({ ...d.actions })));
    // Loaded and registered objects are fresh, so they are compacted in place rather than copied.
    d.homeserver = intern(d.homeserver);
    d.room = intern(d.room);
    if (d.altRoom !== null) d.altRoom = intern(d.altRoom);
    d.state = intern(d.state) as Delegation['state'];
    d.dialect = intern(d.dialect) as Delegation['dialect'];
    d.source = intern(d.source) as Delegation['source'];
    if (d.pendingAction !== null) d.pendingAction = intern(d.pendingAction) as Delegation['pendingAction'];
    d.actions = actions;
    return d;
  }

  private originOf(homeserver: string): string {
    let origin = this.origins.get(homeserver);
    if (origin === undefined) this.origins.set(homeserver, (origin = new URL(homeserver).origin));
    return origin;
  }

  private addLoad(d: Delegation, sign: 1 | -1): void {
    const origin = this.originOf(d.homeserver);
    const next = (this.originLoad.get(origin) ?? 0) + sign * this.refreshRate(d.timeoutMs);
    if (next <= 1e-9) this.originLoad.delete(origin);
    else this.originLoad.set(origin, next);
  }

  private track(loaded: Delegation): void {
    const d = this.compact(loaded);
    if (!this.open.has(d.id)) this.addLoad(d, 1);
    this.open.set(d.id, d);
    this.indexParticipant(d.room, d.identity, d.id, true);
    addTo(this.byRoom, d.room, d.id);
    if (d.altIdentity) this.indexParticipant(d.altRoom ?? d.room, d.altIdentity, d.id, true);
    if (d.altRoom) addTo(this.byRoom, d.altRoom, d.id);
    this.reschedule(d);
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

  private untrack(d: Delegation): void {
    if (this.open.has(d.id)) this.addLoad(d, -1);
    this.open.delete(d.id);
    this.busy.delete(d.id);
    this.awaiting.delete(d.id);
    this.indexParticipant(d.room, d.identity, d.id, false);
    removeFrom(this.byRoom, d.room, d.id);
    if (d.altIdentity) this.indexParticipant(d.altRoom ?? d.room, d.altIdentity, d.id, false);
    if (d.altRoom) removeFrom(this.byRoom, d.altRoom, d.id);
    this.schedule.set(d.id, null);
  }

  private reschedule(d: Delegation): void {
    if (d.state === 'awaiting_join' || d.state === 'grace') this.awaiting.add(d.id);
    else this.awaiting.delete(d.id);
    this.schedule.set(d.id, this.stopping ? null : nextDueAt(d, this.busy.get(d.id)));
  }

  private onDue(id: string): void {
    if (this.stopping || !this.open.has(id)) return;
    const busy = this.busy.get(id) ?? { refresh: false, action: false };
    void this.apply(id, { type: 'tick', busy }, 'timer').catch((err) => this.deps.logger.error({ err, delegation_id: id }, 'tick failed'));
  }

  /** Runs one event through the machine, persists the result, then carries out its effects. */
  private async apply(id: string, event: DelegationEvent, cause: string): Promise<Delegation | undefined> {
    const before = this.open.get(id);
    if (!before) return this.deps.store.getDelegation(id);
    const t = transition(before, event, this.ctx());
    const after = t.delegation;
    if (after === before) {
      if (event.type !== 'tick' && event.type !== 'refresh_result' && event.type !== 'action_result') this.note(before, `${cause}: no change`);
      return before;
    }
    // Calls count as in flight from the moment they are decided, so that no timer decides them again while the
    // decision is being made durable.
    const busy = this.busyOf(id);
    for (const e of t.effects) busy[e.type] = true;
    this.open.set(id, after);
    if (isTerminal(after.state)) this.untrack(after);
    else this.reschedule(after);
    try {
      await this.deps.store.saveDelegation(after);
    } catch (err) {
      // Not durable, so not done: go back to the stored state and try again shortly.
      for (const e of t.effects) busy[e.type] = false;
      if (isTerminal(after.state)) this.track(before);
      else if (this.open.get(id) === after) this.open.set(id, before);
      if (this.open.has(id) && !this.stopping) this.schedule.set(id, this.deps.clock.now() + STORE_RETRY_MS);
      throw err;
    }
    if (event.type !== 'tick' || before.state !== after.state) {
      this.note(after, before.state === after.state ? `${cause}${t.reason ? `: ${t.reason}` : ''}` : `${cause}: ${before.state} -> ${after.state}${t.reason ? ` (${t.reason})` : ''}`);
    }
    this.emit(before, after, t.changes, t.reason ?? cause);
    for (const effect of t.effects) this.run(after, effect);
    return after;
  }

  private busyOf(id: string): { refresh: boolean; action: boolean } {
    let busy = this.busy.get(id);
    if (!busy) this.busy.set(id, (busy = { refresh: false, action: false }));
    return busy;
  }

  /** Carries out a decided call; `apply` already marked it in flight. */
  private run(d: Delegation, effect: Effect): void {
    const busy = this.busyOf(d.id);
    const kind = effect.type;
    if (this.stopping) {
      busy[kind] = false;
      return;
    }
    const p = (kind === 'refresh' ? this.doRefresh(d) : this.doAction(d, (effect as { action: ActionKind }).action))
      .then(
        () => false,
        (err: unknown) => {
          this.deps.logger.error({ err: { message: (err as Error).message }, delegation_id: d.id }, `${kind} failed without an answer; trying again shortly`);
          return true;
        },
      )
      .then((failed) => {
        busy[kind] = false;
        this.inflight.delete(p);
        const current = this.open.get(d.id);
        if (!current) return;
        if (failed) this.schedule.set(d.id, this.stopping ? null : this.deps.clock.now() + STORE_RETRY_MS);
        else this.reschedule(current);
      });
    this.inflight.add(p);
  }

  private async doRefresh(d: Delegation): Promise<void> {
    const secrets = await this.deps.store.getSecrets(d.id);
    if (!secrets) throw new Error('delegation secrets missing from the store');
    const result = await this.deps.homeservers.call({
      op: 'refresh',
      dialect: d.dialect,
      baseUrl: d.homeserver,
      token: secrets.token,
      accessToken: secrets.accessToken,
      actionName: '',
      source: d.source,
      priority: { rank: 1, deadline: d.expiresAt },
    });
    if (result.accessTokenRejected) await this.deps.store.saveSecrets(d.id, { ...secrets, accessToken: null });
    this.deps.metrics.refreshes.inc({ outcome: outcomeLabel(result.outcome.kind) });
    this.refreshesLastMinute.add(this.deps.clock.now());
    this.note(d, `refresh answered: ${describeOutcome(result.outcome)}${result.accessTokenRejected ? ' (access token refused, continuing without it)' : ''}`);
    if (this.stopping && result.outcome.kind !== 'ok') return;
    await this.apply(d.id, { type: 'refresh_result', outcome: result.outcome }, 'refresh answered');
  }

  private async doAction(d: Delegation, action: ActionKind): Promise<void> {
    const secrets = await this.deps.store.getSecrets(d.id);
    if (!secrets) throw new Error('delegation secrets missing from the store');
    const result = await this.deps.homeservers.call({
      op: 'action',
      dialect: d.dialect,
      baseUrl: d.homeserver,
      token: secrets.token,
      accessToken: secrets.accessToken,
      actionName: d.actions[action],
      source: d.source,
      priority: { rank: 0, deadline: d.expiresAt },
    });
    if (result.accessTokenRejected) await this.deps.store.saveSecrets(d.id, { ...secrets, accessToken: null });
    const kind = result.outcome.kind;
    this.actionsLastMinute.add(this.deps.clock.now());
    this.note(d, `${action} (${d.dialect === 'futures' ? d.actions[action] : 'send'}) answered: ${describeOutcome(result.outcome)}`);
    this.deps.metrics.actions.inc({ action, outcome: kind === 'ok' ? 'sent' : kind === 'finalised' ? 'already_finalised' : outcomeLabel(kind) });
    const latest = this.open.get(d.id);
    if ((kind === 'ok' || kind === 'finalised') && latest?.disconnectedAt != null) {
      this.deps.metrics.disconnectToAction.observe({ action }, Math.max(0, this.deps.clock.now() - latest.disconnectedAt) / 1000);
    }
    await this.apply(d.id, { type: 'action_result', outcome: result.outcome }, 'action answered');
  }

  private emit(before: Delegation | null, after: Delegation, changes: LifecycleChange[], reason: string): void {
    if (!before || before.state !== after.state) {
      this.deps.logger.info(
        { delegation_id: after.id, from: before?.state ?? null, state: after.state, reason, ...(after.outcome ? { outcome: after.outcome } : {}) },
        'delegation state changed',
      );
    }
    for (const type of changes) {
      this.deps.metrics.lifecycle.inc({ change: type });
      const e: LifecycleEvent = { type, delegation_id: after.id, state: after.state, at: this.deps.clock.now(), ...(after.outcome && isTerminal(after.state) ? { outcome: after.outcome } : {}) };
      for (const l of this.listeners) l(e);
    }
  }
}

function outcomeLabel(kind: 'ok' | 'finalised' | 'retry' | 'permanent'): string {
  return { ok: 'ok', finalised: 'finalised', retry: 'retry', permanent: 'failed' }[kind];
}

/**
 * Indexes from a key to delegation ids. Most keys (a participant) have one delegation, so a lone id is stored as the
 * string itself and only several ids get a Set: at a million delegations a Set each would cost hundreds of MiB.
 */
type IdIndex = Map<string, string | Set<string>>;

function addTo(index: IdIndex, key: string, id: string): void {
  const cur = index.get(key);
  if (cur === undefined) index.set(key, id);
  else if (typeof cur === 'string') {
    if (cur !== id) index.set(key, new Set([cur, id]));
  } else cur.add(id);
}

function idsOf(index: IdIndex, key: string): string[] {
  const cur = index.get(key);
  return cur === undefined ? [] : typeof cur === 'string' ? [cur] : [...cur];
}

function countOf(index: IdIndex, key: string): number {
  const cur = index.get(key);
  return cur === undefined ? 0 : typeof cur === 'string' ? 1 : cur.size;
}

function removeFrom(index: IdIndex, key: string, id: string): void {
  const cur = index.get(key);
  if (cur === undefined) return;
  if (typeof cur === 'string') {
    if (cur === id) index.delete(key);
    return;
  }
  cur.delete(id);
  if (cur.size === 1) index.set(key, cur.values().next().value!);
  else if (cur.size === 0) index.delete(key);
}

