import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
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
