import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort, sleep } from './daemon.js';

export interface RedisServer {
  url: string;
  port: number;
  proc: ChildProcess;
  /** Freeze the server (SIGSTOP): connections stay open but nothing answers, like a network partition. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

const redisAvailable = spawnSync('redis-server', ['--version']).status === 0;

/**
 * Whether Redis tests run here. Without `redis-server` they are skipped with a loud notice, unless
 * SIDECAR_TEST_REQUIRE_REDIS=1 (set by .ci/run), which turns the skip into a failure.
 */
export function redisTestsEnabled(suite: string): boolean {
  if (redisAvailable) return true;
  if (process.env.SIDECAR_TEST_REQUIRE_REDIS === '1') throw new Error(`${suite}: redis-server is required (SIDECAR_TEST_REQUIRE_REDIS=1) but not installed`);
  console.warn(`\n!!! ${suite}: SKIPPED — redis-server is not installed (apt-get install -y redis-server) !!!\n`);
  return false;
}

/** Whether all 32 shards under `prefix` are owned, by exactly `replicas` processes (their lease records name their pids). */
export async function shardsSpread(client: Redis, prefix: string, replicas: number): Promise<boolean> {
  const owners = await client.mget(Array.from({ length: 32 }, (_, s) => `${prefix}shard:${s}:owner`));
  return owners.every(Boolean) && new Set(owners.map((o) => o!.split('-')[0])).size === replicas;
}

/** A real redis-server on a free loopback port with AOF on (appendfsync everysec), in its own directory. */
export async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-redis-'));
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec'], {
    stdio: 'ignore',
  });
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => undefined);
  for (let i = 0; ; i++) {
    try {
      await probe.connect();
      await probe.ping();
      break;
    } catch {
      if (i > 100) throw new Error('redis-server did not start');
      await sleep(50);
    }
  }
  probe.disconnect();
  return {
    url,
    port,
    proc,
    pause: () => void proc.kill('SIGSTOP'),
    resume: () => void proc.kill('SIGCONT'),
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGCONT');
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
    },
  };
}

/** A primary, one replica and three sentinels (`redis-server --sentinel`) watching them as `masterName`, on loopback. */
export interface SentinelCluster {
  masterName: string;
  /** SIDECAR_STORE for the sidecars: every sentinel and the master's name. */
  storeUrl: string;
  primary: ChildProcess;
  primaryPort: number;
  replicaPort: number;
  /** The master's port as the sentinels report it now. */
  masterPort(): Promise<number | null>;
  stop(): Promise<void>;
}

function spawnRedis(args: string[]): ChildProcess {
  return spawn('redis-server', args, { stdio: 'ignore' });
}

async function redisAnswers(port: number): Promise<void> {
  const probe = new Redis(`redis://127.0.0.1:${port}`, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => undefined);
  try {
    for (let i = 0; ; i++) {
      try {
        if (probe.status !== 'ready') await probe.connect();
        await probe.ping();
        return;
      } catch {
        if (i > 200) throw new Error(`redis on port ${port} did not start`);
        await sleep(50);
      }
    }
  } finally {
    probe.disconnect();
  }
}

export async function startSentinelCluster(masterName = 'mymaster'): Promise<SentinelCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-sentinel-'));
  const [primaryPort, replicaPort] = [await freePort(), await freePort()];
  const procs: ChildProcess[] = [];
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec'];
  mkdirSync(join(dir, 'primary'));
  mkdirSync(join(dir, 'replica'));
  const primary = spawnRedis(['--port', String(primaryPort), '--dir', join(dir, 'primary'), ...common]);
  procs.push(primary);
  await redisAnswers(primaryPort);
  procs.push(spawnRedis(['--port', String(replicaPort), '--dir', join(dir, 'replica'), '--replicaof', '127.0.0.1', String(primaryPort), ...common]));
  await redisAnswers(replicaPort);
  const sentinelPorts: number[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    sentinelPorts.push(port);
    const conf = join(dir, `sentinel-${i}.conf`);
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor ${masterName} 127.0.0.1 ${primaryPort} 2`,
        `sentinel down-after-milliseconds ${masterName} 1000`,
        `sentinel failover-timeout ${masterName} 10000`,
        `sentinel parallel-syncs ${masterName} 1`,
        '',
      ].join('\n'),
    );
    procs.push(spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' }));
    await redisAnswers(port);
  }
  const sentinel = new Redis(`redis://127.0.0.1:${sentinelPorts[0]}`, { maxRetriesPerRequest: 1 });
  sentinel.on('error', () => undefined);
  return {
    masterName,
    storeUrl: `redis+sentinel://${sentinelPorts.map((p) => `127.0.0.1:${p}`).join(',')}/${masterName}`,
    primary,
    primaryPort,
    replicaPort,
    async masterPort() {
      const addr = (await sentinel.call('SENTINEL', 'get-master-addr-by-name', masterName)) as [string, string] | null;
      return addr ? Number(addr[1]) : null;
    },
    async stop() {
      sentinel.disconnect();
      for (const p of procs) {
        if (p.exitCode !== null || p.signalCode !== null) continue;
        p.kill('SIGKILL');
        await new Promise((r) => p.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
