import { readFileSync } from 'node:fs';
import { ROOT } from './daemon.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  startTime: number;
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

interface FrameCost {
  what: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** Busy time: every sample but `(idle)`. */
  busyMs: number;
  topSelf: FrameCost[];
  byArea: FrameCost[];
  /** Time with the frame anywhere on the stack, for the frames asked for. */
  inclusive: FrameCost[];
}

/** Where a frame's code lives: an npm package, the daemon's own module, Node's internals, or V8's pseudo-frames. */
function areaOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  if (url.startsWith('node:')) return url;
  const own = /\/(?:dist\/)?src\/(.+?)\.(?:js|ts)$/.exec(url);
  if (own) return `daemon: ${own[1]}`;
  return url.replace(`file://${ROOT}/`, '');
}

function label(f: ProfileNode['callFrame']): string {
  // The daemon's own frames come from compiled or tsx-transformed code: their line numbers are not the sources'.
  const area = f.url ? areaOf(f.url, f.functionName) : '';
  const where = area ? (area.startsWith('daemon: ') ? area : `${area}:${f.lineNumber + 1}`) : '';
  return `${f.functionName || '(anonymous)'}${where ? ` (${where})` : ''}`;
}

/** Microseconds on the monotonic clock V8 stamps profiles with (CLOCK_MONOTONIC, as `process.hrtime`). */
export function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * Self time per frame and per area of a V8 `.cpuprofile` (`node --cpu-prof`), plus inclusive time for frames whose
 * label contains one of `inclusiveOf`. `window` (from `monotonicUs()` in any process) keeps only the samples taken
 * inside it, e.g. the measured phase without start-up.
 */
export function summariseCpuProfile(path: string, opts: { inclusiveOf?: string[]; window?: [number, number]; top?: number } = {}): ProfileSummary {
  const inclusiveOf = opts.inclusiveOf ?? [];
  const top = opts.top ?? 15;
  const p = JSON.parse(readFileSync(path, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<string, number>();
  const area = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  let idle = 0;
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    if (opts.window && (t < opts.window[0] || t > opts.window[1])) continue;
    const ms = (p.timeDeltas[i] ?? 0) / 1000;
    const node = byId.get(p.samples[i]!);
    if (!node) continue;
    total += ms;
    if (node.callFrame.functionName === '(idle)') {
      idle += ms;
      continue;
    }
    const key = label(node.callFrame);
    self.set(key, (self.get(key) ?? 0) + ms);
    const a = areaOf(node.callFrame.url, node.callFrame.functionName);
    area.set(a, (area.get(a) ?? 0) + ms);
    if (inclusiveOf.length) {
      const seen = new Set<string>();
      for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
        const l = label(byId.get(id)!.callFrame);
        for (const want of inclusiveOf) if (l.includes(want)) seen.add(want);
      }
      for (const s of seen) incl.set(s, (incl.get(s) ?? 0) + ms);
    }
  }
  const busy = total - idle;
  const rank = (m: Map<string, number>, n: number): FrameCost[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([what, ms]) => ({ what, ms, share: ms / busy }));
  return { totalMs: total, busyMs: busy, topSelf: rank(self, top), byArea: rank(area, 12), inclusive: rank(incl, inclusiveOf.length) };
}

export function profileMarkdown(s: ProfileSummary, title: string): string {
  const row = (f: FrameCost): string => `| ${f.what.replace(/\|/g, '\\|')} | ${f.ms.toFixed(0)} | ${(f.share * 100).toFixed(1)} % |`;
  const out = [
    `${title}: ${(s.busyMs / 1000).toFixed(1)} s of CPU samples on the main thread (idle excluded) in ${(s.totalMs / 1000).toFixed(1)} s.`,
    '',
    '| self time by area | ms | share of busy |',
    '|---|---:|---:|',
    ...s.byArea.map(row),
    '',
    '| top frames by self time | ms | share of busy |',
    '|---|---:|---:|',
    ...s.topSelf.map(row),
  ];
  if (s.inclusive.length) out.push('', '| inclusive (frame anywhere on the stack) | ms | share of busy |', '|---|---:|---:|', ...s.inclusive.map(row));
  return out.join('\n');
}

export interface Stretch {
  ms: number;
  /** The frames with the most self time inside the stretch, with their ms. */
  top: Array<{ what: string; ms: number }>;
}

/**
 * The longest runs of consecutive busy samples (no `(idle)` between them) inside `window`: how long the event loop
 * was held at a time, and by what. A request arriving then waits at least that long.
 */
export function longestBusyStretches(path: string, window: [number, number], count = 5): Stretch[] {
  const p = JSON.parse(readFileSync(path, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>(p.nodes.map((n) => [n.id, n]));
  const stretches: Array<{ ms: number; self: Map<string, number> }> = [];
  let current: { ms: number; self: Map<string, number> } | null = null;
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    if (t < window[0] || t > window[1]) continue;
    const node = byId.get(p.samples[i]!);
    const ms = (p.timeDeltas[i] ?? 0) / 1000;
    if (!node || node.callFrame.functionName === '(idle)') {
      if (current) stretches.push(current);
      current = null;
      continue;
    }
    current ??= { ms: 0, self: new Map() };
    current.ms += ms;
    const key = label(node.callFrame);
    current.self.set(key, (current.self.get(key) ?? 0) + ms);
  }
  if (current) stretches.push(current);
  return stretches
    .sort((a, b) => b.ms - a.ms)
    .slice(0, count)
    .map((s) => ({
      ms: s.ms,
      top: [...s.self.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 3)
        .map(([what, ms]) => ({ what, ms })),
    }));
}

export function stretchesMarkdown(stretches: Stretch[]): string {
  return [
    '| busy without a break | where the time went (self) |',
    '|---:|---|',
    ...stretches.map((s) => `| ${s.ms.toFixed(1)} ms | ${s.top.map((f) => `${f.what.replace(/\|/g, '\\|')} ${f.ms.toFixed(1)} ms`).join('; ')} |`),
  ].join('\n');
}
