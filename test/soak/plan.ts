import type { DisconnectReasonName } from '../fakes/livekit.js';
import { Prng } from './prng.js';

type Dialect = 'futures' | 'delayed_events';

/** How a participant's time in the call ends. */
export type Fate = 'leave' | 'drop' | 'aborted' | 'stay';

export interface SoakOptions {
  participants: number;
  /** LiveKit rooms the participants spread over; 0 = one per 50 participants. */
  rooms: number;
  /** Share of participants using Synapse's delayed events; the rest use the futures draft. */
  delayedEventsShare: number;
  /** Probability that a webhook is lost, delivered twice, swapped with the one queued before it. */
  loss: number;
  dup: number;
  reorder: number;
  /** Also produce orders LiveKit never does: swaps within one participant, duplicates seconds later. Off by default. */
  adversarial: boolean;
  /** Homeserver outage: length, and when it starts (from the start of the drive). */
  outageMs: number;
  outageAtMs: number;
  /** Probability that a homeserver management call is answered 5xx / 429 (outside the outage). */
  rate5xx: number;
  rate429: number;
  /**
   * The homeserver's own per-IP token bucket (Synapse's ratelimiter); null = none. By default it allows exactly what
   * the daemon is configured to send (SIDECAR_HOMESERVER_RATE, burst 5x), so its 429s only come from injection.
   */
  homeserverLimit: { perSecond: number; burst: number } | null;
  /** SIGKILL + restart of the daemon, at moments drawn from the seed. */
  kills: number;
  /** Future / delayed event timeout. */
  timeoutMs: number;
  /** SIDECAR_RECONNECT_GRACE_MS, SIDECAR_RECONCILE_INTERVAL_MS, SIDECAR_JOIN_TIMEOUT_MS, SIDECAR_HOMESERVER_RATE. */
  graceMs: number;
  reconcileIntervalMs: number;
  joinTimeoutMs: number;
  homeserverRate: number;
  /** Participants arrive, live and go within this window; then the soak waits for the last actions. */
  driveMs: number;
  /** Relative weights of the fates. */
  fates: Record<Fate, number>;
  /** Probability that a participant's connection drops and comes back within the grace with a new sid, once / that a new session of its identity replaces the old one (DUPLICATE_IDENTITY). */
  reconnectShare: number;
  duplicateShare: number;
  seed: number;
  /** Hard bound on the whole run; 0 = derived from the other settings (see soakBoundMs). */
  maxDurationMs: number;
  /** LiveKit API for reconciliation; null = the fake RoomService this harness keeps in sync with the truth. */
  livekitUrl: string | null;
  logLevel: string;
  /** Where the SQLite file and the daemon's log go; null = a new temporary directory. */
  workDir: string | null;
  progressEveryMs: number;
  /** Before each SIGKILL, write the in-memory history of every departed participant's open delegation to the log. */
  snapshotBeforeKill: boolean;
}

/** The figures: 2,000 participants, 20 % loss, 10 % duplication, a 60 s outage under 180 s timeouts, 3 SIGKILLs. */
export const FULL_SOAK: SoakOptions = {
  participants: 2000,
  rooms: 0,
  delayedEventsShare: 0.5,
  loss: 0.2,
  dup: 0.1,
  reorder: 0.1,
  adversarial: false,
  outageMs: 60_000,
  outageAtMs: 150_000,
  rate5xx: 0.02,
  rate429: 0.002,
  homeserverLimit: { perSecond: 100, burst: 500 },
  kills: 3,
  timeoutMs: 180_000,
  graceMs: 15_000,
  reconcileIntervalMs: 2_000,
  joinTimeoutMs: 30_000,
  homeserverRate: 100,
  driveMs: 420_000,
  fates: { leave: 0.4, drop: 0.25, aborted: 0.05, stay: 0.3 },
  reconnectShare: 0.25,
  duplicateShare: 0.15,
  seed: 1,
  maxDurationMs: 0,
  livekitUrl: null,
  logLevel: 'info',
  workDir: null,
  progressEveryMs: 10_000,
  snapshotBeforeKill: false,
};

/** The same soak scaled down to fit in `npm test`. */
export const SHORT_SOAK: SoakOptions = {
  ...FULL_SOAK,
  participants: 120,
  outageMs: 6_000,
  outageAtMs: 8_000,
  kills: 2,
  timeoutMs: 20_000,
  graceMs: 3_000,
  reconcileIntervalMs: 1_000,
  joinTimeoutMs: 10_000,
  driveMs: 25_000,
  progressEveryMs: 5_000,
};

/** When the soak stops waiting for actions after the drive, and the least it waits (for late false fires). */
export function settleWindowMs(o: SoakOptions): { min: number; max: number } {
  const retrySlack = Math.min(60_000, o.outageMs + 5_000);
  return {
    min: o.graceMs + 2 * o.reconcileIntervalMs + 3_000,
    max: Math.max(o.joinTimeoutMs, o.graceMs + 4 * o.reconcileIntervalMs + 10_000) + retrySlack + 10_000,
  };
}

/** The bound the whole run stays within: start-up, drive, settle, counting and shutdown. */
export function soakBoundMs(o: SoakOptions): number {
  if (o.maxDurationMs > 0) return o.maxDurationMs;
  return 30_000 + o.driveMs + settleWindowMs(o).max + 60_000 + o.kills * 25_000;
}

interface Interruption {
  /** After the first join. */
  atMs: number;
  /** `reconnect`: the connection times out and a new session joins after `gapMs`; `duplicate`: a new session replaces the old one. */
  kind: 'reconnect' | 'duplicate';
  gapMs: number;
  reason: DisconnectReasonName | null;
}

export interface LifePlan {
  index: number;
  identity: string;
  room: string;
  dialect: Dialect;
  /** Join LiveKit before delegating (the delegation then finds the session) instead of after. */
  joinFirst: boolean;
  arriveAtMs: number;
  joinDelayMs: number;
  fate: Fate;
  /** From the first join to the end (leave, drop); for `aborted`, how long the session stays JOINING. */
  lifeMs: number;
  finalReason: DisconnectReasonName | null;
  interruptions: Interruption[];
  /** Seed of this participant's webhook faults, so the same seed loses the same events whatever the timing. */
  faultSeed: number;
  accessToken: boolean;
}

export interface Plan {
  lives: LifePlan[];
  rooms: string[];
  killsAtMs: number[];
  killPausesMs: number[];
}

const RECONNECT_REASONS: Array<DisconnectReasonName | null> = ['CONNECTION_TIMEOUT', 'CONNECTION_TIMEOUT', 'SIGNAL_CLOSE', 'MEDIA_FAILURE', 'STATE_MISMATCH', null];
const DROP_REASONS: Array<DisconnectReasonName | null> = ['CONNECTION_TIMEOUT', 'CONNECTION_TIMEOUT', 'CONNECTION_TIMEOUT', 'SIGNAL_CLOSE', 'MEDIA_FAILURE', 'SERVER_SHUTDOWN', null];
const LEAVE_REASONS: DisconnectReasonName[] = ['CLIENT_INITIATED', 'CLIENT_INITIATED', 'CLIENT_INITIATED', 'PARTICIPANT_REMOVED'];
const ABORT_REASONS: Array<DisconnectReasonName | null> = [null, 'JOIN_FAILURE', 'SIGNAL_CLOSE'];

/** Everything that will happen, drawn from the seed before anything starts. */
export function makePlan(o: SoakOptions): Plan {
  const root = new Prng(o.seed);
  const roomCount = o.rooms > 0 ? o.rooms : Math.max(1, Math.ceil(o.participants / 50));
  const rooms = Array.from({ length: roomCount }, (_, i) => `soak-room-${String(i).padStart(3, '0')}`);
  const arrivalEnd = o.driveMs * 0.7;
  const tailMs = Math.max(1_000, o.driveMs * 0.02);
  const lives: LifePlan[] = [];
  for (let i = 0; i < o.participants; i++) {
    const r = root.fork(i);
    const arriveAtMs = Math.round(r.range(0, arrivalEnd));
    const joinDelayMs = r.int(0, 1_000);
    const fate = r.weighted(o.fates);
    const available = Math.max(0, o.driveMs - tailMs - arriveAtMs - joinDelayMs - 2_000);
    let lifeMs: number;
    if (fate === 'aborted') lifeMs = r.int(300, 3_000);
    else if (fate === 'stay') lifeMs = available;
    else lifeMs = Math.round(Math.min(available, r.range(0.05, 0.5) * o.driveMs));
    const interruptions: Interruption[] = [];
    if (fate !== 'aborted') {
      const wanted: Array<'reconnect' | 'duplicate'> = [];
      if (r.chance(o.reconnectShare)) wanted.push('reconnect');
      if (r.chance(o.duplicateShare)) wanted.push('duplicate');
      let from = 0.1 * lifeMs;
      for (const kind of wanted) {
        const gapMs = kind === 'reconnect' ? Math.round(r.range(0.1, 0.4) * o.graceMs) : r.int(100, 1_500);
        const atMs = Math.round(r.range(from, Math.max(from, 0.8 * lifeMs - gapMs)));
        if (atMs + gapMs + 1_000 > lifeMs) continue;
        interruptions.push({ atMs, kind, gapMs, reason: kind === 'reconnect' ? r.pick(RECONNECT_REASONS) : 'DUPLICATE_IDENTITY' });
        from = atMs + gapMs + 500;
      }
    }
    const finalReason = fate === 'leave' ? r.pick(LEAVE_REASONS) : fate === 'drop' ? r.pick(DROP_REASONS) : fate === 'aborted' ? r.pick(ABORT_REASONS) : null;
    lives.push({
      index: i,
      identity: `@soak${i}:soak.example:DEV${i.toString(36).toUpperCase()}`,
      room: r.pick(rooms),
      dialect: r.chance(o.delayedEventsShare) ? 'delayed_events' : 'futures',
      joinFirst: fate !== 'aborted' && r.chance(0.3),
      arriveAtMs,
      joinDelayMs,
      fate,
      lifeMs,
      finalReason,
      interruptions,
      faultSeed: Math.floor(r.next() * 0xffff_ffff),
      accessToken: r.chance(0.5),
    });
  }
  const k = root.fork(0x7fff_0001);
  const killsAtMs: number[] = [];
  const lo = 0.1 * o.driveMs;
  const hi = 0.9 * o.driveMs;
  const slot = (hi - lo) / Math.max(1, o.kills);
  for (let i = 0; i < o.kills; i++) killsAtMs.push(Math.round(lo + slot * i + k.range(0.1, 0.9) * slot));
  const killPausesMs = killsAtMs.map(() => k.int(0, 1_000));
  return { lives, rooms, killsAtMs, killPausesMs };
}
