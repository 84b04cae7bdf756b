/**
 * Benchmark 2, the scale of one process: open delegations in the SQLite store at 10k, 100k and 1M; resident memory
 * and reload time of a fresh process, CPU per 1,000 refreshes dispatched, and how each grows with n.
 */
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMain, runAlone } from './lib/cli.js';
import { ContentionMeter, processCpuMs, waitForQuiet } from './lib/contention.js';
import { profileMarkdown, summariseCpuProfile } from './lib/cpuprofile.js';
import { startBuiltDaemon, type BuiltDaemon } from './lib/daemon.js';
import { diffSnapshots } from './lib/heap-snapshot.js';
import type { BenchOptions, Section } from './lib/report.js';
import { seedDelegations } from './lib/seed.js';
import { fmt, fmtMiB, fmtMs, median } from './lib/stats.js';
import { API_KEY, API_SECRET } from './lib/webhooks.js';
import type { ChildRequest, ChildResult, HeapResult, ReloadResult, ScheduleResult } from './scale-child.js';

const HOMESERVER = 'https://matrix.example.org';
const TIMEOUT_MS = 2 * 3600_000;
const PER_ROOM = 10;
const MIB = 2 ** 20;

function child<T extends ChildResult>(req: ChildRequest, nodeArgs: string[] = []): Promise<T & { window?: [number, number] }> {
  return new Promise((resolve, reject) => {
    const proc = fork(fileURLToPath(new URL('./scale-child.ts', import.meta.url)), [], {
      execArgv: ['--expose-gc', ...nodeArgs, '--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let result: T | undefined;
    proc.once('message', (m: T) => (result = m));
    proc.once('exit', (code) => (result ? resolve(result) : reject(new Error(`scale child (${req.mode}, n=${req.n}) exited ${code}`))));
    proc.send(req);
  });
}

/** Resident and peak resident memory of a process, from /proc. */
function procMemory(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

interface DaemonRun {
  /** Started from the rows (after a SIGKILL, or the first start). */
  readyMs: number;
  /** The daemon process's CPU from spawn to ready. */
  readyCpuMs: number;
  rss: number;
  peak: number;
  /** SIGTERM to exit, the open delegations' snapshot written on the way. */
  stopMs: number;
  /** Started again from that snapshot (a graceful restart), then SIGKILLed so the next run reads the rows. */
  snapshotReadyMs: number;
  snapshotReadyCpuMs: number;
  /** Cores other processes took during the two starts. */
  foreignCores: number;
}

async function spawnReady(db: string): Promise<{ d: BuiltDaemon; readyMs: number; cpuMs: number; foreign: number }> {
  const meter = new ContentionMeter();
  const t0 = performance.now();
  const d = await startBuiltDaemon(
    { SIDECAR_STORE: `sqlite:${db}`, LIVEKIT_KEYS: `${API_KEY}: ${API_SECRET}`, SIDECAR_HOMESERVERS: HOMESERVER, LOG_LEVEL: 'warn' },
    { readyTimeoutMs: 180_000 },
  );
  const readyMs = performance.now() - t0;
  return { d, readyMs, cpuMs: processCpuMs(d.pid), foreign: meter.stop().foreignCores };
}

async function realDaemon(db: string): Promise<DaemonRun> {
  const rows = await spawnReady(db);
  const mem = procMemory(rows.d.pid);
  const t = performance.now();
  await rows.d.stop();
  const stopMs = performance.now() - t;
  const snap = await spawnReady(db);
  snap.d.proc.kill('SIGKILL');
  await new Promise((r) => (snap.d.proc.exitCode !== null ? r(null) : snap.d.proc.once('exit', r)));
  return { readyMs: rows.readyMs, readyCpuMs: rows.cpuMs, ...mem, stopMs, snapshotReadyMs: snap.readyMs, snapshotReadyCpuMs: snap.cpuMs, foreignCores: (rows.foreign + snap.foreign) / 2 };
}

const ratio = (a: number, b: number): string => (b > 0 ? `x${(a / b).toFixed(1)}` : '');
/** How much n log n grows from n to m. */
const nLogN = (n: number, m: number): number => (m * Math.log(m)) / (n * Math.log(n));

export async function run(opts: BenchOptions): Promise<Section> {
  // BENCH_SCALE_SIZES (e.g. `10000,100000`) and BENCH_SCALE_REPS: smaller runs while iterating.
  const sizes = process.env.BENCH_SCALE_SIZES ? process.env.BENCH_SCALE_SIZES.split(',').map(Number) : opts.quick ? [10_000, 30_000] : [10_000, 100_000, 1_000_000];
  const reps = process.env.BENCH_SCALE_REPS ? Number(process.env.BENCH_SCALE_REPS) : opts.quick ? 1 : 3;
  // A reload that takes long at the largest size is run once (it took a minute before the columns), so that
  // `npm run bench` stays near 15 minutes; otherwise every size gets every repetition.
  let slowBig = false;
  const repsAt = (n: number): number => (n >= 1_000_000 && slowBig ? 1 : reps);
  const refreshes = opts.quick ? 2_000 : 10_000;
  const heapN = opts.quick ? 5_000 : 50_000;
  const dir = mkdtempSync(join(tmpdir(), 'bench-scale-'));
  // Seeded half an hour ahead, so that no refresh falls due while the real-clock daemon runs on these stores.
  const now = Date.now() + 30 * 60_000;
  try {
    const dbs = new Map<number, string>();
    const seedMs = new Map<number, number>();
    for (const n of [...sizes, heapN]) {
      const db = join(dir, `scale-${n}.db`);
      const t = performance.now();
      await seedDelegations(db, { count: n, perRoom: PER_ROOM, homeserver: HOMESERVER, timeoutMs: TIMEOUT_MS, now });
      seedMs.set(n, performance.now() - t);
      dbs.set(n, db);
      opts.log(`seeded ${fmt(n)} delegations in ${fmtMs(seedMs.get(n)!)}`);
    }

    const reload = new Map<number, ReloadResult[]>();
    const sched = new Map<number, ScheduleResult[]>();
    const daemon = new Map<number, DaemonRun[]>();
    for (let r = 0; r < reps; r++) {
      for (const n of sizes) {
        if (r >= repsAt(n)) continue;
        await waitForQuiet(opts.quick ? 1_000 : 10_000);
        const base: ChildRequest = { mode: 'reload', db: dbs.get(n)!, n, now, timeoutMs: TIMEOUT_MS, refreshes };
        const rl = await child<ReloadResult>(base);
        if (n >= 1_000_000 && rl.startMs > 20_000) slowBig = true;
        reload.set(n, [...(reload.get(n) ?? []), rl]);
        const sc = await child<ScheduleResult>({ ...base, mode: 'schedule' });
        sched.set(n, [...(sched.get(n) ?? []), sc]);
        opts.log(`run ${r + 1}/${reps} n=${fmt(n)}: start() ${fmtMs(rl.startMs)}, +${fmtMiB(rl.rssAfter - rl.rssBefore)} RSS, ${((rl.dispatchCpuMs / rl.refreshes) * 1000).toFixed(0)} ms CPU per 1,000 refreshes`);
      }
    }
    // The daemon as shipped, last: its clock is real, so refreshes seeded for "now" may start falling due.
    for (let r = 0; r < reps; r++) {
      for (const n of sizes) {
        if (r >= repsAt(n)) continue;
        const d = await realDaemon(dbs.get(n)!);
        daemon.set(n, [...(daemon.get(n) ?? []), d]);
        opts.log(`run ${r + 1}/${reps} n=${fmt(n)}: daemon ready ${fmtMs(d.readyMs)} after spawn (${fmtMs(d.readyCpuMs)} CPU), RSS ${fmtMiB(d.rss)}; stop ${fmtMs(d.stopMs)}; from the snapshot ${fmtMs(d.snapshotReadyMs)} (${fmtMs(d.snapshotReadyCpuMs)} CPU); others took ${d.foreignCores.toFixed(2)} cores`);
      }
    }

    const snapDir = join(dir, 'snap');
    mkdirSync(snapDir);
    const heap = await child<HeapResult>({ mode: 'heap', db: dbs.get(heapN)!, n: heapN, now, timeoutMs: TIMEOUT_MS, refreshes: 0, snapshotDir: snapDir });
    const breakdown = diffSnapshots(heap.before, heap.after);
    rmSync(snapDir, { recursive: true, force: true });

    const big = sizes[sizes.length - 1]!;
    const med = (n: number, f: (r: ReloadResult) => number): number => median(reload.get(n)!.map(f));
    const medD = (n: number, f: (r: DaemonRun) => number): number => median(daemon.get(n)!.map(f));
    const perK = (r: ReloadResult): number => (r.dispatchCpuMs / r.refreshes) * 1000;
    const storePerK = (r: ReloadResult): number => (r.storeMs / r.refreshes) * 1000;
    const schedPerK = (n: number): number => median(sched.get(n)!.map((s) => (s.cpuMs / s.due) * 1000));

    // One more child at the largest size under the CPU profiler, to see where reload and dispatch time go.
    const profDir = join(dir, 'prof');
    const profiled = await child<ReloadResult>({ mode: 'reload', db: dbs.get(big)!, n: big, now, timeoutMs: TIMEOUT_MS, refreshes }, ['--cpu-prof', `--cpu-prof-dir=${profDir}`]);
    const profFile = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    const reloadProfile = profFile
      ? summariseCpuProfile(join(profDir, profFile), { window: profiled.startWindow, top: 10, inclusiveOf: ['eachOpen (', 'fromValues (', 'track (', 'insert (', 'reschedule (', 'addTo (', 'addLoad (', 'set (daemon: delegations/schedule', '(garbage collector)'] })
      : null;
    const dispatchProfile = profFile
      ? summariseCpuProfile(join(profDir, profFile), { window: profiled.dispatchWindow, top: 10, inclusiveOf: ['onDue (', 'apply (', 'read (', 'doRefresh (', 'saveDelegation (', 'getSecrets (', 'transition (', 'note (', 'fire (daemon: delegations/schedule', 'push (daemon: lib/min-heap', 'pop (daemon: lib/min-heap', '(garbage collector)'] })
      : null;
    if (reload.get(big)!.some((r) => r.truncated)) opts.log('a dispatch hit its wall-clock bound before the refreshes asked for');

    const rows = sizes.map((n) => {
      const rl = reload.get(n)!;
      return `| ${fmt(n)} | ${fmtMiB(medD(n, (d) => d.rss))} | ${fmtMs(medD(n, (d) => d.readyMs))} (${fmtMs(medD(n, (d) => d.readyCpuMs))} CPU) | ${fmtMs(medD(n, (d) => d.snapshotReadyMs))} (${fmtMs(medD(n, (d) => d.snapshotReadyCpuMs))} CPU) | ${fmtMs(medD(n, (d) => d.stopMs))} | ${fmtMiB(med(n, (r) => r.rssAfter - r.rssBefore))} | ${fmtMiB(med(n, (r) => r.heapAfter - r.heapBefore))} | ${fmtMiB(med(n, (r) => r.peakRss))} | ${fmtMs(med(n, (r) => r.startMs))} | ${fmtMs(med(n, (r) => r.loadOpenMs))} | ${fmt(median(rl.map(perK)), 0)} ms | ${fmt(median(rl.map(storePerK)), 0)} ms | ${fmt(schedPerK(n), 1)} ms | ${fmt(med(n, (r) => r.heapEntries / n), 2)} -> ${fmt(med(n, (r) => r.heapEntriesAfter / n), 2)} |`;
    });
    const growth = sizes.slice(1).map((n, i) => {
      const m = sizes[i]!;
      const bound = nLogN(m, n);
      const g = (f: (k: number) => number): string => ratio(f(n), f(m));
      return `| ${fmt(m)} -> ${fmt(n)} (n log n: x${bound.toFixed(1)}, log n: x${(Math.log(n) / Math.log(m)).toFixed(2)}) | ${g((k) => medD(k, (d) => d.rss))} | ${g((k) => medD(k, (d) => d.readyMs))} | ${g((k) => medD(k, (d) => d.snapshotReadyMs))} | | ${g((k) => med(k, (r) => r.rssAfter - r.rssBefore))} | ${g((k) => med(k, (r) => r.heapAfter - r.heapBefore))} | | ${g((k) => med(k, (r) => r.startMs))} | ${g((k) => med(k, (r) => r.loadOpenMs))} | ${g((k) => median(reload.get(k)!.map(perK)))} | | ${g(schedPerK)} | |`;
    });

    const rssBig = medD(big, (d) => d.rss);
    const readyBig = medD(big, (d) => d.readyMs);
    const snapshotReadyBig = medD(big, (d) => d.snapshotReadyMs);
    const foreignDaemon = median([...daemon.values()].flat().map((d) => d.foreignCores));
    const first = sizes[0]!;
    const totalGrowthOk = sizes.slice(1).every((n, i) => {
      const m = sizes[i]!;
      const b = nLogN(m, n);
      return med(n, (r) => r.rssAfter - r.rssBefore) / med(m, (r) => r.rssAfter - r.rssBefore) <= b && med(n, (r) => r.startMs) / med(m, (r) => r.startMs) <= b;
    });
    const perRefreshGrowth = median(reload.get(big)!.map(perK)) / median(reload.get(first)!.map(perK));
    const logBound = Math.log(big) / Math.log(first);
    const perDelegation = breakdown.total / heap.open;

    const breakdownTable = [
      `| what (JS heap, after - before loading ${fmt(heap.open)}) | objects per delegation | bytes per delegation | share |`,
      '|---|---:|---:|---:|',
      ...breakdown.groups.slice(0, 22).map((g) => `| ${g.what} | ${(g.count / heap.open).toFixed(2)} | ${fmt(g.bytes / heap.open, 0)} | ${((g.bytes / breakdown.total) * 100).toFixed(1)} % |`),
      `| **total** | | **${fmt(perDelegation, 0)}** | 100 % |`,
    ].join('\n');

    const body = [
      `**Method.** ${fmt(sizes.length)} SQLite stores seeded through \`SqliteStore.insertDelegation\` in one transaction`,
      `(${sizes.map((n) => `${fmt(n)}: ${fmtMs(seedMs.get(n)!)}`).join(', ')}), every delegation \`connected\`, ${PER_ROOM} per room,`,
      'Element Call sized names, 2 h timeouts, last refreshed within the last 40 % of the timeout. Per size and run:',
      '- **daemon**: `node dist/src/main.js` on the store; from spawn until `/readyz` answers (start-up, `engine.start()`,',
      '  listening), then VmRSS from /proc, and the process\'s CPU (user + system) until then. That start reads the rows',
      '  (the first start, or one after a SIGKILL). Then SIGTERM (the graceful stop writes the snapshot of the open',
      '  delegations) and a start again, which reads the snapshot; that one is SIGKILLed, so the next run reads the rows;',
      '- **engine**: a fresh process (`scale-child.ts`) with the `DelegationEngine` alone; RSS and heap after a forced GC',
      '  before and after `start()`, its time and the store\'s share of it (`store.eachOpen()` stepping the rows, outside',
      '  the engine\'s visit of each), peak RSS; then, with a',
      `  \`ManualClock\` and a homeserver client that answers 200 at once, the clock is stepped until ${fmt(refreshes)} refreshes`,
      '  have been dispatched: process CPU per 1,000 refreshes, and the part spent in the store (`saveDelegation`,',
      '  `getSecrets`: two UPDATEs and a SELECT per refresh);',
      `- **schedule alone**: the \`Schedule\` indexed heap with n ids (numbered by its own map, as the engine's slots`,
      '  number them), CPU per 1,000 ids falling due and set again.',
      `Medians of ${reps} runs${slowBig ? ` (${fmt(sizes[sizes.length - 1]!)}: one run, as each took over 20 s)` : ''}.`,
      '',
      `Other processes took a median ${foreignDaemon.toFixed(2)} of the 2 cores during the daemon starts.`,
      '',
      '| n | daemon RSS | daemon restart from the rows (spawn to ready) | restart from the shutdown snapshot | graceful stop (writes the snapshot) | engine +RSS | engine +heap | engine peak RSS | `start()` | of which store reading | CPU per 1,000 refreshes | of which store | schedule alone per 1,000 | heap entries per delegation (loaded -> after dispatch) |',
      '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
      ...rows,
      '',
      '**Growth** (ratio of the medians; totals may grow at most like n log n, per-refresh costs at most like log n):',
      '',
      '| from -> to | daemon RSS | restart (rows) | restart (snapshot) | | engine +RSS | +heap | | `start()` | store reading | CPU per refresh | | schedule alone | |',
      '|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---|---:|---|',
      ...growth,
      '',
      `At ${fmt(big)}: daemon RSS ${fmtMiB(rssBig)} (target <= 300 MiB), restart ${fmtMs(snapshotReadyBig)} from the shutdown snapshot and ${fmtMs(readyBig)} from the rows (target <= 2 s).`,
      `CPU per refresh grew x${perRefreshGrowth.toFixed(2)} from ${fmt(first)} to ${fmt(big)} (log n grows x${logBound.toFixed(2)}).`,
      '',
      `**Where the memory goes** (heap snapshots before and after \`start()\` with ${fmt(heap.open)} delegations, self sizes by kind;`,
      'strings recognised by their shape):',
      '',
      breakdownTable,
      '',
      ...(reloadProfile && dispatchProfile
        ? [
            `**Profiles** of one more engine process at ${fmt(big)} (\`--cpu-prof\`, cut to each phase):`,
            '',
            profileMarkdown(reloadProfile, `\`start()\` (${fmtMs(profiled.startMs)} in this run)`),
            '',
            profileMarkdown(dispatchProfile, `Dispatch of ${fmt(profiled.refreshes)} refreshes`),
            '',
          ]
        : []),
    ].join('\n');

    return {
      name: 'scale',
      title: '2. Scale of one process',
      ranAt: new Date().toISOString(),
      seconds: 0,
      rows: [
        { measure: `resident memory, ${fmt(big)} open delegations (daemon RSS)`, result: fmtMiB(rssBig), target: '<= 300 MiB', verdict: rssBig <= 300 * MIB ? 'met' : 'missed' },
        {
          measure: `reload after a restart, ${fmt(big)} (spawn to ready; graceful restart from the snapshot, after a SIGKILL from the rows)`,
          result: `${fmtMs(snapshotReadyBig)} (${fmtMs(medD(big, (d) => d.snapshotReadyCpuMs))} CPU); ${fmtMs(readyBig)} (${fmtMs(medD(big, (d) => d.readyCpuMs))} CPU)`,
          target: '<= 2 s',
          verdict: snapshotReadyBig <= 2_000 ? 'met' : 'missed',
        },
        { measure: `scheduler CPU per 1,000 refreshes at ${fmt(big)} (engine + store; heap alone)`, result: `${fmt(median(reload.get(big)!.map(perK)), 0)} ms; ${fmt(schedPerK(big), 1)} ms`, target: 'reported', verdict: 'reported' },
        {
          measure: `growth ${sizes.map((n) => fmt(n)).join(' -> ')} (engine +RSS and \`start()\`; CPU per refresh)`,
          result: `totals ${totalGrowthOk ? 'within' : 'beyond'} n log n; per refresh x${perRefreshGrowth.toFixed(2)} (log n: x${logBound.toFixed(2)})`,
          target: 'no faster than n log n',
          verdict: totalGrowthOk && perRefreshGrowth <= logBound ? 'met' : 'missed',
        },
      ],
      body,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await runAlone('scale', import.meta.url, run);
