import { Redis } from 'ioredis';
import type { AppDeps } from '../../src/app.js';
import { startFakeHomeserver, type FakeHomeserver, type FakeHomeserverOptions } from '../fakes/homeserver.js';
import type { WebhookSender } from '../fakes/livekit.js';
import { spawnDaemon, startDaemon, type ChildDaemon, type RunningDaemon } from './daemon.js';
import { startRedis, type RedisServer } from './redis.js';
import { webhookSender } from './scenario.js';

/**
 * The setup most suites share: the daemon in this process on a real port, a fake homeserver, and the LiveKit side
 * that signs webhooks for it. `stop` closes what was started, last first.
 */
export interface DaemonWithFakes {
  hs: FakeHomeserver;
  d: RunningDaemon;
  lk: WebhookSender;
  stop(): Promise<void>;
}

export async function startDaemonWithFakes(opts: { env?: Record<string, string>; deps?: AppDeps; homeserver?: FakeHomeserverOptions } = {}): Promise<DaemonWithFakes> {
  const stack = new Stack();
  try {
    const hs = stack.push(await startFakeHomeserver(opts.homeserver), (x) => x.close());
    const d = stack.push(await startDaemon(opts.env, opts.deps), (x) => x.stop());
    return { hs, d, lk: webhookSender(d.url), stop: () => stack.unwind() };
  } catch (err) {
    await stack.unwind();
    throw err;
  }
}

/** Replicas as processes (`spawnDaemon`) sharing one Redis, with a fake homeserver and a client on that Redis. */
export interface ReplicasWithFakes {
  redis: RedisServer;
  hs: FakeHomeserver;
  client: Redis;
  replicas: ChildDaemon[];
  /** Kills every replica still running (SIGCONT first, for a frozen one), then closes the rest. */
  stop(): Promise<void>;
}

export async function startReplicasWithFakes(opts: { count: number; env: Record<string, string> }): Promise<ReplicasWithFakes> {
  const stack = new Stack();
  const replicas: ChildDaemon[] = [];
  try {
    const redis = stack.push(await startRedis(), (x) => x.stop());
    const hs = stack.push(await startFakeHomeserver(), (x) => x.close());
    const client = stack.push(new Redis(redis.url), async (x) => x.disconnect());
    stack.push(replicas, async (all) => {
      for (const r of all) {
        if (r.proc.exitCode !== null || r.proc.signalCode !== null) continue;
        r.kill('SIGCONT');
        r.kill('SIGKILL');
        await r.exited;
      }
    });
    for (let i = 0; i < opts.count; i++) replicas.push(await spawnDaemon({ SIDECAR_STORE: redis.url, ...opts.env }));
    return { redis, hs, client, replicas, stop: () => stack.unwind() };
  } catch (err) {
    await stack.unwind();
    throw err;
  }
}

/** What to close, in the reverse order of starting; a failure to close one does not keep the others open. */
class Stack {
  private readonly closers: (() => Promise<void>)[] = [];

  push<T>(thing: T, close: (thing: T) => Promise<void>): T {
    this.closers.push(() => close(thing));
    return thing;
  }

  async unwind(): Promise<void> {
    const errors: unknown[] = [];
    while (this.closers.length) {
      try {
        await this.closers.pop()!();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length) throw new AggregateError(errors, 'closing the test daemon and its fakes failed');
  }
}
