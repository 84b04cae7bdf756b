/**
 * What the demo writes: timeline lines, a progress line that updates in place on a terminal (and prints as plain
 * lines when the output is piped, so logs and tests read it as text), and tables.
 */

const CLEAR_LINE = '\r\u001b[2K';

export class DemoConsole {
  private readonly tty: boolean;
  private status = '';
  private ticker: NodeJS.Timeout | null = null;
  private phase = '';
  private step = 0;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly startedAt: number,
    private readonly totalSteps: number,
    private readonly counters: () => string,
  ) {
    this.tty = out.isTTY === true && process.env['NO_PROGRESS'] === undefined;
  }

  /** Seconds since the start, as the timeline shows them. */
  elapsed(at = Date.now()): string {
    return `+${((at - this.startedAt) / 1000).toFixed(2).padStart(5)}s`;
  }

  /** One timeline line: time, who, what. */
  event(who: string, what: string, at = Date.now()): void {
    this.write(`${this.elapsed(at)}  ${who.padEnd(10)}  ${what}`);
  }

  write(text: string): void {
    if (this.tty && this.status) this.out.write(CLEAR_LINE);
    this.out.write(`${text}\n`);
    if (this.tty && this.status) this.out.write(this.status);
  }

  /** A new step of the script; on a terminal it goes into the progress line, otherwise it is printed. */
  next(phase: string): void {
    this.step++;
    this.phase = phase;
    if (this.tty) this.redraw();
    else this.write(`progress: [${this.step}/${this.totalSteps}] ${phase}`);
  }

  startTicker(): void {
    if (!this.tty || this.ticker) return;
    this.ticker = setInterval(() => this.redraw(), 100);
    this.ticker.unref();
  }

  stopTicker(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    if (this.tty && this.status) this.out.write(CLEAR_LINE);
    this.status = '';
  }

  private redraw(): void {
    if (!this.tty) return;
    const bar = progressBar(this.step, this.totalSteps, 16);
    const text = `${bar} ${this.elapsed().trim()}  [${this.step}/${this.totalSteps}] ${this.phase}  · ${this.counters()}`;
    const width = this.out.columns ?? 120;
    this.status = text.length > width - 1 ? `${text.slice(0, width - 2)}…` : text;
    this.out.write(CLEAR_LINE + this.status);
  }
}

function progressBar(done: number, total: number, width: number): string {
  const filled = Math.round((Math.min(done, total) / total) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

/** A plain-text table with a header rule; columns as wide as their widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
