import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { FromChild, Receipt, ToChild } from './hs-child.js';

/** Parent side of `hs-child.ts`: the fake homeserver in its own process. */
export class RemoteHomeserver {
  private constructor(
    private readonly proc: ChildProcess,
    readonly url: string,
  ) {}

  static async start(): Promise<RemoteHomeserver> {
    const proc = fork(fileURLToPath(new URL('./hs-child.ts', import.meta.url)), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const ready = await next(proc, 'ready', 30_000);
    return new RemoteHomeserver(proc, ready.url);
  }

  /** Creates `count` futures (2 h by default) the way clients do, over HTTP; returns their tokens in order. */
  async createFutures(count: number, timeoutSeconds = 7200): Promise<string[]> {
    this.proc.send({ type: 'create', count, timeoutSeconds, concurrency: 16 } satisfies ToChild);
    return (await next(this.proc, 'created', 300_000)).tokens;
  }

  /** Every management call received so far, with its receipt time. */
  async receipts(): Promise<Receipt[]> {
    this.proc.send({ type: 'report' } satisfies ToChild);
    return (await next(this.proc, 'report', 60_000)).receipts;
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.send({ type: 'close' } satisfies ToChild);
    await exited;
  }
}

function next<T extends FromChild['type']>(proc: ChildProcess, type: T, timeoutMs: number): Promise<Extract<FromChild, { type: T }>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`fake homeserver: no ${type} within ${timeoutMs} ms`)), timeoutMs);
    const onMessage = (m: FromChild): void => {
      if (m.type === 'error') done(new Error(`fake homeserver: ${m.message}`));
      else if (m.type === type) done(null, m as Extract<FromChild, { type: T }>);
    };
    const onExit = (): void => done(new Error('fake homeserver exited'));
    const done = (err: Error | null, value?: Extract<FromChild, { type: T }>): void => {
      clearTimeout(timer);
      proc.off('message', onMessage);
      proc.off('exit', onExit);
      if (err) reject(err);
      else resolve(value!);
    };
    proc.on('message', onMessage);
    proc.once('exit', onExit);
  });
}
