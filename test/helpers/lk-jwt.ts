import { spawn, type ChildProcess } from 'node:child_process';
import { freePort, sleep } from './daemon.js';

export interface BareDaemon {
  url: string;
  proc: ChildProcess;
  output: string[];
  stop(): Promise<void>;
}

/**
 * The daemon as its own process with exactly `env` (plus PATH and HOME for Node itself): no `--dev`, nothing of
 * `testEnv`. Ready once `/healthz` answers 200 at `probeUrl`.
 */
export async function spawnBareDaemon(env: Record<string, string>, probeUrl: string, args: string[] = []): Promise<BareDaemon> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  proc.stdout!.on('data', (d) => output.push(...String(d).split('\n').filter(Boolean)));
  proc.stderr!.on('data', (d) => output.push(...String(d).split('\n').filter(Boolean)));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`daemon exited early (${proc.exitCode}):\n${output.join('\n')}`);
    try {
      if ((await fetch(`${probeUrl}/healthz`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`daemon did not answer /healthz:\n${output.join('\n')}`);
    }
    await sleep(100);
  }
  return {
    url: probeUrl,
    proc,
    output,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** A loopback listen address for LIVEKIT_JWT_BIND and the URL it serves. */
export async function loopbackBind(): Promise<{ bind: string; url: string }> {
  const port = await freePort();
  return { bind: `127.0.0.1:${port}`, url: `http://127.0.0.1:${port}` };
}

export interface JsonAnswer {
  status: number;
  headers: Headers;
  text: string;
  json: Record<string, any> | undefined;
}

/** One request with a JSON (or raw string) body, as Element Call sends it; the answer parsed when it is JSON. */
export async function requestJson(url: string, method: string, body?: unknown, headers: Record<string, string> = {}): Promise<JsonAnswer> {
  const init: RequestInit = { method, headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers } };
  if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
  const res = await fetch(url, init);
  const text = await res.text();
  let json: Record<string, any> | undefined;
  try {
    json = JSON.parse(text) as Record<string, any>;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}
