import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../test/helpers/daemon.js';
import { sleep } from './stats.js';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const MAIN = join(ROOT, 'dist/src/main.js');


function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** `npm run build` when dist/ is missing or older than src/, so the daemon runs as it ships (no tsx transform). */
export function ensureBuilt(log: (s: string) => void = () => {}): void {
  if (existsSync(MAIN) && statSync(MAIN).mtimeMs >= newestMtime(join(ROOT, 'src'))) return;
  log('building the daemon (npm run build)');
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'inherit' });
}

export interface BuiltDaemon {
  url: string;
  pid: number;
  proc: ChildProcess;
  stderr: string[];
  /** SIGTERM, then wait for the exit (a CPU profile is written then). */
  stop(): Promise<number | null>;
}

/**
 * The built daemon (`node dist/src/main.js`) as its own process, configured only by the environment (no `--dev`,
 * whose request logging would be measured too). Ready once `/readyz` answers 200, i.e. after the store is loaded.
 */
export async function startBuiltDaemon(env: Record<string, string>, opts: { nodeArgs?: string[]; readyTimeoutMs?: number; main?: string } = {}): Promise<BuiltDaemon> {
  const port = await freePort();
  const proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), opts.main ?? MAIN], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      SIDECAR_HOST: '127.0.0.1',
      SIDECAR_PORT: String(port),
      LIVEKIT_URL: 'http://127.0.0.1:9',
      LOG_LEVEL: 'info',
      SIDECAR_SHUTDOWN_TIMEOUT_MS: '5000',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const stderr: string[] = [];
  proc.stderr!.on('data', (d) => {
    if (stderr.length < 200) stderr.push(String(d));
  });
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 60_000);
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`daemon exited early (${proc.exitCode}): ${stderr.join('')}`);
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`daemon not ready: ${stderr.join('')}`);
    }
    await sleep(50);
  }
  return {
    url,
    pid: proc.pid!,
    proc,
    stderr,
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** One counter or gauge from a Prometheus text page, summed over the series whose labels include `labels`. */
export function metricValue(page: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of page.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const set = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) total += Number(m[3]);
  }
  return total;
}

export async function scrape(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}
