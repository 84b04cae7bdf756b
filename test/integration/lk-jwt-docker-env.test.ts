/**
 * Swap the image, keep the environment: lk-jwt-service's documented `docker run -e ...` environment (its README)
 * starts the daemon, which answers `/healthz` on lk-jwt-service's default `:8080`. The daemon runs in a network
 * namespace of its own (only a loopback device), so port 8080 is free whatever else runs on this machine and no
 * packet can leave (`LIVEKIT_URL=ws://somewhere` is never dialled without delegations, and could not be).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/** `docker run -e LIVEKIT_URL="ws://somewhere" -e LIVEKIT_KEY=devkey -e LIVEKIT_SECRET=secret -e LIVEKIT_FULL_ACCESS_HOMESERVERS=example.com -p 8080:8080 ...` */
const README_DOCKER_ENV = {
  LIVEKIT_URL: 'ws://somewhere',
  LIVEKIT_KEY: 'devkey',
  LIVEKIT_SECRET: 'secret',
  LIVEKIT_FULL_ACCESS_HOMESERVERS: 'example.com',
};

const canUnshareNet = spawnSync('unshare', ['--net', 'true']).status === 0;
if (!canUnshareNet) console.warn('SKIPPED lk-jwt-docker-env: `unshare --net` is not permitted here (needs root or user namespaces)');

// Inside the namespace: bring lo up, start the daemon, poll /healthz on both loopback families until a deadline,
// then stop it with SIGTERM and report its exit code (or 9x for what went wrong).
const SCRIPT = `
ip link set lo up || exit 90
"$NODE" --import tsx src/main.ts & pid=$!
probe() { "$NODE" -e "fetch('$1').then(r => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"; }
deadline=$(( $(date +%s) + 40 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; echo "daemon exited early: $?"; exit 91; fi
  if probe http://127.0.0.1:8080/healthz; then
    probe 'http://[::1]:8080/healthz' || { echo "not on ::1"; kill -KILL "$pid"; exit 93; }
    echo HEALTHZ_OK
    kill -TERM "$pid"; wait "$pid"; code=$?; echo "EXIT $code"; exit "$code"
  fi
  sleep 0.2
done
kill -KILL "$pid"; exit 92
`;

describe.skipIf(!canUnshareNet)("lk-jwt-service's documented docker environment", () => {
  it('starts the daemon on :8080 (every interface) with nothing else but a store path, and /healthz answers 200', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-docker-env-'));
    try {
      const proc = spawn('unshare', ['--net', '--fork', 'sh', '-c', SCRIPT], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', NODE: process.execPath, ...README_DOCKER_ENV, SIDECAR_STORE: `sqlite:${join(dir, 'store.db')}` },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const output: string[] = [];
      proc.stdout.on('data', (d) => output.push(String(d)));
      proc.stderr.on('data', (d) => output.push(String(d)));
      const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
      const text = output.join('');
      expect(text, text).toContain('HEALTHZ_OK');
      expect(code, text).toBe(0);
      // Started as lk-jwt-service would be: its listen default, no --dev.
      expect(text).toMatch(/"address":"http:\/\/\[::\]:8080"|"address":"http:\/\/0\.0\.0\.0:8080"/);
      expect(text).not.toContain('--dev');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
