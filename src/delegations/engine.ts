import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { sleep, type Clock } from '../clock.js';
import { forbidden } from '../errors.js';
import type { CallResult, HomeserverClient } from '../homeserver/client.js';
import { classifyDeparture } from '../livekit/classify.js';
import { PresenceTracker } from '../livekit/presence.js';
import { DEDUPE_WINDOW_MS } from '../livekit/webhook-intake.js';
import type { Metrics } from '../metrics.js';
import { shardOf } from '../store/shard-leases.js';
import { DuplicateTokenError, type FeedMessage, type Store, type WebhookRecord } from '../store/store.js';
import { OWNS_EVERYTHING, type Ownership } from '../topology/topology.js';
import { Admission, REFRESH_CAPACITY_SHARE, type AdmissionLimits } from './admission.js';
import { EffectRunner } from './effect-runner.js';
import { DEFAULT_HISTORY_LIMITS, type HistoryEntry, type HistoryStore } from './history.js';
import { HistoryJournal } from './history-journal.js';
import { HomeserverLoad, type ClusterLoad } from './homeserver-load.js';
import { nextDueAt, registerDelegation, transition, type DelegationEvent, type Effect, type MachineSettings } from './machine.js';
import { isTerminal, participantKeysOf, tokenKeyOf, type Delegation, type DelegationSource, type Dialect, type LifecycleEvent } from './model.js';
import { Narrator } from './narrator.js';
import { OpenDelegations } from './open-delegations.js';
import { Schedule } from './schedule.js';

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
  /** The client's address (IPv6 counted by /64): its unconfirmed delegations may hold only a share of a homeserver. */
  client?: string | null;
  /** Application-service mode: the Matrix user the calls are made as (see `Delegation.owner`). */
  owner?: string | null;
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

/** How long an API revoke waits for the owning replica to apply it, and how often it looks. */
const REMOTE_REVOKE_WAIT_MS = 3_000;
const REMOTE_REVOKE_POLL_MS = 25;
/** A state change the store could not take, or a call that failed without an answer, is retried after this long. */
const RETRY_MS = 1_000;

export type EngineLimits = AdmissionLimits;

/**
 * Drives every open delegation: runs each event through the pure state machine, persists the result before acting
 * on it, keeps one schedule for all timers, and hands the decided calls to the effect runner. What it holds, how it
 * calls and how it tells are its parts': `OpenDelegations`, `EffectRunner`, `Narrator`, `Admission`.
 */
export class DelegationEngine {
  private readonly open: OpenDelegations;
  private readonly effects: EffectRunner;
  private readonly narrator: Narrator;
  private readonly admission: Admission;
  private readonly schedule: Schedule;
  private readonly ownership: Ownership;
  private readonly journal: HistoryJournal;
  readonly presence: PresenceTracker;
  private readonly joinListeners: Array<(room: string, identity: string) => void> = [];

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
      /** Which delegations this process acts on; all of them by default. */
      ownership?: Ownership;
      /** The console's history; bounded by the defaults when absent. */
      history?: HistoryStore;
      /** Replicas: the load of every origin across the cluster, which admission weighs new delegations against. */
      clusterLoad?: ClusterLoad | null;
    },
  ) {
    const { clock, logger, metrics, settings } = deps;
    this.ownership = deps.ownership ?? OWNS_EVERYTHING;
    const load = new HomeserverLoad({
      budget: deps.limits.homeserverRate * REFRESH_CAPACITY_SHARE,
      maxOrigins: deps.limits.maxHomeserverOrigins ?? Infinity,
      clock,
      // What the homeserver client keeps for an origin (limiter, dialect learnt) goes when no delegation uses it.
      onOriginIdle: (origin) => deps.homeservers.forgetOrigin(origin),
      cluster: deps.clusterLoad ?? null,
    });
    this.open = new OpenDelegations(settings, load);
    this.journal = new HistoryJournal({ store: deps.store, perDelegation: DEFAULT_HISTORY_LIMITS.perDelegation, logger });
    this.narrator = new Narrator({ clock, logger, metrics, journal: this.journal, ...(deps.history ? { history: deps.history } : {}) });
    this.admission = new Admission({ open: this.open, limits: deps.limits, narrator: this.narrator, logger, cluster: deps.clusterLoad ?? null });
    this.effects = new EffectRunner({
      store: deps.store,
      homeservers: deps.homeservers,
      clock,
      logger,
      isOpen: (id) => this.open.has(id),
      answered: (d, effect, result) => this.onAnswer(d, effect, result),
      settled: (id, failed) => this.onSettled(id, failed),
    });
    this.schedule = new Schedule(clock, (id) => this.onDue(id), this.open);
    this.presence = new PresenceTracker({ clock, retentionMs: presenceRetentionMs(settings) });
    if (settings.refreshMarginMs !== null) metrics.refreshMargin.set(settings.refreshMarginMs / 1000);
    metrics.attach({
      countByStateAndDialect: () => this.open.countByStateAndDialect(),
      smallestExpiryMarginSeconds: () => this.smallestExpiryMarginSeconds(),
      limiterBacklog: () => deps.homeservers.limiterBacklog(),
    });
  }

  onLifecycle(listener: (e: LifecycleEvent) => void): () => void {
    return this.narrator.onLifecycle(listener);
  }

  /** Loads every open delegation (a process that owns them all); overdue refreshes and actions run at once. */
  async start(): Promise<void> {
    const { store } = this.deps;
    // Row by row where the store can: no array of every open delegation on the way in.
    const source = store.eachOpen ? await store.eachOpen((d) => this.track(this.settle(d))) : undefined;
    if (!store.eachOpen) for (const d of await store.loadOpen()) this.track(this.settle(d));
    const refused = source?.snapshotRefused ? { snapshot_refused: source.snapshotRefused } : {};
    this.deps.logger.info({ open: this.open.size, from: source?.from ?? 'rows', ...refused }, 'open delegations loaded');
  }

  /** When the engine next looks at a held delegation (a refresh, an action, a deadline), or null. */
  dueAt(id: string): number | null {
    return this.schedule.dueAt(id);
  }

  /** Every delegation this process holds, each as a new object (for the store's snapshot at shutdown). */
  heldDelegations(): Iterable<Delegation> {
    return this.open.values();
  }

  /** This replica's confirmed load per homeserver origin (republished to the cluster). */
  confirmedLoad(): Iterable<[string, number]> {
    return this.open.load.confirmedByOrigin();
  }

  get openCount(): number {
    return this.open.size;
  }

  getOpen(id: string): Delegation | undefined {
    return this.open.get(id);
  }

  /** The console's history of recent delegations, bounded by count and bytes. */
  get histories(): HistoryStore {
    return this.narrator.history;
  }

  /**
   * What happened to a delegation, oldest first: from the store, which keeps it across restarts and takeovers
   * (bounded per delegation); from memory when the store has none (a write that failed).
   */
  async history(id: string): Promise<HistoryEntry[]> {
    await this.journal.flush();
    const stored = await this.deps.store.historyOf(id);
    return stored.length > 0 ? stored : this.narrator.historyOf(id);
  }

  async register(req: RegistrationRequest): Promise<{ delegation: Delegation; created: boolean }> {
    const tokenKey = tokenKeyOf(req.dialect, req.homeserver, req.token);
    const existing = await this.deps.store.findByTokenKey(tokenKey);
    if (existing) {
      if (existing.identity !== req.identity || existing.room !== req.room) {
        this.narrator.registration(req.dialect, 'forbidden');
        throw forbidden('This token was delegated by another participant');
      }
      this.narrator.registration(req.dialect, 'existing');
      return { delegation: this.open.get(existing.id) ?? existing, created: false };
    }
    const sameParticipant = await this.openOfParticipant(req.room, req.identity);
    if (req.replaceSameParticipant) {
      for (const old of sameParticipant) {
        if (this.open.has(old.id)) await this.apply(old.id, { type: 'revoke' }, 'replaced by a new delegation for the same participant');
        else await this.revoke(old.id);
      }
    }
    if (!req.owner && this.deps.homeservers.requiresAuth(req.homeserver)) {
      this.narrator.registration(req.dialect, 'forbidden');
      throw forbidden('This homeserver requires authentication to manage delayed events, which a standalone delegation cannot give; delegate through the homeserver (application-service mode)');
    }
    const id = `dg_${randomBytes(12).toString('base64url')}`;
    await this.admission.check(req, req.replaceSameParticipant ? 0 : sameParticipant.length, id);
    let sid: string | null = null;
    for (const { room, identity } of participantKeysOf(req)) sid ??= this.presence.activeSid(room, identity);
    const t = registerDelegation(
      {
        id,
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
        createdAt: this.deps.clock.now(),
        ...(req.owner ? { owner: req.owner } : {}),
      },
      this.ctx(),
      sid,
    );
    try {
      await this.deps.store.insertDelegation(t.delegation, { token: req.token, accessToken: req.accessToken }, tokenKey);
    } catch (err) {
      this.admission.release(id, req.homeserver);
      if (err instanceof DuplicateTokenError) return this.register(req);
      throw err;
    }
    this.narrator.registration(req.dialect, 'created');
    if (!this.ownership.owns(t.delegation.id)) {
      await this.ownership.announce({ kind: 'registered', id: t.delegation.id });
      this.narrator.changed(null, t.delegation, t.changes, 'registered', `registered (${req.dialect}, timeout ${req.timeoutMs} ms), handed to the replica that owns its shard`);
      return { delegation: t.delegation, created: true };
    }
    this.track(t.delegation);
    this.admission.hold(t.delegation.id, req);
    this.narrator.changed(null, t.delegation, t.changes, 'registered', `registered (${req.dialect}, timeout ${req.timeoutMs} ms${sid ? ', participant already connected' : ''})`);
    return { delegation: t.delegation, created: true };
  }

  /**
   * The open delegations of exactly this (room, identity): this process's, and in a cluster every replica's (from
   * the shared store, so a replacement or the per-participant cap sees delegations other replicas own).
   */
  private async openOfParticipant(room: string, identity: string): Promise<Delegation[]> {
    const local = this.open
      .ofParticipant(room, identity)
      .map((id) => this.open.get(id)!)
      .filter((d) => d.room === room && d.identity === identity);
    if (!this.ownership.shared) return local;
    const stored = await this.deps.store.openOfParticipant(room, identity);
    const ids = new Set(local.map((d) => d.id));
    return [...local, ...stored.filter((d) => !ids.has(d.id))];
  }

  /** Revokes without calling the homeserver; a terminal delegation is returned as it is. */
  async revoke(id: string): Promise<Delegation | undefined> {
    if (this.open.has(id)) return this.apply(id, { type: 'revoke' }, 'revoked');
    const stored = await this.deps.store.getDelegation(id);
    if (!stored || isTerminal(stored.state) || !this.ownership.shared) return stored;
    // Another replica owns it: ask that one, and wait (bounded) to answer with the result.
    await this.ownership.announce({ kind: 'revoke', id });
    const deadline = this.deps.clock.now() + REMOTE_REVOKE_WAIT_MS;
    for (;;) {
      const d = await this.deps.store.getDelegation(id);
      if (!d || isTerminal(d.state) || this.deps.clock.now() >= deadline) return d;
      await sleep(this.deps.clock, REMOTE_REVOKE_POLL_MS);
    }
  }

  /** A message from the replicated store's stream, in order with the webhooks. */
  async onFeed(m: FeedMessage): Promise<void> {
    if (m.kind === 'webhook') return this.processWebhook(m.record);
    if (!this.ownership.owns(m.id)) return;
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
    const ids = rec.event === 'room_finished' ? (rec.room ? this.open.inRoom(rec.room) : []) : rec.room && rec.identity ? this.open.ofParticipant(rec.room, rec.identity) : [];
    for (const id of ids) await this.catchUp(id);
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

  async get(id: string): Promise<Delegation | undefined> {
    return this.open.get(id) ?? (await this.deps.store.getDelegation(id));
  }

  /**
   * Applies one recorded LiveKit webhook. Safe to run twice for the same record (transitions are idempotent). Every
   * in-memory change happens before the first await, so records started in arrival order take effect in that order
   * while their writes are committed together. `replayed`: recorded by an earlier process and applied only now, so a
   * departure's grace gets the settling time a delegation loaded in grace gets (`settle`): counted from the receive
   * time alone it may have run out while no process was running, and a rejoin LiveKit retries after our restart
   * would come too late.
   */
  async processWebhook(rec: WebhookRecord, replayed = false): Promise<void> {
    const { room, identity, sid } = rec;
    if (rec.event === 'room_finished') {
      if (!room) return;
      this.presence.roomFinished(room, rec.receivedAt);
      await Promise.all(this.open.inRoom(room).map((id) => this.apply(id, { type: 'room_finished', at: rec.receivedAt }, 'room finished')));
      return;
    }
    if (!room || !identity || !sid) return;
    if (rec.event === 'participant_joined') {
      await this.observePresent(room, identity, sid, 'participant_joined', rec.joinedAt ?? null);
      for (const listener of this.joinListeners) listener(room, identity);
      return;
    }
    if (rec.event === 'participant_left' || rec.event === 'participant_connection_aborted') {
      const departure = classifyDeparture(rec.event, rec.reason ?? undefined);
      if (this.presence.departed(room, identity, sid, rec.receivedAt, departure) === 'stale') return;
      const cause = `${rec.event} ${rec.reason ?? 'UNKNOWN_REASON'}`;
      await Promise.all(this.open.ofParticipant(room, identity).map((id) => this.apply(id, { type: 'departed', sid, departure, at: rec.receivedAt }, replayed ? `${cause} (replayed after a restart)` : cause, replayed)));
    }
  }

  /**
   * A session of (room, identity) is present, as a webhook or LiveKit's RoomService says. Delegations waiting for
   * it connect; a delegation bound to an older session rebinds.
   */
  async observePresent(room: string, identity: string, sid: string, source: 'participant_joined' | 'reconcile' | 'join_poll', joinedAt: number | null = null): Promise<void> {
    if (this.presence.joined(room, identity, sid, joinedAt) === 'stale') return;
    await Promise.all(
      this.open.ofParticipant(room, identity).map(async (id) => {
        const d = this.open.get(id);
        if (!d) return;
        const correction = source === 'participant_joined' ? null : d.state === 'awaiting_join' ? 'joined' : d.state === 'grace' ? 'rejoined' : d.state === 'connected' && d.sid !== sid ? 'rebound' : null;
        const after = await this.apply(id, { type: 'joined', sid }, source);
        if (correction && after && (after.state !== d.state || after.sid !== d.sid)) this.narrator.correction(correction);
      }),
    );
  }

  /** Called after each participant_joined webhook is applied (application-service mode checks membership then). */
  onParticipantJoined(listener: (room: string, identity: string) => void): void {
    this.joinListeners.push(listener);
  }

  /** The participant was removed from the call on purpose (its user left the Matrix room): its delegations fire `leave`. */
  async removedFromCall(room: string, identity: string, cause: string): Promise<void> {
    const at = this.deps.clock.now();
    await Promise.all(this.open.ofParticipant(room, identity).map((id) => this.apply(id, { type: 'departed', sid: this.open.get(id)?.sid ?? null, departure: 'leave', at }, cause)));
  }

  /** LiveKit's RoomService no longer lists a connected delegation's participant (twice in a row): a lost connection. */
  async observeAbsent(id: string): Promise<void> {
    const d = this.open.get(id);
    if (!d || d.state !== 'connected') return;
    const after = await this.apply(id, { type: 'departed', sid: d.sid, departure: 'connection_lost', at: this.deps.clock.now() }, 'reconcile: absent from LiveKit twice in a row');
    if (after && after.state !== d.state) this.narrator.correction('lost');
  }

  /** Rooms with open delegations (including Element Call's legacy rooms). */
  openRooms(): string[] {
    return this.open.rooms();
  }

  delegationsInRoom(room: string): Delegation[] {
    return this.open
      .inRoom(room)
      .map((id) => this.open.get(id)!)
      .filter(Boolean);
  }

  /**
   * Delegations waiting for their participant's session: before the first join, and in the grace after a lost
   * connection (a rejoin whose webhook was lost would otherwise be seen only by the next reconcile cycle).
   */
  awaitingJoin(): Delegation[] {
    return this.open.awaitingSession();
  }

  /** Stop starting work; wait for homeserver calls already in flight, at most until `deadline`. */
  async drain(deadline: number): Promise<void> {
    const drained = this.effects.drain(deadline);
    this.schedule.stop();
    await drained;
    await this.journal.flush();
  }

  /** Totals for the operator console. */
  stats(): { open: number; by_state: Record<string, number>; refreshes_last_minute: number; actions_last_minute: number; smallest_expiry_margin_seconds: number | null } {
    const byState = this.open.countByState();
    const margin = this.smallestExpiryMarginSeconds();
    return {
      open: this.open.size,
      by_state: byState,
      refreshes_last_minute: this.narrator.refreshesInLastMinute(),
      actions_last_minute: this.narrator.actionsInLastMinute(),
      smallest_expiry_margin_seconds: Number.isFinite(margin) ? margin : null,
    };
  }

  /** Smallest time left before any open delegation's future would expire, in seconds (+Inf when none). */
  smallestExpiryMarginSeconds(): number {
    const earliest = this.open.earliestExpiry();
    return earliest === Infinity ? Infinity : (earliest - this.deps.clock.now()) / 1000;
  }

  /** Gives a just-loaded delegation's grace or join deadline time to hear what LiveKit retries after our restart. */
  private settle(d: Delegation): Delegation {
    const floor = this.deps.clock.now() + SETTLE_AFTER_START_MS;
    if (d.state === 'grace' && d.graceDeadline !== null && d.graceDeadline < floor) d.graceDeadline = floor;
    if (d.state === 'awaiting_join' && d.joinDeadline !== null && d.joinDeadline < floor) d.joinDeadline = floor;
    return d;
  }

  /**
   * Applies what presence knows and a delegation's stored state does not yet reflect: a session that ended, or
   * joined, while another replica owned it (or before it was registered).
   */
  private async catchUp(id: string): Promise<void> {
    const d = this.open.get(id);
    if (!d) return;
    const keys = participantKeysOf(d);
    if ((d.state === 'connected' || d.state === 'grace') && d.sid) {
      for (const { room, identity } of keys) {
        const end = this.presence.endOf(room, identity, d.sid);
        if (end) {
          await this.apply(id, { type: 'departed', sid: d.sid, departure: end.departure, at: end.at }, 'catch-up: the session ended earlier');
          return;
        }
      }
    }
    for (const { room, identity } of keys) {
      const sid = this.presence.activeSid(room, identity);
      if (sid && (d.state === 'awaiting_join' || d.state === 'grace' || (d.state === 'connected' && d.sid !== sid))) {
        await this.apply(id, { type: 'joined', sid }, 'catch-up: the participant is present');
        return;
      }
    }
  }

  private ctx() {
    return { now: this.deps.clock.now(), settings: this.deps.settings, random: this.deps.random ?? Math.random };
  }

  private track(loaded: Delegation): void {
    this.reschedule(this.open.add(loaded));
  }

  private untrack(d: Delegation): void {
    // Unscheduled first: the schedule numbers delegations by their slot, which `remove` frees.
    this.schedule.set(d.id, null);
    this.open.remove(d);
    this.effects.forget(d.id);
  }

  private reschedule(d: Delegation): void {
    this.schedule.set(d.id, this.effects.stopping ? null : nextDueAt(d, this.effects.busyOf(d.id)));
  }

  private onDue(id: string): void {
    if (this.effects.stopping || !this.open.has(id)) return;
    const busy = this.effects.busyOf(id) ?? { refresh: false, action: false };
    void this.apply(id, { type: 'tick', busy }, 'timer').catch((err) => this.deps.logger.error({ err, delegation_id: id }, 'tick failed'));
  }

  private async onAnswer(d: Delegation, effect: Effect, result: CallResult): Promise<void> {
    this.narrator.answered(d, effect, result, this.open.get(d.id));
    if (effect.type === 'refresh' && result.outcome.kind !== 'ok') this.admission.release(d.id, d.homeserver);
    // A refresh that went wrong while stopping is left for the next process: it has the rest of the timeout.
    if (effect.type === 'refresh' && this.effects.stopping && result.outcome.kind !== 'ok') return;
    const event: DelegationEvent = effect.type === 'refresh' ? { type: 'refresh_result', outcome: result.outcome } : { type: 'action_result', outcome: result.outcome };
    await this.apply(d.id, event, `${effect.type} answered`);
  }

  private onSettled(id: string, failed: boolean): void {
    const current = this.open.get(id);
    if (!current) return;
    if (failed) this.schedule.set(id, this.effects.stopping ? null : this.deps.clock.now() + RETRY_MS);
    else this.reschedule(current);
  }

  /** Runs one event through the machine, persists the result, then carries out its effects. */
  private async apply(id: string, event: DelegationEvent, cause: string, settle = false): Promise<Delegation | undefined> {
    const before = this.open.get(id);
    if (!before) return this.deps.store.getDelegation(id);
    const t = transition(before, event, this.ctx());
    const after = settle && t.delegation !== before ? this.settle(t.delegation) : t.delegation;
    if (after === before) {
      if (event.type !== 'tick' && event.type !== 'refresh_result' && event.type !== 'action_result') this.narrator.note(before, `${cause}: no change`);
      return before;
    }
    this.effects.claim(id, t.effects);
    if (isTerminal(after.state)) this.untrack(after);
    else {
      this.open.replace(after);
      this.reschedule(after);
    }
    try {
      await this.deps.store.saveDelegation(after);
    } catch (err) {
      // Not durable, so not done: go back to the stored state and try again shortly.
      this.effects.release(id, t.effects);
      if (isTerminal(after.state)) this.track(before);
      else if (this.open.holds(after)) this.open.replace(before);
      if (this.open.has(id) && !this.effects.stopping) this.schedule.set(id, this.deps.clock.now() + RETRY_MS);
      throw err;
    }
    const what =
      event.type === 'tick' && before.state === after.state
        ? undefined
        : before.state === after.state
          ? `${cause}${t.reason ? `: ${t.reason}` : ''}`
          : `${cause}: ${before.state} -> ${after.state}${t.reason ? ` (${t.reason})` : ''}`;
    this.narrator.changed(before, after, t.changes, t.reason ?? cause, what);
    for (const effect of t.effects) this.effects.run(after, effect);
    return after;
  }
}
