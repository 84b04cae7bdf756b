import { appendFileSync } from 'node:fs';
import { spawnDaemon, sleep, type ChildDaemon } from '../helpers/daemon.js';

/**
 * The daemon as a supervised child process on one fixed port and one SQLite file: SIGKILLed and restarted on demand,
 * restarted as well (and counted) if it ever exits by itself. Its output goes to a log file.
 */
export class DaemonSupervisor {
  kills = 0;
  restarts = 0;
  unexpectedExits: string[] = [];
  readonly restartMs: number[] = [];
  private child: ChildDaemon | null = null;
  private up = false;
  private stopping = false;
  private expectExit = false;
  private restarting: Promise<void> | null = null;

  constructor(
    private readonly env: Record<string, string>,
    readonly port: number,
    private readonly logFile: string,
  ) {
    process.once('exit', () => {
      if (this.child && this.child.proc.exitCode === null && this.child.proc.signalCode === null) this.child.kill('SIGKILL');
    });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get isUp(): boolean {
    return this.up;
  }

  async start(): Promise<void> {
    let lastErr: unknown;
    for (let attempt = 0; attempt < 5 && !this.stopping; attempt++) {
      try {
        const child = await spawnDaemon(this.env, this.port);
        this.child = child;
        this.up = true;
        void child.exited.then((code) => this.onExit(child, code));
        return;
      } catch (err) {
        lastErr = err;
        this.log(`daemon start failed (attempt ${attempt + 1}): ${err instanceof Error ? err.message : String(err)}`);
        await sleep(500);
      }
    }
    if (!this.stopping) throw new Error(`the daemon would not start: ${String(lastErr)}`);
  }

  /** SIGKILL, then start again on the same port and file after `pauseMs`. */
  async killAndRestart(pauseMs: number): Promise<void> {
    await this.restarting;
    const child = this.child;
    if (!child || this.stopping) return;
    this.expectExit = true;
    this.up = false;
    const t0 = Date.now();
    child.kill('SIGKILL');
    await child.exited;
    this.flush(child);
    this.expectExit = false;
    this.kills++;
    this.log(`--- SIGKILL #${this.kills} ---`);
    await sleep(pauseMs);
    if (this.stopping) return;
    await this.start();
    this.restarts++;
    this.restartMs.push(Date.now() - t0);
  }

  /** SIGTERM, and SIGKILL if it has not exited within `timeoutMs`. Returns the exit code. */
  async stop(timeoutMs = 20_000): Promise<number | null> {
    this.stopping = true;
    await this.restarting?.catch(() => undefined);
    const child = this.child;
    if (!child || child.proc.exitCode !== null || child.proc.signalCode !== null) return child?.proc.exitCode ?? null;
    this.expectExit = true;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const code = await child.exited;
    clearTimeout(timer);
    this.up = false;
    this.flush(child);
    return code;
  }

  /** Appends what the daemon printed since the last call to the log file. */
  flush(child: ChildDaemon | null = this.child): void {
    if (!child || child.output.length === 0) return;
    appendFileSync(this.logFile, child.output.splice(0).join('\n') + '\n');
  }

  log(line: string): void {
    appendFileSync(this.logFile, `[soak ${new Date().toISOString()}] ${line}\n`);
  }

  private onExit(child: ChildDaemon, code: number | null): void {
    if (child !== this.child || this.expectExit || this.stopping) return;
    this.up = false;
    this.flush(child);
    const what = `the daemon exited by itself (code ${code}, signal ${child.proc.signalCode ?? 'none'})`;
    this.unexpectedExits.push(what);
    this.log(what);
    this.restarting = this.start().finally(() => {
      this.restarting = null;
    });
  }
}
