/**
 * One measurement of benchmark 2 in a fresh process (so its RSS is its own), driven by `bench/scale.ts` over IPC:
 * - `reload`: a `DelegationEngine` on a seeded SQLite store: RSS and heap before and after `start()`, its time, then
 *   CPU per refresh dispatched, with a manual clock and a homeserver client that answers at once;
 * - `schedule`: the `Schedule` heap alone with n ids, CPU per due id rescheduled;
 * - `heap`: heap snapshots before and after `start()`, for the breakdown of where the memory goes.
 */
import { readFileSync } from 'node:fs';
import { writeHeapSnapshot } from 'node:v8';
import { pino } from 'pino';
import { ManualClock } from '../src/clock.js';
import { DelegationEngine } from '../src/delegations/engine.js';
import { Schedule } from '../src/delegations/schedule.js';
import { Metrics } from '../src/metrics.js';
import { DEFAULT_REFRESH_MARGIN_MS } from '../src/config.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { monotonicUs } from './lib/cpuprofile.js';
import { InstantHomeserver } from './lib/instant-homeserver.js';
import { nextTurn } from './lib/stats.js';

export interface ChildRequest {
  mode: 'reload' | 'schedule' | 'heap';
  db: string;
  n: number;
  /** The seeded delegations' reference time (ms). */
  now: number;
  timeoutMs: number;
  refreshes: number;
  snapshotDir?: string;
  /** SQLite page cache to try instead of the store's default, KiB. */
  sqliteCacheKiB?: number;
}

export interface ReloadResult {
  mode: 'reload';
  rssBefore: number;
  rssAfter: number;
  heapBefore: number;
  heapAfter: number;
  externalAfter: number;
  peakRss: number;
  startMs: number;
  loadOpenMs: number;
  open: number;
  heapEntries: number;
  refreshes: number;
  dispatchCpuMs: number;
  dispatchWallMs: number;
  storeMs: number;
  heapEntriesAfter: number;
  rssAfterDispatch: number;
  /** Monotonic microseconds around `start()` and around the dispatch, to cut a CPU profile to either. */
  startWindow: [number, number];
  dispatchWindow: [number, number];
  /** The dispatch stopped at its wall-clock bound before reaching the refreshes asked for. */
  truncated: boolean;
}

export interface ScheduleResult {
  mode: 'schedule';
  due: number;
  cpuMs: number;
}

export interface HeapResult {
  mode: 'heap';
  before: string;
  after: string;
  open: number;
}

export type ChildResult = ReloadResult | ScheduleResult | HeapResult;

const gc = (globalThis as { gc?: () => void }).gc;

/** Peak RSS of this process image (VmHWM; getrusage's maxrss would carry the parent's over exec). */
function peakRss(): number {
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN) * 1024;
}

function settleGc(): void {
  if (!gc) throw new Error('run with --expose-gc');
  gc();
  gc();
}

const DISPATCH_WALL_LIMIT_MS = 120_000;
const SETTINGS = { reconnectGraceMs: 10_000, joinTimeoutMs: 300_000, refreshAt: 0.5, refreshMarginMs: DEFAULT_REFRESH_MARGIN_MS };
const LIMITS = { maxPerIdentity: 10, maxPerRoom: 5_000, homeserverRate: 1 };

interface EngineInternals {
  schedule?: Record<string, unknown>;
  /** The engine's calls in flight (its effect runner's, since the engine was split). */
  effects: { inflight: Set<unknown> };
}

/** Entries in the engine's schedule heap, stale ones included, whichever layout the schedule has; NaN if unknown. */
function scheduleEntries(engine: EngineInternals): number {
  const s = engine.schedule;
  const heap = s?.heap as { size?: unknown } | undefined;
  if (typeof heap?.size === 'number') return heap.size;
  if (typeof s?.length === 'number') return s.length;
  return NaN;
}

function build(req: ChildRequest): { engine: DelegationEngine; store: SqliteStore; clock: ManualClock; hs: InstantHomeserver } {
  const clock = new ManualClock(req.now);
  const store = new SqliteStore(req.db);
  if (req.sqliteCacheKiB) (store as unknown as { db: { pragma(s: string): unknown } }).db.pragma(`cache_size = -${req.sqliteCacheKiB}`);
  const hs = new InstantHomeserver(clock);
  const engine = new DelegationEngine({ store, homeservers: hs.asClient(), clock, logger: pino({ level: 'silent' }), metrics: new Metrics(), settings: SETTINGS, limits: LIMITS });
  return { engine, store, clock, hs };
}

async function reload(req: ChildRequest): Promise<ReloadResult> {
  const { engine, store, clock, hs } = build(req);
  const internals = engine as unknown as EngineInternals;
  let loadOpenMs = 0;
  // The engine streams the rows (`eachOpen`): the store's share is the time spent outside the visits.
  const eachOpen = store.eachOpen.bind(store);
  store.eachOpen = async (visit) => {
    let inVisit = 0;
    const t = performance.now();
    const source = await eachOpen((d) => {
      const v = performance.now();
      visit(d);
      inVisit += performance.now() - v;
    });
    loadOpenMs = performance.now() - t - inVisit;
    return source;
  };
  settleGc();
  const m0 = process.memoryUsage();
  const s0 = monotonicUs();
  const t0 = performance.now();
  await engine.start();
  const startMs = performance.now() - t0;
  const startWindow: [number, number] = [s0, monotonicUs()];
  const peak = peakRss();
  settleGc();
  const m1 = process.memoryUsage();
  const heapEntries = scheduleEntries(internals);

  // Store time inside the dispatch phase, so the scheduler's own share can be told apart.
  let storeMs = 0;
  for (const name of ['saveDelegation', 'getSecrets'] as const) {
    const original = store[name].bind(store) as (...a: unknown[]) => Promise<unknown>;
    (store as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => {
      const t = performance.now();
      const p = original(...a);
      storeMs += performance.now() - t;
      return p;
    };
  }
  // Seeded refreshes fall due between `now` and `now + timeout / 2`; step the clock until enough have gone out.
  const step = Math.max(1, Math.floor(((req.timeoutMs / 2) * req.refreshes) / req.n / 50));
  const cpu0 = process.cpuUsage();
  const d0 = monotonicUs();
  const w0 = performance.now();
  let truncated = false;
  for (let steps = 0; hs.refreshes < req.refreshes && steps < 10_000; steps++) {
    if (performance.now() - w0 > DISPATCH_WALL_LIMIT_MS) {
      truncated = true;
      break;
    }
    clock.advance(step);
    // The due ids' transitions are awaited before their calls start: turn the loop until no call is left in flight.
    let turns = 0;
    do await nextTurn();
    while (internals.effects.inflight.size > 0 && ++turns < 100_000);
  }
  const cpu = process.cpuUsage(cpu0);
  const dispatchWallMs = performance.now() - w0;
  const dispatchWindow: [number, number] = [d0, monotonicUs()];
  const result: ReloadResult = {
    mode: 'reload',
    rssBefore: m0.rss,
    rssAfter: m1.rss,
    heapBefore: m0.heapUsed,
    heapAfter: m1.heapUsed,
    externalAfter: m1.external,
    peakRss: peak,
    startMs,
    loadOpenMs,
    open: engine.openCount,
    heapEntries,
    refreshes: hs.refreshes,
    dispatchCpuMs: (cpu.user + cpu.system) / 1000,
    dispatchWallMs,
    storeMs,
    heapEntriesAfter: scheduleEntries(internals),
    rssAfterDispatch: process.memoryUsage().rss,
    startWindow,
    dispatchWindow,
    truncated,
  };
  await store.close();
  return result;
}

/** The heap alone: n ids due over an hour; each id that falls due is set again an hour later, as a refresh does. */
function schedule(req: ChildRequest): ScheduleResult {
  const clock = new ManualClock(0);
  const span = 3_600_000;
  let due = 0;
  const s: Schedule = new Schedule(clock, (id) => {
    due++;
    s.set(id, clock.now() + span);
  });
  for (let i = 0; i < req.n; i++) s.set(`dg_${i.toString(36).padStart(16, '0')}`, Math.floor(Math.random() * span));
  settleGc();
  const step = Math.max(1, Math.floor((span * req.refreshes) / req.n / 50));
  const cpu0 = process.cpuUsage();
  for (let steps = 0; due < req.refreshes && steps < 10_000; steps++) clock.advance(step);
  const cpu = process.cpuUsage(cpu0);
  return { mode: 'schedule', due, cpuMs: (cpu.user + cpu.system) / 1000 };
}

async function heap(req: ChildRequest): Promise<HeapResult> {
  const { engine, store } = build(req);
  settleGc();
  const before = writeHeapSnapshot(`${req.snapshotDir}/before.heapsnapshot`);
  await engine.start();
  settleGc();
  const after = writeHeapSnapshot(`${req.snapshotDir}/after.heapsnapshot`);
  const open = engine.openCount;
  await store.close();
  return { mode: 'heap', before, after, open };
}

process.once('message', (req: ChildRequest) => {
  void (async () => {
    const result: ChildResult = req.mode === 'reload' ? await reload(req) : req.mode === 'schedule' ? schedule(req) : await heap(req);
    process.send!(result, () => process.exit(0));
  })().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
});
