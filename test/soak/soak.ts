import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFakeHomeserver, type CallRecord, type FakeHomeserver, type SentEvent } from '../fakes/homeserver.js';
import {
  WebhookSender,
  mintParticipantToken,
  newWebhookEventId,
  startFakeRoomService,
  type DisconnectReasonName,
  type FakeRoomService,
  type ParticipantStateName,
  type WebhookEventInput,
} from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, freePort, sleep } from '../helpers/daemon.js';
import { LiveKitChannel, type ChannelStats, type Delivery, type Fault } from './channel.js';
import { FULL_SOAK, makePlan, settleWindowMs, soakBoundMs, type Fate, type LifePlan, type Plan, type SoakOptions } from './plan.js';
import { Prng } from './prng.js';
import { DaemonSupervisor } from './supervisor.js';

export { SHORT_SOAK, type SoakOptions } from './plan.js';

type ActionKind = 'leave' | 'connection_lost';

/** One participant as the soak drives it: the plan, and the truth as it unfolded. */
interface Life {
  plan: LifePlan;
  faults: Prng;
  token: string | null;
  jwt: string | null;
  delegationId: string | null;
  notDelegated: string | null;
  sid: string | null;
  /** When the participant's session(s) finally ended; null while (or if) it stays. */
  departedAt: number | null;
  expected: ActionKind | null;
  finalWebhook: Delivery | null;
  deliveries: Delivery[];
  /** What happened, for the report of a violation. */
  timeline: string[];
}

interface Violation {
  kind: 'false_fire' | 'missed_refresh' | 'fired_twice' | 'departed_without_action' | 'not_delegated' | 'wrong_action';
  participant: number;
  detail: string;
}

export interface SoakReport {
  seed: number;
  options: SoakOptions;
  boundMs: number;
  durationMs: number;
  /** The hard bound cut the run short: the figures are incomplete. */
  aborted: boolean;
  participants: {
    total: number;
    delegated: number;
    futures: number;
    delayedEvents: number;
    fates: Record<Fate, number>;
    reconnects: number;
    duplicateIdentities: number;
    joinFirst: number;
  };
  leaves: { expected: number; fired: number; byReconciliation: number };
  connectionLost: { expected: number; fired: number; wrongKind: number };
  falseFires: number;
  missedRefreshes: number;
  firedTwice: number;
  departedWithoutAction: number;
  notDelegated: number;
  /** Action calls answered 404/409 after the action had already succeeded (a retry after a crash): the same firing. */
  repeatAfterSuccess: number;
  webhooks: ChannelStats;
  homeserver: {
    managementCalls: number;
    injected5xx: number;
    injected429: number;
    injectionEligible: number;
    refreshesOk: number;
    actionsOk: number;
    answered5xx: number;
    answered429: number;
    unreachable: number;
    outage: { fromS: number; toS: number } | null;
  };
  daemon: { kills: number; killsAtS: number[]; restarts: number; restartMs: number[]; unexpectedExits: string[]; exitCode: number | null; logFile: string };
  violations: Violation[];
  ok: boolean;
}

const SETTLE_POLL_MS = 500;
const DELEGATION_GIVE_UP_MS = 60_000;

/**
 * The soak of issue 4: many participants against a real daemon process, with LiveKit webhooks lost, duplicated and
 * reordered, a homeserver that fails and goes down, and the daemon SIGKILLed; judged by the homeserver's own record.
 */
export async function runSoak(input: Partial<SoakOptions> & { onProgress?: (line: string) => void } = {}): Promise<SoakReport> {
  const { onProgress, ...rest } = input;
  const o: SoakOptions = { ...FULL_SOAK, ...rest };
  const boundMs = soakBoundMs(o);
  const t0 = Date.now();
  const hardDeadline = t0 + boundMs;
  const plan = makePlan(o);
  const workDir = o.workDir ?? mkdtempSync(join(tmpdir(), 'futures-sidecar-soak-'));
  const logFile = join(workDir, 'daemon.log');
  const progress = onProgress ?? (() => undefined);

  const hs = await startFakeHomeserver();
  const rs = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
  const port = await freePort();
  const daemon = new DaemonSupervisor(
    {
      SIDECAR_STORE: `sqlite:${join(workDir, 'sidecar.db')}`,
      LIVEKIT_URL: o.livekitUrl ?? rs.url,
      SIDECAR_RECONCILE_INTERVAL_MS: String(o.reconcileIntervalMs),
      SIDECAR_RECONNECT_GRACE_MS: String(o.graceMs),
      SIDECAR_JOIN_TIMEOUT_MS: String(o.joinTimeoutMs),
      SIDECAR_HOMESERVER_RATE: String(o.homeserverRate),
      SIDECAR_MIN_TIMEOUT_MS: '1000',
      SIDECAR_MAX_DELEGATIONS_PER_ROOM: '100000',
      LOG_LEVEL: o.logLevel,
    },
    port,
    logFile,
  );
  const sender = new WebhookSender({ url: `${daemon.url}/livekit/webhook`, apiKey: API_KEY, apiSecret: API_SECRET });
  const channel = new LiveKitChannel(sender, { adversarial: o.adversarial, rng: new Prng(o.seed).fork(0x7fff_0002) });
  const lives: Life[] = plan.lives.map((p) => ({
    plan: p,
    faults: new Prng(p.faultSeed),
    token: null,
    jwt: null,
    delegationId: null,
    notDelegated: null,
    sid: null,
    departedAt: null,
    expected: null,
    finalWebhook: null,
    deliveries: [],
    timeline: [],
  }));
  const world = new World(o, plan, rs, channel, hs.url);
  const faults = new HomeserverFaults(hs, o, new Prng(o.seed).fork(0x7fff_0003));
  let aborted = false;
  let exitCode: number | null;
  let outage: { fromS: number; toS: number } | null = null;
  let phase = 'starting';
  const elapsedS = (at = Date.now()) => (at - t0) / 1000;
  const driveS = () => (Date.now() - world.driveStart) / 1000;
  const killsAtS: number[] = [];

  const progressTimer = setInterval(() => {
    daemon.flush();
    const arrived = lives.filter((l) => l.token !== null).length;
    const departed = lives.filter((l) => l.departedAt !== null).length;
    const fired = countFiredHandles(hs);
    const w = channel.stats;
    progress(
      `[soak ${elapsedS().toFixed(0).padStart(4)} s ${phase}] participants ${arrived}/${o.participants} arrived, ${world.inCall} in the call, ${departed} departed, ${fired} actions fired | webhooks ${w.emitted} (lost ${w.lost}, dup ${w.duplicated}, reordered ${w.reordered}, retried ${w.retried}, dropped by LiveKit ${w.droppedRetries + w.droppedAge + w.droppedDepth}) | homeserver ${faults.paused ? 'DOWN' : 'up'}, ${faults.injected5xx} 5xx, ${faults.injected429} 429 injected | daemon ${daemon.isUp ? 'up' : 'down'}, ${daemon.kills}/${o.kills} kills`,
    );
  }, o.progressEveryMs);
  progressTimer.unref();

  let abortResolve: () => void = () => undefined;
  const abortSignal = new Promise<void>((r) => (abortResolve = r));
  const watchdog = setTimeout(() => {
    aborted = true;
    world.stopped = true;
    abortResolve();
  }, Math.max(0, hardDeadline - Date.now() - 45_000));
  watchdog.unref();

  try {
    if (o.homeserverLimit) hs.setRateLimit(o.homeserverLimit);
    daemon.log(`soak seed ${o.seed}, ${o.participants} participants, bound ${Math.round(boundMs / 1000)} s`);
    await daemon.start();
    const driveStart = Date.now();
    world.driveStart = driveStart;
    phase = 'drive';
    faults.start();

    const driving = Promise.all([
      ...lives.map((l) => world.live(l, daemon.url, hs).catch((err: unknown) => {
        l.timeline.push(`harness error: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
        l.notDelegated ??= `harness error: ${err instanceof Error ? err.message : String(err)}`;
      })),
      (async () => {
        for (let i = 0; i < plan.killsAtMs.length; i++) {
          await sleepUntil(driveStart + plan.killsAtMs[i]!, () => world.stopped);
          if (world.stopped) return;
          if (o.snapshotBeforeKill) await snapshot(daemon, lives, world.driveStart);
          killsAtS.push(driveS());
          daemon.log(`soak: SIGKILL at ${driveS().toFixed(1)} s of the drive`);
          await daemon.killAndRestart(plan.killPausesMs[i]!);
        }
      })(),
      (async () => {
        if (o.outageMs <= 0) return;
        await sleepUntil(driveStart + o.outageAtMs, () => world.stopped);
        if (world.stopped) return;
        hs.setDown(true);
        faults.paused = true;
        const from = driveS();
        daemon.log(`soak: homeserver down at ${from.toFixed(1)} s of the drive`);
        await sleepUntil(Date.now() + o.outageMs, () => world.stopped);
        hs.setDown(false);
        faults.paused = false;
        outage = { fromS: from, toS: driveS() };
        daemon.log(`soak: homeserver up at ${outage.toS.toFixed(1)} s of the drive`);
      })(),
    ]);
    await Promise.race([driving, abortSignal]);
    faults.stop();

    phase = 'settle';
    const settle = settleWindowMs(o);
    const settleStart = Date.now();
    for (;;) {
      if (aborted) break;
      const elapsed = Date.now() - settleStart;
      const waiting = lives.filter((l) => l.departedAt !== null && l.token !== null && l.delegationId !== null && !hasAction(hs, l.token)).length;
      if (elapsed >= settle.min && waiting === 0 && channel.backlog === 0) break;
      if (elapsed >= settle.max) break;
      await sleep(SETTLE_POLL_MS);
    }

    phase = 'counting';
    const views = await daemonViews(daemon.url, lives, world.driveStart);
    phase = 'stopping';
    channel.close();
    exitCode = await daemon.stop();
    daemon.flush();
    return judge({ o, boundMs, t0, faults, killsAtS, driveStart: world.driveStart, aborted, lives, hs, channel, daemon, exitCode, outage, views, logFile });
  } finally {
    clearInterval(progressTimer);
    clearTimeout(watchdog);
    world.stopped = true;
    faults.stop();
    channel.close();
    await daemon.stop(5_000).catch(() => undefined);
    await rs.close().catch(() => undefined);
    await hs.close().catch(() => undefined);
  }
}

/** The SFU's side: rooms, sessions, what the RoomService lists, and the webhooks it queues. */
class World {
  stopped = false;
  driveStart = 0;
  inCall = 0;
  private readonly members = new Map<string, Set<string>>();
  private readonly roomGeneration = new Map<string, number>();
  private readonly roomFaults: Prng;
  private sidCounter = 0;
  /** When each session joined (ms), as LiveKit reports it in `joinedAt` of every later event about it. */
  private readonly sessionJoinedAt = new Map<string, number>();

  constructor(
    private readonly o: SoakOptions,
    plan: Plan,
    private readonly rs: FakeRoomService,
    private readonly channel: LiveKitChannel,
    private readonly hsUrl: string,
  ) {
    this.roomFaults = new Prng(o.seed).fork(0x7fff_0004);
    for (const room of plan.rooms) this.roomGeneration.set(room, 0);
  }

  async live(l: Life, daemonUrl: string, hs: FakeHomeserver): Promise<void> {
    const p = l.plan;
    await sleepUntil(this.driveStart + p.arriveAtMs, () => this.stopped);
    if (this.stopped) return;
    l.token = await createHomeserverToken(hs, p, this.o.timeoutMs);
    l.jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: p.identity, room: p.room, ttlSeconds: 6 * 3600 });
    this.note(l, `arrived (${p.dialect}, fate ${p.fate}${p.joinFirst ? ', joins before delegating' : ''})`);
    this.inCall++;
    if (p.joinFirst) this.connect(l);
    await this.delegate(l, daemonUrl);
    if (!l.delegationId) {
      this.note(l, `not delegated: ${l.notDelegated}`);
      return;
    }
    if (!p.joinFirst) {
      await sleep(p.joinDelayMs);
      this.connect(l);
    }
    const joinedAt = Date.now();
    if (p.fate === 'aborted') {
      await sleepUntil(joinedAt + p.lifeMs, () => this.stopped);
      if (this.stopped) return;
      this.depart(l, 'participant_connection_aborted', p.finalReason, 'connection_lost');
      return;
    }
    for (const it of p.interruptions) {
      await sleepUntil(joinedAt + it.atMs, () => this.stopped);
      if (this.stopped) return;
      const old = l.sid!;
      const next = this.newSid();
      if (it.kind === 'reconnect') {
        this.rsLeave(p.room, p.identity);
        this.webhook(l, 'participant_left', old, it.reason);
        this.note(l, `connection lost (${it.reason ?? 'UNKNOWN_REASON'}), back in ${it.gapMs} ms`);
        await sleep(it.gapMs);
        l.sid = next;
        this.rsJoin(p.room, p.identity, next, 'ACTIVE');
        this.webhook(l, 'participant_joined', next, null);
        this.note(l, `rejoined as ${next}`);
      } else {
        l.sid = next;
        this.rsJoin(p.room, p.identity, next, 'JOINING');
        this.webhook(l, 'participant_left', old, 'DUPLICATE_IDENTITY');
        this.note(l, `new session ${next} replaces ${old} (DUPLICATE_IDENTITY), active in ${it.gapMs} ms`);
        await sleep(it.gapMs);
        this.rsJoin(p.room, p.identity, next, 'ACTIVE');
        this.webhook(l, 'participant_joined', next, null);
      }
    }
    if (p.fate === 'stay') return;
    await sleepUntil(joinedAt + p.lifeMs, () => this.stopped);
    if (this.stopped) return;
    this.depart(l, 'participant_left', p.finalReason, p.fate === 'leave' ? 'leave' : 'connection_lost');
  }

  private connect(l: Life): void {
    const p = l.plan;
    l.sid = this.newSid();
    if (p.fate === 'aborted') {
      this.rsJoin(p.room, p.identity, l.sid, 'JOINING');
      this.note(l, `joining as ${l.sid} (never becomes active)`);
      return;
    }
    this.rsJoin(p.room, p.identity, l.sid, 'ACTIVE');
    this.webhook(l, 'participant_joined', l.sid, null);
    this.note(l, `joined as ${l.sid}`);
  }

  private depart(l: Life, event: 'participant_left' | 'participant_connection_aborted', reason: DisconnectReasonName | null, expected: ActionKind): void {
    const p = l.plan;
    this.rsLeave(p.room, p.identity);
    l.departedAt = Date.now();
    l.expected = expected;
    this.inCall--;
    l.finalWebhook = this.webhook(l, event, l.sid!, reason);
    this.note(l, `departed: ${event} ${reason ?? 'UNKNOWN_REASON'} (expects ${expected})`);
  }

  private async delegate(l: Life, daemonUrl: string): Promise<void> {
    const p = l.plan;
    const body: Record<string, unknown> = { homeserver: this.hsUrl, dialect: p.dialect, token: l.token, timeout_ms: this.o.timeoutMs };
    if (p.dialect === 'delayed_events' && p.accessToken) body.access_token = 'soak-client-access-token';
    const giveUpAt = Date.now() + DELEGATION_GIVE_UP_MS;
    let last = '';
    while (Date.now() < giveUpAt && !this.stopped) {
      let res: { status: number; body: any };
      try {
        res = await api(daemonUrl, 'POST', '/v1/delegations', { token: l.jwt!, body });
      } catch (err) {
        last = `unreachable (${(err as Error).message})`;
        await sleep(250);
        continue;
      }
      if (res.status === 201 || res.status === 200) {
        l.delegationId = res.body.delegation_id;
        this.note(l, `delegated ${l.delegationId} (${res.status})`);
        return;
      }
      last = `${res.status} ${JSON.stringify(res.body)}`;
      if (res.status === 429) await sleep(Math.min(5_000, Math.max(200, Number(res.body?.retry_after_ms) || 1_000)));
      else if (res.status >= 500) await sleep(250);
      else break;
    }
    l.notDelegated = last || 'stopped';
  }

  private webhook(l: Life, event: string, sid: string, reason: DisconnectReasonName | null): Delivery {
    const p = l.plan;
    const now = Math.floor(Date.now() / 1000);
    const joined = event === 'participant_joined';
    const joinedAtMs = this.sessionJoinedAt.get(sid) ?? Date.now();
    const input: WebhookEventInput & { id: string } = {
      event,
      id: newWebhookEventId(),
      createdAt: now,
      room: this.roomRef(p.room),
      participant: {
        sid,
        identity: p.identity,
        state: joined ? 'ACTIVE' : 'DISCONNECTED',
        joinedAt: Math.floor(joinedAtMs / 1000),
        joinedAtMs,
        ...(reason !== null && !joined ? { disconnectReason: reason } : {}),
      },
    };
    const fault: Fault = { lost: l.faults.chance(this.o.loss), dup: l.faults.chance(this.o.dup), swap: l.faults.chance(this.o.reorder) };
    const d = this.channel.emit(p.room, p.identity, input, fault);
    l.deliveries.push(d);
    l.timeline.push(`${this.stamp()} webhook ${event} ${sid}${reason ? ` ${reason}` : ''}${fault.lost ? ' [lost]' : ''}${fault.dup ? ' [duplicated]' : ''}${fault.swap ? ' [held back]' : ''}`);
    return d;
  }

  private roomRef(room: string): { name: string; sid: string } {
    return { name: room, sid: `RM_${room}_${this.roomGeneration.get(room) ?? 0}` };
  }

  private rsJoin(room: string, identity: string, sid: string, state: ParticipantStateName): void {
    if (!this.sessionJoinedAt.has(sid)) this.sessionJoinedAt.set(sid, Date.now());
    this.rs.join(room, { sid, identity, state, joinedAt: Math.floor(this.sessionJoinedAt.get(sid)! / 1000) });
    let m = this.members.get(room);
    if (!m) this.members.set(room, (m = new Set()));
    m.add(identity);
  }

  /** Removes from the RoomService; a room left empty finishes a second later unless someone joins. */
  private rsLeave(room: string, identity: string): void {
    this.rs.leave(room, identity);
    const m = this.members.get(room);
    m?.delete(identity);
    if (m && m.size === 0) {
      setTimeout(() => {
        if (this.stopped || (this.members.get(room)?.size ?? 0) > 0) return;
        const input: WebhookEventInput & { id: string } = { event: 'room_finished', id: newWebhookEventId(), createdAt: Math.floor(Date.now() / 1000), room: this.roomRef(room) };
        this.channel.emit(room, '', input, { lost: this.roomFaults.chance(this.o.loss), dup: this.roomFaults.chance(this.o.dup), swap: false });
        this.roomGeneration.set(room, (this.roomGeneration.get(room) ?? 0) + 1);
      }, 1_000).unref();
    }
  }

  private newSid(): string {
    return `PA_soak${(++this.sidCounter).toString(36)}`;
  }

  private note(l: Life, what: string): void {
    l.timeline.push(`${this.stamp()} ${what}`);
  }

  private stamp(): string {
    return `  truth  ${((Date.now() - this.driveStart) / 1000).toFixed(1).padStart(6)}s`;
  }
}

/** 5xx and 429 answers at the configured rates, as failure rules for the next management calls. */
class HomeserverFaults {
  injected5xx = 0;
  injected429 = 0;
  /** Management calls answered while injection was on. */
  eligible = 0;
  paused = false;
  private seen = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly draw5xx: Prng;
  private readonly draw429: Prng;
  private readonly values: Prng;

  constructor(
    private readonly hs: FakeHomeserver,
    private readonly o: SoakOptions,
    rng: Prng,
  ) {
    this.draw5xx = rng.fork(1);
    this.draw429 = rng.fork(2);
    this.values = rng.fork(3);
  }

  start(): void {
    this.seen = this.hs.calls.length;
    this.timer = setInterval(() => this.tick(), 100);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private tick(): void {
    const calls = this.hs.calls;
    let n = 0;
    for (let i = this.seen; i < calls.length; i++) if (isManagement(calls[i]!)) n++;
    this.seen = calls.length;
    if (this.paused) return;
    this.eligible += n;
    for (let i = 0; i < n; i++) {
      if (this.draw5xx.chance(this.o.rate5xx)) {
        this.hs.failNext('any', 1, { status: this.values.pick([500, 502, 503, 504]) });
        this.injected5xx++;
      }
      if (this.draw429.chance(this.o.rate429)) {
        this.hs.failNext('any', 1, { status: 429, errcode: 'M_LIMIT_EXCEEDED', retryAfterMs: this.values.int(200, 3_000) });
        this.injected429++;
      }
    }
  }
}

async function createHomeserverToken(hs: FakeHomeserver, p: LifePlan, timeoutMs: number): Promise<string> {
  const roomId = `!${p.room}:soak.example`;
  const member = { type: 'org.matrix.msc3401.call.member', content: { soak: p.index }, state_key: `_${p.identity}` };
  for (let attempt = 0; ; attempt++) {
    try {
      if (p.dialect === 'futures') {
        const r = await hs.createFuture({ roomId, timeoutSeconds: timeoutMs / 1000, onTimeout: { ...member, content: {} }, actions: { leave: { ...member, content: {} }, connection_lost: { ...member, content: {} } } });
        return r.future_token;
      }
      return await hs.createDelayedEvent({ roomId, eventType: member.type, content: {}, stateKey: member.state_key, delayMs: timeoutMs });
    } catch (err) {
      if (attempt >= 20) throw err;
      await sleep(250);
    }
  }
}

/**
 * What the daemon says about every delegation (admin view): `pending_action` names the kind that fired where the
 * homeserver's record cannot (delayed events have one action, `send`); the in-memory history explains violations.
 */
async function daemonViews(url: string, lives: Life[], driveStart: number): Promise<Map<number, { pendingAction: string | null; summary: string }>> {
  const out = new Map<number, { pendingAction: string | null; summary: string }>();
  const todo = lives.filter((l) => l.delegationId !== null);
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < todo.length) {
        const l = todo[next++]!;
        for (let attempt = 0; attempt < 5; attempt++) {
          try {
            const res = await api(url, 'GET', `/v1/admin/delegations/${l.delegationId}`, { token: ADMIN_TOKEN });
            if (res.status !== 200) continue;
            const history = (res.body.history as Array<{ at: number; what: string; state: string }>) ?? [];
            const lines = history.map((h) => `  daemon ${((h.at - driveStart) / 1000).toFixed(1).padStart(6)}s ${h.what} [${h.state}]`);
            out.set(l.plan.index, {
              pendingAction: res.body.pending_action ?? null,
              summary: [`  daemon now: state ${res.body.state}, pending_action ${res.body.pending_action}, outcome ${res.body.outcome} (history since its last start:)`, ...lines].join('\n'),
            });
            break;
          } catch {
            await sleep(200);
          }
        }
      }
    }),
  );
  return out;
}

/** Every open delegation's in-memory history, into the daemon log (it is lost with the process). */
async function snapshot(daemon: DaemonSupervisor, lives: Life[], driveStart: number): Promise<void> {
  const views = await daemonViews(daemon.url, lives.filter((l) => l.delegationId !== null && l.departedAt !== null), driveStart);
  for (const [index, v] of views) if (!/state (fired|expired|revoked|failed|invalidated)/.test(v.summary)) daemon.log(`snapshot #${index} ${lives[index]!.delegationId}\n${v.summary}`);
}

function isManagement(c: CallRecord): boolean {
  return c.op === 'refresh' || c.op === 'action' || c.op === 'restart' || c.op === 'send';
}

function isAction(c: CallRecord): boolean {
  return c.op === 'action' || c.op === 'send';
}

function hasAction(hs: FakeHomeserver, handle: string): boolean {
  const s = hs.status(handle);
  return s === 'actioned' || s === 'sent';
}

function countFiredHandles(hs: FakeHomeserver): number {
  let n = 0;
  for (const e of hs.sent) if (e.cause === 'action') n++;
  return n;
}

function judge(args: {
  o: SoakOptions;
  boundMs: number;
  t0: number;
  killsAtS: number[];
  driveStart: number;
  aborted: boolean;
  lives: Life[];
  hs: FakeHomeserver;
  channel: LiveKitChannel;
  daemon: DaemonSupervisor;
  faults: HomeserverFaults;
  exitCode: number | null;
  outage: { fromS: number; toS: number } | null;
  views: Map<number, { pendingAction: string | null; summary: string }>;
  logFile: string;
}): SoakReport {
  const { o, lives, hs, views } = args;
  const callsByHandle = new Map<string, CallRecord[]>();
  for (const c of hs.calls) {
    if (!c.handle || !isManagement(c)) continue;
    let list = callsByHandle.get(c.handle);
    if (!list) callsByHandle.set(c.handle, (list = []));
    list.push(c);
  }
  const sentByHandle = new Map<string, SentEvent[]>();
  for (const e of hs.sent) {
    if (!e.handle) continue;
    let list = sentByHandle.get(e.handle);
    if (!list) sentByHandle.set(e.handle, (list = []));
    list.push(e);
  }
  const violations: Violation[] = [];
  const fates: Record<Fate, number> = { leave: 0, drop: 0, aborted: 0, stay: 0 };
  const leaves = { expected: 0, fired: 0, byReconciliation: 0 };
  const connectionLost = { expected: 0, fired: 0, wrongKind: 0 };
  let falseFires = 0;
  let missedRefreshes = 0;
  let firedTwice = 0;
  let departedWithoutAction = 0;
  let notDelegated = 0;
  let repeatAfterSuccess = 0;
  const at = (ms: number) => `${((ms - args.driveStart) / 1000).toFixed(1)}s`;
  const describe = (l: Life, extra: string) =>
    [
      `#${l.plan.index} ${l.plan.identity} in ${l.plan.room} (${l.plan.dialect}, delegation ${l.delegationId ?? '-'}): ${extra}`,
      ...l.timeline,
      ...l.deliveries.map((d) => `  lk     ${d.event} ${d.sid ?? ''}: ${d.status}${d.deliveredAt ? ` at ${at(d.deliveredAt)}` : ''}${d.attempts > 1 ? ` after ${d.attempts} attempts` : ''}`),
      ...(l.token ? callsByHandle.get(l.token) ?? [] : []).map((c) => `  hs     ${at(c.at).padStart(7)} ${c.op}${c.actionName ? ` ${c.actionName}` : ''} -> ${c.status || 'unreachable'}`),
      ...(l.token ? sentByHandle.get(l.token) ?? [] : []).map((e) => `  hs     ${at(e.at).padStart(7)} sent by ${e.cause}${e.actionName ? ` ${e.actionName}` : ''}`),
      views.get(l.plan.index)?.summary ?? '  (no answer from the daemon)'].join('\n');

  for (const l of lives) {
    fates[l.plan.fate]++;
    if (!l.token) continue;
    if (!l.delegationId) {
      notDelegated++;
      violations.push({ kind: 'not_delegated', participant: l.plan.index, detail: describe(l, `never delegated: ${l.notDelegated}`) });
      continue;
    }
    const calls = callsByHandle.get(l.token) ?? [];
    const sent = sentByHandle.get(l.token) ?? [];
    const okActions = calls.filter((c) => isAction(c) && c.status >= 200 && c.status < 300);
    const firstOk = okActions[0];
    if (firstOk) repeatAfterSuccess += calls.filter((c) => isAction(c) && c.at >= firstOk.at && (c.status === 404 || c.status === 409)).length;
    const action = sent.find((e) => e.cause === 'action');
    const timeouts = sent.filter((e) => e.cause === 'timeout' || e.cause === 'delayed');
    const inCallUntil = l.departedAt ?? Infinity;
    let kind: ActionKind | null = null;
    if (action) {
      const named = l.plan.dialect === 'futures' ? action.actionName : views.get(l.plan.index)?.pendingAction;
      kind = named === 'leave' || named === 'connection_lost' ? named : null;
    }

    if (okActions.length > 1) {
      firedTwice++;
      violations.push({ kind: 'fired_twice', participant: l.plan.index, detail: describe(l, `${okActions.length} successful action calls at ${okActions.map((c) => at(c.at)).join(', ')}`) });
    }
    if (action && action.at < inCallUntil) {
      falseFires++;
      violations.push({
        kind: 'false_fire',
        participant: l.plan.index,
        detail: describe(l, `${kind ?? action.actionName} fired at ${at(action.at)} while the participant was still in the call${l.departedAt ? ` (it left at ${at(l.departedAt)})` : ' (it never left)'}`),
      });
    }
    const early = timeouts.find((e) => e.at < inCallUntil);
    if (early || (l.departedAt === null && hs.status(l.token) === 'timed_out')) {
      missedRefreshes++;
      violations.push({ kind: 'missed_refresh', participant: l.plan.index, detail: describe(l, `the homeserver's timeout fired at ${early ? at(early.at) : '?'} while the participant was in the call`) });
    }
    if (l.departedAt === null) continue;
    if (l.expected === 'leave') leaves.expected++;
    else connectionLost.expected++;
    if (!action) {
      departedWithoutAction++;
      const late = timeouts[0];
      violations.push({
        kind: 'departed_without_action',
        participant: l.plan.index,
        detail: describe(l, `departed at ${at(l.departedAt)} (expects ${l.expected}, final webhook ${l.finalWebhook?.status}), no action; homeserver status ${hs.status(l.token)}${late ? `, its own timeout fired at ${at(late.at)}` : ''}`),
      });
      continue;
    }
    if (l.expected === 'leave') {
      if (kind === 'leave') leaves.fired++;
      else leaves.byReconciliation++;
    } else if (kind === 'connection_lost') {
      connectionLost.fired++;
    } else {
      connectionLost.wrongKind++;
      violations.push({ kind: 'wrong_action', participant: l.plan.index, detail: describe(l, `expected connection_lost, ${kind ?? 'an unknown action'} fired at ${at(action.at)}`) });
    }
  }

  const management = hs.calls.filter(isManagement);
  const report: SoakReport = {
    seed: o.seed,
    options: o,
    boundMs: args.boundMs,
    durationMs: Date.now() - args.t0,
    aborted: args.aborted,
    participants: {
      total: lives.length,
      delegated: lives.filter((l) => l.delegationId !== null).length,
      futures: lives.filter((l) => l.plan.dialect === 'futures').length,
      delayedEvents: lives.filter((l) => l.plan.dialect === 'delayed_events').length,
      fates,
      reconnects: lives.reduce((n, l) => n + l.plan.interruptions.filter((i) => i.kind === 'reconnect').length, 0),
      duplicateIdentities: lives.reduce((n, l) => n + l.plan.interruptions.filter((i) => i.kind === 'duplicate').length, 0),
      joinFirst: lives.filter((l) => l.plan.joinFirst).length,
    },
    leaves,
    connectionLost,
    falseFires,
    missedRefreshes,
    firedTwice,
    departedWithoutAction,
    notDelegated,
    repeatAfterSuccess,
    webhooks: { ...args.channel.stats },
    homeserver: {
      managementCalls: management.length,
      injected5xx: args.faults.injected5xx,
      injected429: args.faults.injected429,
      injectionEligible: args.faults.eligible,
      refreshesOk: management.filter((c) => (c.op === 'refresh' || c.op === 'restart') && c.status === 200).length,
      actionsOk: management.filter((c) => isAction(c) && c.status === 200).length,
      answered5xx: management.filter((c) => c.status >= 500).length,
      answered429: management.filter((c) => c.status === 429).length,
      unreachable: management.filter((c) => c.status === 0).length,
      outage: args.outage,
    },
    daemon: {
      kills: args.daemon.kills,
      killsAtS: args.killsAtS,
      restarts: args.daemon.restarts,
      restartMs: args.daemon.restartMs,
      unexpectedExits: args.daemon.unexpectedExits,
      exitCode: args.exitCode,
      logFile: args.logFile,
    },
    violations,
    ok: false,
  };
  report.ok =
    !report.aborted &&
    falseFires === 0 &&
    missedRefreshes === 0 &&
    firedTwice === 0 &&
    departedWithoutAction === 0 &&
    notDelegated === 0 &&
    connectionLost.wrongKind === 0 &&
    report.daemon.unexpectedExits.length === 0 &&
    report.daemon.kills === o.kills;
  return report;
}

/** The report as a table, then the violations (at most `maxViolations` in full). */
export function formatReport(r: SoakReport, maxViolations = 10): string {
  const o = r.options;
  const rows: Array<[string, string]> = [];
  const row = (k: string, v: string | number) => rows.push([k, String(v)]);
  const p = r.participants;
  row('participants', `${p.total} (futures ${p.futures}, delayed_events ${p.delayedEvents}; delegated ${p.delegated})`);
  row('  fates', `leave ${p.fates.leave}, drop ${p.fates.drop}, aborted join ${p.fates.aborted}, stay ${p.fates.stay}`);
  row('  interruptions', `reconnects within the grace ${p.reconnects}, duplicate-identity replacements ${p.duplicateIdentities}; joined before delegating ${p.joinFirst}`);
  row('leaves expected / fired', `${r.leaves.expected} / ${r.leaves.fired + r.leaves.byReconciliation} (leave ${r.leaves.fired}; connection_lost ${r.leaves.byReconciliation}, found by reconciliation as the leave webhook was lost or late)`);
  row('connection_lost expected / fired', `${r.connectionLost.expected} / ${r.connectionLost.fired}${r.connectionLost.wrongKind ? ` (+${r.connectionLost.wrongKind} fired leave instead)` : ''}`);
  row('fired for a still-connected participant (false)', r.falseFires);
  row('futures expired while connected (missed refresh)', r.missedRefreshes);
  row('actions fired twice', r.firedTwice);
  row('departed without action', r.departedWithoutAction);
  if (r.notDelegated) row('participants whose delegation failed', r.notDelegated);
  row('  retries answered 404/409 after a success', `${r.repeatAfterSuccess} (the same firing)`);
  const w = r.webhooks;
  row('webhooks', `${w.emitted} emitted: ${w.lost} lost, ${w.duplicated} duplicated, ${w.reordered} reordered, ${w.retried} retries, ${w.droppedRetries + w.droppedAge + w.droppedDepth} dropped by LiveKit (retries ${w.droppedRetries}, age ${w.droppedAge}, depth ${w.droppedDepth}), ${w.rejected} rejected`);
  const h = r.homeserver;
  row('homeserver', `${h.managementCalls} calls: ${h.refreshesOk} refreshes ok, ${h.actionsOk} actions ok, ${h.answered5xx} answered 5xx (${h.injected5xx} injected over ${h.injectionEligible} calls), ${h.answered429} answered 429 (${h.injected429} injected, the rest from its own limit), ${h.unreachable} while down`);
  row('  outage', h.outage ? `${(h.outage.toS - h.outage.fromS).toFixed(0)} s (${h.outage.fromS.toFixed(0)}-${h.outage.toS.toFixed(0)} s of the drive), futures time out after ${o.timeoutMs / 1000} s` : 'none');
  const d = r.daemon;
  row('daemon', `${d.kills} SIGKILLs (at ${d.killsAtS.map((x) => `${x.toFixed(0)} s`).join(', ') || '-'} of the drive), ${d.restarts} restarts (${d.restartMs.map((ms) => `${(ms / 1000).toFixed(1)} s`).join(', ') || '-'}), ${d.unexpectedExits.length} unexpected exits, exit code ${d.exitCode} after SIGTERM`);
  row('settings', `seed ${r.seed}, grace ${o.graceMs} ms, reconcile ${o.reconcileIntervalMs} ms, join timeout ${o.joinTimeoutMs} ms, homeserver rate ${o.homeserverRate}/s, 5xx ${o.rate5xx}, 429 ${o.rate429}, loss ${o.loss}, dup ${o.dup}, reorder ${o.reorder}${o.adversarial ? ', ADVERSARIAL' : ''}${o.livekitUrl ? `, LiveKit API ${o.livekitUrl}` : ''}`);
  row('duration', `${(r.durationMs / 1000).toFixed(0)} s (bound ${(r.boundMs / 1000).toFixed(0)} s)${r.aborted ? ' - CUT SHORT BY THE BOUND' : ''}`);
  row('daemon log', d.logFile);
  row('verdict', r.ok ? 'PASS' : 'FAIL');
  const width = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`);
  if (r.violations.length) {
    lines.push('', `${r.violations.length} violation(s)${r.violations.length > maxViolations ? `, first ${maxViolations}` : ''}:`);
    for (const v of r.violations.slice(0, maxViolations)) lines.push(`- ${v.kind}: ${v.detail}`);
  }
  return lines.join('\n');
}

async function sleepUntil(at: number, stop: () => boolean): Promise<void> {
  while (!stop()) {
    const left = at - Date.now();
    if (left <= 0) return;
    await sleep(Math.min(left, 2_000));
  }
}
