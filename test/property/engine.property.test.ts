import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock, type TimerHandle } from '../../src/clock.js';
import { DelegationEngine } from '../../src/delegations/engine.js';
import { isTerminal, type Delegation, type Dialect } from '../../src/delegations/model.js';
import { MatrixError } from '../../src/errors.js';
import type { CallResult, HomeserverCall, HomeserverClient } from '../../src/homeserver/client.js';
import type { HomeserverOutcome } from '../../src/homeserver/outcome.js';
import { Metrics } from '../../src/metrics.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { WebhookRecord } from '../../src/store/store.js';
import { fcParams, seededRandom } from './support.js';

/**
 * The real engine (real SQLite store, the real scheduler on a manual clock) against random interleavings of
 * webhooks, registrations, revocations, homeserver answers that arrive whenever the test says, and time.
 */

// The margin puts 120 s timeouts under the time_left policy and leaves 20 s and 60 s to the fraction that bounds it.
const SETTINGS = { reconnectGraceMs: 5_000, joinTimeoutMs: 30_000, refreshAt: 0.5, refreshMarginMs: 30_000 };
const LIMITS = { maxPerIdentity: 3, maxPerRoom: 8, homeserverRate: 1_000 };
const HOMESERVER = 'https://hs.example';
const ROOMS = ['room-a', 'room-b'];
const IDENTITIES = ['alice', 'bob', 'carol'];
const REASONS = [null, 'CLIENT_INITIATED', 'PARTICIPANT_REMOVED', 'ROOM_DELETED', 'SIGNAL_CLOSE', 'SERVER_SHUTDOWN', 'MIGRATION', 'DUPLICATE_IDENTITY', 'JOIN_FAILURE'];

type OutcomeKind = HomeserverOutcome['kind'];

type Command =
  | { kind: 'register'; who: number; room: number; dialect: Dialect; token: number; timeoutMs: number; replace: boolean }
  | { kind: 'revoke'; pick: number }
  | { kind: 'webhook'; event: 'participant_joined' | 'participant_left' | 'participant_connection_aborted'; who: number; room: number; sid: 'fresh' | 'current' | number; reason: number }
  | { kind: 'room_finished'; room: number }
  | { kind: 'answer'; pick: number; outcome: OutcomeKind; retryAfterMs: number | null }
  | { kind: 'advance'; ms: number }
  | { kind: 'restart' };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('register' as const),
      who: fc.nat(IDENTITIES.length - 1),
      room: fc.nat(ROOMS.length - 1),
      dialect: fc.constantFrom<Dialect>('futures', 'delayed_events'),
      token: fc.nat(9),
      timeoutMs: fc.constantFrom(20_000, 60_000, 120_000),
      replace: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('revoke' as const), pick: fc.nat() }) },
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('webhook' as const),
      event: fc.constantFrom('participant_joined' as const, 'participant_left' as const, 'participant_connection_aborted' as const),
      who: fc.nat(IDENTITIES.length - 1),
      room: fc.nat(ROOMS.length - 1),
      sid: fc.oneof(fc.constant('fresh' as const), fc.constant('current' as const), fc.constant('current' as const), fc.nat(5)),
      reason: fc.nat(REASONS.length - 1),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('room_finished' as const), room: fc.nat(ROOMS.length - 1) }) },
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('answer' as const),
      pick: fc.nat(),
      outcome: fc.constantFrom<OutcomeKind>('ok', 'ok', 'ok', 'retry', 'retry', 'finalised', 'permanent'),
      retryAfterMs: fc.option(fc.integer({ min: 0, max: 30_000 }), { nil: null }),
    }),
  },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('advance' as const), ms: fc.oneof(fc.integer({ min: 0, max: 3_000 }), fc.integer({ min: 0, max: 90_000 })) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'restart' as const }) },
);

/** A ManualClock that can say when its next timer is due, so time advances one timer at a time. */
class SteppingClock extends ManualClock {
  private readonly due = new Map<unknown, number>();

  override setTimeout(fn: () => void, ms: number): TimerHandle {
    const handle: TimerHandle = super.setTimeout(() => {
      this.due.delete(handle.id);
      fn();
    }, ms);
    this.due.set(handle.id, this.now() + Math.max(0, ms));
    return handle;
  }

  override clearTimeout(handle: TimerHandle): void {
    this.due.delete(handle.id);
    super.clearTimeout(handle);
  }

  nextDue(): number | null {
    let next: number | null = null;
    for (const at of this.due.values()) if (next === null || at < next) next = at;
    return next;
  }
}

interface PendingCall {
  seq: number;
  call: HomeserverCall;
  delegationId: string;
  issuedAt: number;
  resolve: (r: CallResult) => void;
}

const settle = async (): Promise<void> => {
  for (let i = 0; i < 8; i++) await new Promise<void>((r) => setImmediate(r));
};

const dbDir = mkdtempSync(join(tmpdir(), 'futures-sidecar-engine-prop-'));
afterAll(() => rmSync(dbDir, { recursive: true, force: true }));
const metrics = new Metrics();
const logger = pino({ level: 'silent' });
let runNumber = 0;

/** One run: the engine, its fakes, and what the run has seen so far. */
class World {
  readonly clock = new SteppingClock();
  readonly store: SqliteStore;
  engine!: DelegationEngine;
  readonly pending: PendingCall[] = [];
  readonly violations: string[] = [];
  private seq = 0;
  private readonly random: () => number;
  /** token -> delegation id, as registrations answered. */
  private readonly byToken = new Map<string, string>();
  readonly delegations = new Map<string, { room: string; identity: string }>();
  /** Delegations that reached a terminal state, with the step it was first seen. */
  private readonly terminalSince = new Map<string, number>();
  /** Delegations whose action was answered ok / finalised / permanent. */
  private readonly actionDone = new Set<string>();
  readonly okActions = new Map<string, number>();
  /** Delegations a fresh join found refreshing (and connected), with no departure since: no action may go out. */
  private readonly joinHolds = new Set<string>();
  /** Participants whose latest webhook is a fresh join. */
  private readonly present = new Set<string>();
  /** Per participant: sids seen, sids ended, the current one. */
  private readonly sessions = new Map<string, { seen: string[]; ended: Set<string>; current: string | null; active: boolean }>();
  private sidCounter = 0;
  step = 0;

  constructor(seed: number) {
    this.random = seededRandom(seed);
    this.store = new SqliteStore(join(dbDir, `run-${++runNumber}.db`));
  }

  async start(): Promise<void> {
    this.engine = this.newEngine();
    await this.engine.start();
  }

  private newEngine(): DelegationEngine {
    const homeservers = {
      call: (c: HomeserverCall) => this.onCall(c),
      limiterBacklog: () => 0,
      forgetOrigin: () => {},
      requiresAuth: () => false,
      close: async () => {},
    } as unknown as HomeserverClient;
    return new DelegationEngine({ store: this.store, homeservers, clock: this.clock, logger, metrics, settings: SETTINGS, limits: LIMITS, random: this.random });
  }

  private onCall(c: HomeserverCall): Promise<CallResult> {
    const id = this.byToken.get(`${c.dialect}:${c.token}`);
    if (!id) {
      this.violations.push(`a call for a token that was never delegated (${c.op})`);
      return new Promise(() => {});
    }
    const p = this.delegations.get(id)!;
    if (this.terminalSince.has(id)) this.violations.push(`${c.op} for ${id} after it became terminal at step ${this.terminalSince.get(id)}`);
    if (this.pending.some((x) => x.delegationId === id && x.call.op === c.op)) this.violations.push(`two ${c.op} calls in flight for ${id}`);
    if (c.op === 'action') {
      if (this.actionDone.has(id)) this.violations.push(`action for ${id} after its action was answered for good`);
      if (this.joinHolds.has(id)) this.violations.push(`action for ${id} while ${p.identity} is connected to ${p.room}`);
    }
    return new Promise((resolve) => this.pending.push({ seq: ++this.seq, call: c, delegationId: id, issuedAt: this.clock.now(), resolve }));
  }

  answer(index: number, kind: OutcomeKind, retryAfterMs: number | null): void {
    const [p] = this.pending.splice(index, 1);
    if (!p) return;
    let outcome: HomeserverOutcome;
    switch (kind) {
      case 'ok':
        outcome = { kind: 'ok', sentAt: p.issuedAt };
        break;
      case 'finalised':
        outcome = { kind: 'finalised', detail: '404_M_NOT_FOUND' };
        break;
      case 'retry':
        outcome = retryAfterMs === null ? { kind: 'retry', detail: 'status_503' } : { kind: 'retry', detail: 'rate_limited', retryAfterMs };
        break;
      case 'permanent':
        outcome = { kind: 'permanent', detail: 'M_FORBIDDEN' };
        break;
    }
    if (p.call.op === 'action' && kind !== 'retry') {
      this.actionDone.add(p.delegationId);
      if (kind === 'ok') this.okActions.set(p.delegationId, (this.okActions.get(p.delegationId) ?? 0) + 1);
    }
    p.resolve({ outcome, accessTokenRejected: false });
  }

  async run(cmd: Command): Promise<void> {
    this.step++;
    switch (cmd.kind) {
      case 'register':
        return this.register(cmd);
      case 'revoke': {
        const ids = [...this.delegations.keys()];
        if (ids.length === 0) return;
        const id = ids[cmd.pick % ids.length]!;
        const callsBefore = this.seq;
        const after = await this.engine.revoke(id);
        await settle();
        if (this.seq !== callsBefore) this.violations.push('revoking made a homeserver call');
        if (after && !isTerminal(after.state)) this.violations.push(`revoke left ${id} ${after.state}`);
        return;
      }
      case 'webhook':
        return this.webhook(cmd);
      case 'room_finished': {
        const room = ROOMS[cmd.room]!;
        for (const [id, p] of this.delegations) if (p.room === room) this.joinHolds.delete(id);
        for (const [key, s] of this.sessions) {
          if (!key.startsWith(`${room}\u0000`)) continue;
          this.present.delete(key);
          if (s.active && s.current) s.ended.add(s.current);
          s.active = false;
        }
        await this.engine.processWebhook(this.record('room_finished', room, null, null, null));
        await settle();
        return;
      }
      case 'answer':
        if (this.pending.length === 0) return;
        this.answer(cmd.pick % this.pending.length, cmd.outcome, cmd.retryAfterMs);
        await settle();
        return;
      case 'advance':
        return this.advance(cmd.ms);
      case 'restart':
        // A graceful restart: only with no call in flight (a call cut off by a crash is a separate case).
        if (this.pending.length > 0) return;
        await this.engine.drain(this.clock.now());
        this.engine = this.newEngine();
        await this.engine.start();
        await settle();
        return;
    }
  }

  private async register(cmd: Extract<Command, { kind: 'register' }>): Promise<void> {
    const token = `${cmd.dialect}-token-${cmd.token}`;
    const room = ROOMS[cmd.room]!;
    const identity = IDENTITIES[cmd.who]!;
    try {
      const { delegation } = await this.engine.register({
        dialect: cmd.dialect,
        homeserver: HOMESERVER,
        token,
        accessToken: cmd.dialect === 'delayed_events' ? 'syt_access' : null,
        timeoutMs: cmd.timeoutMs,
        actions: { leave: 'leave', connection_lost: 'connection_lost' },
        room,
        identity,
        source: 'api',
        replaceSameParticipant: cmd.replace,
      });
      this.byToken.set(`${cmd.dialect}:${token}`, delegation.id);
      this.delegations.set(delegation.id, { room, identity });
      if (this.present.has(participantKey(room, identity)) && delegation.state === 'connected') this.joinHolds.add(delegation.id);
    } catch (err) {
      if (!(err instanceof MatrixError) || (err.status !== 403 && err.status !== 429)) throw err;
    }
    await settle();
  }

  private async webhook(cmd: Extract<Command, { kind: 'webhook' }>): Promise<void> {
    const room = ROOMS[cmd.room]!;
    const identity = IDENTITIES[cmd.who]!;
    const key = participantKey(room, identity);
    let s = this.sessions.get(key);
    if (!s) this.sessions.set(key, (s = { seen: [], ended: new Set(), current: null, active: false }));
    let sid: string;
    if (cmd.sid === 'fresh' || s.seen.length === 0) sid = `PA_${++this.sidCounter}`;
    else if (cmd.sid === 'current') sid = s.current ?? s.seen[s.seen.length - 1]!;
    else sid = s.seen[cmd.sid % s.seen.length]!;
    if (!s.seen.includes(sid)) s.seen.push(sid);

    if (cmd.event === 'participant_joined') {
      const freshJoin = !s.ended.has(sid);
      if (freshJoin) {
        if (s.active && s.current && s.current !== sid) s.ended.add(s.current);
        s.current = sid;
        s.active = true;
      }
      const live = this.participantDelegations(room, identity).filter((d) => d.state === 'awaiting_join' || d.state === 'grace' || d.state === 'connected');
      await this.engine.processWebhook(this.record(cmd.event, room, identity, sid, null));
      await settle();
      if (freshJoin) {
        this.present.add(key);
        for (const d of live) {
          const now = this.engine.getOpen(d.id);
          if (now?.state === 'connected') this.joinHolds.add(d.id);
          else this.violations.push(`a fresh join left ${d.id} ${now?.state ?? 'closed'} instead of connected`);
        }
      } else this.present.delete(key);
      return;
    }
    this.present.delete(key);
    for (const [id, p] of this.delegations) if (p.room === room && p.identity === identity) this.joinHolds.delete(id);
    if (!(s.active && s.current !== sid) && !s.ended.has(sid)) {
      s.current = sid;
      s.active = false;
    }
    s.ended.add(sid);
    const reason = REASONS[cmd.reason]!;
    await this.engine.processWebhook(this.record(cmd.event, room, identity, sid, reason));
    await settle();
  }

  private participantDelegations(room: string, identity: string): Delegation[] {
    const out: Delegation[] = [];
    for (const [id, p] of this.delegations) {
      if (p.room !== room || p.identity !== identity) continue;
      const d = this.engine.getOpen(id);
      if (d) out.push(d);
    }
    return out;
  }

  private record(event: string, room: string, identity: string | null, sid: string | null, reason: string | null): WebhookRecord {
    const now = this.clock.now();
    return { id: `EV_${this.step}_${event}`, event, room, identity, sid, reason, createdAt: now, receivedAt: now };
  }

  async advance(ms: number): Promise<void> {
    const target = this.clock.now() + ms;
    for (let guard = 0; guard < 10_000; guard++) {
      const next = this.clock.nextDue();
      if (next === null || next > target) break;
      this.clock.advance(Math.max(0, next - this.clock.now()));
      await settle();
      this.observe();
    }
    this.clock.advance(Math.max(0, target - this.clock.now()));
    await settle();
  }

  /** Notes delegations that became terminal (the engine forgets them; the store keeps them). */
  async observeAll(): Promise<void> {
    for (const id of this.delegations.keys()) {
      if (this.terminalSince.has(id)) continue;
      const d = this.engine.getOpen(id) ?? (await this.store.getDelegation(id));
      if (d && isTerminal(d.state)) this.terminalSince.set(id, this.step);
    }
  }

  private observe(): void {
    for (const id of this.delegations.keys()) {
      if (!this.terminalSince.has(id) && !this.engine.getOpen(id)) this.terminalSince.set(id, this.step);
    }
  }

  async close(): Promise<void> {
    await this.engine.drain(this.clock.now());
    for (const p of this.pending.splice(0)) p.resolve({ outcome: { kind: 'retry', detail: 'closing' }, accessTokenRejected: false });
    await settle();
    await this.store.close();
  }
}

function participantKey(room: string, identity: string): string {
  return `${room}\u0000${identity}`;
}

describe('the delegation engine under random webhooks, API calls, homeserver answers and time', () => {
  it('never fires twice, never calls after revoke or a terminal state, never fires for a connected participant', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer(), fc.array(commandArb, { minLength: 10, maxLength: 80, size: 'max' }), async (seed, commands) => {
        const world = new World(seed);
        await world.start();
        try {
          for (const cmd of commands) {
            await world.run(cmd);
            await world.observeAll();
            expect(world.violations).toEqual([]);
          }
          // Wind down: every participant leaves for good, every call is answered ok, time runs out.
          for (const room of ROOMS) await world.run({ kind: 'room_finished', room: ROOMS.indexOf(room) });
          for (let i = 0; i < 50; i++) {
            while (world.pending.length > 0) {
              world.answer(0, 'ok', null);
              await settle();
            }
            await world.advance(SETTINGS.joinTimeoutMs);
            await world.observeAll();
          }
          expect(world.violations).toEqual([]);
          for (const [id, count] of world.okActions) expect(count, `successful actions for ${id}`).toBeLessThanOrEqual(1);
          for (const id of world.delegations.keys()) {
            const d = world.engine.getOpen(id) ?? (await world.store.getDelegation(id));
            expect(d && isTerminal(d.state), `${id} ends terminal, not ${d?.state}`).toBe(true);
          }
        } finally {
          await world.close();
        }
      }),
      fcParams({ numRuns: 100 }),
    );
  }, 20_000);
});
