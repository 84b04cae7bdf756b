import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { buildApp, type AppDeps, type Daemon } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';

export const API_KEY = 'devkey';
export const API_SECRET = 'secret';
export const ADMIN_TOKEN = 'admin-token-for-tests-0123456789';

export function tempDbPath(name = 'sidecar'): string {
  return join(mkdtempSync(join(tmpdir(), 'futures-sidecar-')), `${name}.db`);
}

/** Settings that make lifecycles fit in a test: short grace and join deadline, a generous homeserver rate. */
export function testEnv(overrides: Record<string, string> = {}): Record<string, string> {
  return {
    SIDECAR_STORE: `sqlite:${tempDbPath()}`,
    // Nothing listens on port 1: reconciliation fails fast instead of asking whatever LiveKit another process on
    // this machine runs at the default 127.0.0.1:7880 (tests that need RoomService set their own fake's URL).
    LIVEKIT_URL: 'http://127.0.0.1:1',
    SIDECAR_RECONNECT_GRACE_MS: '600',
    SIDECAR_JOIN_TIMEOUT_MS: '60000',
    SIDECAR_MIN_TIMEOUT_MS: '1000',
    SIDECAR_HOMESERVER_RATE: '200',
    SIDECAR_ADMIN_TOKEN: ADMIN_TOKEN,
    SIDECAR_RATE_LIMIT_PER_MINUTE: '100000',
    SIDECAR_RATE_LIMIT_PER_IDENTITY_PER_MINUTE: '10000',
    LOG_LEVEL: 'silent',
    ...overrides,
  };
}

export interface RunningDaemon {
  url: string;
  daemon: Daemon;
  logs: string[];
  stop(): Promise<void>;
}

/** The daemon in this process on a real port, logging into `logs` (one JSON line each). */
export async function startDaemon(env: Record<string, string> = {}, deps: AppDeps = {}): Promise<RunningDaemon> {
  const config = loadConfig(testEnv(env), { dev: true });
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  const logger = pino({ level: env.LOG_LEVEL ?? 'debug', redact: { paths: (await import('../../src/log.js')).REDACTED_PATHS, censor: '[redacted]' } }, sink);
  const daemon = await buildApp(config, { logger, ...deps });
  await daemon.start();
  const address = await daemon.app.listen({ host: '127.0.0.1', port: 0 });
  let stopped = false;
  return {
    url: address,
    daemon,
    logs,
    async stop() {
      if (stopped) return;
      stopped = true;
      await daemon.shutdown();
    },
  };
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface ChildDaemon {
  url: string;
  proc: ChildProcess;
  output: string[];
  exited: Promise<number | null>;
  kill(signal: NodeJS.Signals): void;
}

/**
 * The daemon as its own process (`tsx src/main.ts --dev`), for crash and signal tests. Without `port` it listens on
 * a port the kernel picks and reports in its log: a port probed free beforehand can be taken by another worker (or
 * by an outgoing connection's source port) before the child binds it.
 */
export async function spawnDaemon(env: Record<string, string>, port?: number, opts: { dev?: boolean } = {}): Promise<ChildDaemon> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...(opts.dev === false ? [] : ['--dev'])], {
    // Not in dev: exactly `env` (an operator's), which says where to listen itself.
    env: opts.dev === false ? { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...env } : { ...process.env, ...testEnv(env), SIDECAR_PORT: String(port ?? 0), SIDECAR_HOST: '127.0.0.1', LOG_LEVEL: env.LOG_LEVEL ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  proc.stdout!.on('data', (d) => output.push(...String(d).split('\n').filter(Boolean)));
  proc.stderr!.on('data', (d) => output.push(...String(d).split('\n').filter(Boolean)));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  // A loaded 2-core machine can take tens of seconds to start Node with tsx: wait on readiness, generously.
  const deadline = Date.now() + 90_000;
  let url: string | null = port === undefined ? null : `http://127.0.0.1:${port}`;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`daemon exited early (${proc.exitCode}):\n${output.join('\n')}`);
    url ??= listeningAddress(output);
    try {
      if (url && (await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`daemon did not become ready:\n${output.join('\n')}`);
    }
    await sleep(100);
  }
  return { url, proc, output, exited, kill: (s) => proc.kill(s) };
}

/** The address from the daemon's "listening" log line, once it is there. */
function listeningAddress(output: string[]): string | null {
  for (const line of output) {
    if (!line.includes('futures-sidecar listening')) continue;
    try {
      const address = (JSON.parse(line) as { address?: unknown }).address;
      if (typeof address === 'string') return address;
    } catch {
      // not a JSON log line
    }
  }
  return null;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until `check` returns a truthy value, or fails with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(everyMs);
  }
}

export async function api(
  url: string,
  method: string,
  path: string,
  /** `forwardedFor`: the client address a trusted proxy would report (the daemon must trust 127.0.0.1 as a proxy). */
  opts: { token?: string; body?: unknown; rawBody?: string; contentType?: string; forwardedFor?: string } = {},
): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.forwardedFor) headers['x-forwarded-for'] = opts.forwardedFor;
  let body: string | undefined;
  if (opts.rawBody !== undefined) body = opts.rawBody;
  else if (opts.body !== undefined) body = JSON.stringify(opts.body);
  if (body !== undefined) headers['content-type'] = opts.contentType ?? 'application/json';
  const res = await fetch(url + path, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed };
}
