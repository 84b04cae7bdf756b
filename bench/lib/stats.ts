/** Nearest-rank percentile of unsorted values (p in [0, 100]); NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}


/** `1234.5` -> `1,235`; fixed decimals below 100. */
export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return String(n);
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  if (ms >= 10_000) return `${fmt(ms / 1000, 1)} s`;
  if (ms >= 1000) return `${fmt(ms / 1000, 2)} s`;
  if (ms >= 10) return `${fmt(ms, 0)} ms`;
  return `${fmt(ms, 2)} ms`;
}

export function fmtMiB(bytes: number): string {
  return `${fmt(bytes / 2 ** 20, 0)} MiB`;
}

/** The runs' values, e.g. `1.2 / 1.3 / 1.1`, for the detail tables. */
export function runs(values: readonly number[], f: (v: number) => string): string {
  return values.map(f).join(' / ');
}

/** Wall-clock milliseconds since the epoch with sub-millisecond resolution, comparable across processes. */
export function hrNow(): number {
  return performance.timeOrigin + performance.now();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
