/**
 * The LiveKit configuration we tell operators to write (docs/operations.md, "Pointing LiveKit at it", and the
 * `livekit:` map of deploy/*\/livekit-values.yaml) fed to the real livekit-server: it must start with it and deliver
 * webhooks, signed with the `webhook.api_key` we document, that the daemon configured with the matching preset's
 * LIVEKIT_KEYS verifies and accepts. Only the addresses are moved to free loopback ports; keys, api_key and the
 * webhook path are the documented ones. Needs livekit-server from `npm run peers:install` (skipped loudly without
 * it, failing with SIDECAR_TEST_REQUIRE_PEERS=1).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RoomServiceClient } from 'livekit-server-sdk';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort, startDaemon, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { REPO_ROOT, livekitServerEnabled, toolPath } from '../helpers/deploy-tools.js';

const read = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');

interface LiveKitConfig {
  keys: Record<string, string>;
  webhook: { api_key: string; urls: string[] };
  [key: string]: unknown;
}

/** The LiveKit config block of docs/operations.md: the yaml block of "Pointing LiveKit at it". */
function docsSnippet(): LiveKitConfig {
  const doc = read('docs/operations.md');
  const section = doc.slice(doc.indexOf('## Pointing LiveKit at it'));
  const block = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
  expect(block, 'a yaml block under "Pointing LiveKit at it"').toBeDefined();
  return (parse(block!) as { livekit: LiveKitConfig }).livekit;
}

const livekitValues = (file: string): LiveKitConfig => (parse(read(file)) as { livekit: LiveKitConfig }).livekit;
const presetKeys = (file: string): string => (parse(read(file)) as { secret: { livekitKeys: string } }).secret.livekitKeys;

/**
 * Each documented LiveKit config with the LIVEKIT_KEYS an operator following the same docs gives the daemon: the
 * futures-sidecar preset beside it, or for the docs snippet the standalone preset it goes with.
 */
const CASES: [string, () => LiveKitConfig, string][] = [
  ['docs/operations.md', docsSnippet, 'deploy/standalone/futures-sidecar-values.yaml'],
  ['deploy/standalone/livekit-values.yaml', () => livekitValues('deploy/standalone/livekit-values.yaml'), 'deploy/standalone/futures-sidecar-values.yaml'],
  ['deploy/livekit-sidecar/livekit-values.yaml', () => livekitValues('deploy/livekit-sidecar/livekit-values.yaml'), 'deploy/livekit-sidecar/futures-sidecar-values.yaml'],
];

/** The real LiveKit server on free loopback ports, started with `config` written to a file. */
async function startLiveKit(config: Record<string, unknown>, dir: string): Promise<{ url: string; proc: ChildProcess; output: string[]; stop(): Promise<void> }> {
  const file = join(dir, 'livekit.yaml');
  writeFileSync(file, stringify(config));
  const proc = spawn(toolPath('livekit-server'), ['--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  proc.stdout!.on('data', (d) => output.push(String(d)));
  proc.stderr!.on('data', (d) => output.push(String(d)));
  const exited = new Promise<void>((resolve) => proc.once('close', () => resolve())); // after its output is read
  const url = `http://127.0.0.1:${config.port as number}`;
  // A config LiveKit refuses (strict: unknown keys too) ends the process; that is the answer, no need to wait on.
  const refused = exited.then(() => {
    throw new Error(`livekit-server stopped (exit code ${proc.exitCode}) with this config`);
  });
  try {
    await Promise.race([waitFor('livekit-server to answer', async () => (await fetch(url)).ok, 30_000, 100), refused]);
  } catch (err) {
    proc.kill('SIGKILL');
    throw new Error(`${(err as Error).message}\n${output.join('')}`, { cause: err });
  }
  refused.catch(() => undefined);
  return {
    url,
    proc,
    output,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    },
  };
}

/** A counter's value from /metrics text, 0 when the series is not there. */
function sample(metrics: string, name: string, labels: Record<string, string>): number {
  for (const line of metrics.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const [, body, value] = /^[^{]+\{([^}]*)\}\s+(\S+)/.exec(line) ?? [];
    const got = Object.fromEntries([...(body ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(value);
  }
  return 0;
}

describe.runIf(livekitServerEnabled('LiveKit accepting the documented config'))('the documented LiveKit config on the real livekit-server', () => {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-livekit-config-'));
  const running: { stop(): Promise<void> }[] = [];
  afterAll(async () => {
    for (const r of running.reverse()) await r.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(CASES)('%s: LiveKit starts with it and its signed webhooks are accepted', async (_name, load, preset) => {
    const documented = load();
    const [webhookUrl] = documented.webhook.urls;
    const path = new URL(webhookUrl!).pathname;
    expect(['/livekit/webhook', '/sfu_webhook']).toContain(path);
    expect(Object.keys(documented.keys)).toContain(documented.webhook.api_key);

    const daemon: RunningDaemon = await startDaemon({ LIVEKIT_KEYS: presetKeys(preset), LOG_LEVEL: 'warn' });
    running.push(daemon);
    const [port, rtcPort] = [await freePort(), await freePort()];
    const livekit = await startLiveKit(
      {
        ...documented,
        port,
        bind_addresses: ['127.0.0.1'],
        // Media ports and the node address only; no STUN lookups, nothing beyond loopback.
        rtc: { tcp_port: rtcPort, udp_port: rtcPort, node_ip: '127.0.0.1', use_external_ip: false },
        webhook: { ...documented.webhook, urls: [new URL(path, daemon.url).toString()] },
        logging: { level: 'info' },
      },
      dir,
    );
    running.push(livekit);

    // The API key LiveKit signs its webhooks with also signs RoomService calls.
    const key = documented.webhook.api_key;
    const rooms = new RoomServiceClient(livekit.url, key, documented.keys[key]!);
    const room = `deploy-check-${port}`;
    await rooms.createRoom({ name: room, emptyTimeout: 60 });
    await rooms.deleteRoom(room);

    const metrics = async () => (await fetch(`${daemon.url}/metrics`)).text();
    const text = await waitFor('room_finished accepted by the daemon', async () => {
      const t = await metrics();
      return sample(t, 'futures_sidecar_webhooks_total', { event: 'room_finished', outcome: 'accepted' }) >= 1 ? t : null;
    }, 20_000, 100);
    // room_started is verified too (then ignored: no participant is affected); nothing failed verification.
    expect(sample(text, 'futures_sidecar_webhooks_total', { event: 'other', outcome: 'ignored' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'futures_sidecar_webhooks_total', { event: 'unverified', outcome: 'rejected' })).toBe(0);
  }, 90_000);
});
