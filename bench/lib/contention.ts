import { readFileSync, readdirSync } from 'node:fs';
import { sleep } from './stats.js';

const TICKS_PER_S = 100;

function machineTicks(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

function procStat(pid: number): { ppid: number; ticks: number } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return null;
  }
}

/** CPU time one process has used so far, in ms (user + system; 10 ms ticks). */
export function processCpuMs(pid: number): number {
  const st = procStat(pid);
  return st ? (st.ticks * 1000) / TICKS_PER_S : NaN;
}

/** CPU ticks of this process and every descendant (daemons, fakes, load generators). */
function ourTicks(): number {
  const parent = new Map<number, number>();
  const ticks = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(Number(name));
    if (!st) continue;
    parent.set(Number(name), st.ppid);
    ticks.set(Number(name), st.ticks);
  }
  let sum = 0;
  for (const [pid, t] of ticks) {
    for (let p: number | undefined = pid, hops = 0; p !== undefined && p > 1 && hops < 64; p = parent.get(p), hops++) {
      if (p === process.pid) {
        sum += t;
        break;
      }
    }
  }
  return sum;
}

export interface Contention {
  /** CPU cores used on the machine by processes other than the benchmark's own, averaged over the window. */
  foreignCores: number;
  oursCores: number;
}

/** Measures how much of the machine other work took while a benchmark ran (Linux /proc). */
export class ContentionMeter {
  private readonly m0 = machineTicks();
  private readonly o0 = ourTicks();
  private readonly t0 = performance.now();

  stop(): Contention {
    const m = machineTicks();
    const o = ourTicks();
    const seconds = (performance.now() - this.t0) / 1000;
    const busy = (m.busy - this.m0.busy) / TICKS_PER_S / seconds;
    const ours = (o - this.o0) / TICKS_PER_S / seconds;
    // Children that exited inside the window are not counted as ours; clamp so they never show as negative load.
    return { foreignCores: Math.max(0, busy - ours), oursCores: ours };
  }
}

/**
 * Waits (at most `maxWaitMs`) until other work on the machine leaves it nearly idle for a whole second, so that a
 * run is not measured against someone else's build. Returns the foreign load seen last, in cores.
 */
export async function waitForQuiet(maxWaitMs = 60_000, threshold = 0.25): Promise<number> {
  const deadline = Date.now() + maxWaitMs;
  for (;;) {
    const meter = new ContentionMeter();
    await sleep(1000);
    const { foreignCores } = meter.stop();
    if (foreignCores <= threshold || Date.now() >= deadline) return foreignCores;
  }
}

/** Other processes' CPU above which a run is set aside and repeated (at most twice): the machine was not ours. */
export const DISTURBED_CORES = 0.3;
/** BENCH_MAX_REPEATS: fewer repeats when the machine stays busy whatever one waits (the figures say how many). */
export const MAX_REPEATS = Number(process.env.BENCH_MAX_REPEATS ?? 2);
