import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RoomServiceClient } from 'livekit-server-sdk';
import { stringify } from 'yaml';
import { freePort, waitFor } from '../helpers/daemon.js';
import { LIVEKIT_SERVER } from './peers.js';

/** LiveKit refuses API secrets shorter than 32 characters, so the rig has its own pair (the daemon gets it too). */
export const RIG_API_KEY = 'rigkey';
export const RIG_API_SECRET = 'rig-secret-0123456789abcdef0123456789';

export interface LiveKitOptions {
  webhookUrl: string;
  /** The address clients reach the SFU at (its HTTP and ICE). 127.0.0.1 unless a scenario uses a network namespace. */
  nodeIp?: string;
}

export interface LiveKit {
  /** http:// for RoomService, ws:// for clients. */
  httpUrl: string;
  wsUrl: string;
  rooms: RoomServiceClient;
  output: () => string;
  stop(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
}

export async function startLiveKit(opts: LiveKitOptions): Promise<LiveKit> {
  // A port found free can be taken before LiveKit binds it (other suites run beside this one): try fresh ports then.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startLiveKitOnFreePorts(opts);
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startLiveKitOnFreePorts(opts: LiveKitOptions): Promise<LiveKit> {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-livekit-'));
  const nodeIp = opts.nodeIp ?? '127.0.0.1';
  const [port, tcpPort, udpPort] = [await freePort(), await freePort(), await freeUdpPort()];
  const config = {
    port,
    bind_addresses: [nodeIp],
    // Only the advertised address: LiveKit otherwise opens its UDP port on every interface and may answer a
    // participant from an address the participant has no route back to (a namespace knows only its veth pair).
    rtc: { tcp_port: tcpPort, udp_port: udpPort, node_ip: nodeIp, use_external_ip: false, enable_loopback_candidate: nodeIp === '127.0.0.1', ips: { includes: [`${nodeIp}/32`] } },
    keys: { [RIG_API_KEY]: RIG_API_SECRET },
    webhook: { api_key: RIG_API_KEY, urls: [opts.webhookUrl] },
    room: { auto_create: false },
    logging: { level: 'info', json: true },
  };
  const configPath = join(dir, 'livekit.yaml');
  writeFileSync(configPath, stringify(config));
  const httpUrl = `http://${nodeIp}:${port}`;
  const rooms = new RoomServiceClient(httpUrl, RIG_API_KEY, RIG_API_SECRET);
  let proc: ChildProcess | null = null;
  let output = '';
  const start = async () => {
    const p = spawn(LIVEKIT_SERVER, ['--config', configPath], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    proc = p;
    p.stdout!.on('data', (d) => (output += String(d)));
    p.stderr!.on('data', (d) => (output += String(d)));
    // An exit (a port taken, a config refused) is the answer at once, not after the whole wait.
    const exited = new Promise<never>((_, reject) => p.once('close', (code) => reject(new Error(`livekit-server exited (${code}): ${output.slice(-2000)}`))));
    exited.catch(() => undefined);
    await Promise.race([
      waitFor(
        'LiveKit to answer',
        async () => {
          await rooms.listRooms();
          return true;
        },
        30_000,
        100,
      ),
      exited,
    ]);
  };
  try {
    await start();
  } catch (err) {
    const p = proc as ChildProcess | null;
    if (p && p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    throw err;
  }
  return {
    httpUrl,
    wsUrl: httpUrl.replace(/^http/, 'ws'),
    rooms,
    output: () => output,
    async stop(signal = 'SIGTERM') {
      const p = proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill(signal);
      // LiveKit's first SIGTERM waits for every participant to leave; a second one forces it.
      const again = setTimeout(() => p.kill('SIGTERM'), 2_000);
      const kill = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(again);
      clearTimeout(kill);
    },
    start,
  };
}

async function freeUdpPort(): Promise<number> {
  const { createSocket } = await import('node:dgram');
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}
