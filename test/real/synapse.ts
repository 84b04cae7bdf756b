import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { freePort, waitFor } from '../helpers/daemon.js';
import { SYNAPSE_PYTHON } from './peers.js';

export const CALL_MEMBER_TYPE = 'org.matrix.msc3401.call.member';
/** The rig's Synapse's server name (known before it starts: an application service's registration names it). */
export const SYNAPSE_SERVER_NAME = 'localhost';

/** Every limit Synapse has, opened wide, so that only the scenario that tests one meets it. */
const RELAXED = { per_second: 10_000, burst_count: 10_000 };
const RELAXED_LIMITS = {
  rc_message: RELAXED,
  rc_registration: RELAXED,
  rc_login: { address: RELAXED, account: RELAXED, failed_attempts: RELAXED },
  rc_joins: { local: RELAXED, remote: RELAXED },
  rc_joins_per_room: RELAXED,
  rc_invites: { per_room: RELAXED, per_user: RELAXED, per_issuer: RELAXED },
  rc_room_creation: RELAXED,
  rc_admin_redaction: RELAXED,
  rc_3pid_validation: RELAXED,
};

export interface SynapseOptions {
  /** Keep Synapse's default `rc_delayed_event_mgmt` (1/s, burst 5 per IP or user) instead of opening it wide. */
  defaultDelayedEventLimit?: boolean;
  /** Application-service registration files (`app_service_config_files`), read when Synapse starts. */
  appServiceConfigFiles?: string[];
}

export interface SynapseUser {
  userId: string;
  password: string;
  accessToken: string;
  deviceId: string;
}

interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  ts: number;
  /** The authenticated requester, or null for a request without an access token. */
  user: string | null;
}

export interface StateEvent {
  content: Record<string, unknown>;
  origin_server_ts: number;
  event_id: string;
}

export interface Synapse {
  url: string;
  serverName: string;
  port: number;
  dir: string;
  logPath: string;
  /** The HTTP requests Synapse logged (its access log), as "METHOD path" lines with their status. */
  accessLog(): AccessLogEntry[];
  register(localpart: string): Promise<SynapseUser>;
  /** A state event as Synapse holds it now, or null if the room has none of that type and key. */
  state(asUser: SynapseUser, roomId: string, type: string, stateKey: string): Promise<StateEvent | null>;
  call<T = any>(asUser: SynapseUser | null, method: string, path: string, body?: unknown): Promise<T>;
  /** Stops the process (SIGTERM, or SIGKILL) and keeps its database, so `start` continues where it was. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
}

export async function startSynapse(opts: SynapseOptions = {}): Promise<Synapse> {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-synapse-'));
  const port = await freePort();
  const serverName = SYNAPSE_SERVER_NAME;
  const url = `http://127.0.0.1:${port}`;
  const sharedSecret = randomBytes(24).toString('hex');
  const logPath = join(dir, 'homeserver.log');
  mkdirSync(join(dir, 'media'));
  // Synapse's signing key file: "ed25519 <key id> <unpadded base64 of the 32-byte seed>".
  const seed = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' }).d!;
  writeFileSync(join(dir, 'signing.key'), `ed25519 a_rig ${Buffer.from(seed, 'base64url').toString('base64').replace(/=+$/, '')}\n`);
  writeFileSync(
    join(dir, 'log.yaml'),
    stringify({
      version: 1,
      formatters: { precise: { format: '%(asctime)s - %(name)s - %(levelname)s - %(message)s' } },
      handlers: { file: { class: 'logging.FileHandler', formatter: 'precise', filename: logPath } },
      loggers: { 'synapse.storage.SQL': { level: 'WARNING' } },
      root: { level: 'INFO', handlers: ['file'] },
      disable_existing_loggers: false,
    }),
  );
  const config = {
    server_name: serverName,
    public_baseurl: `${url}/`,
    pid_file: join(dir, 'homeserver.pid'),
    listeners: [{ port, bind_addresses: ['127.0.0.1'], type: 'http', tls: false, x_forwarded: false, resources: [{ names: ['client', 'federation'], compress: false }] }],
    database: { name: 'sqlite3', args: { database: join(dir, 'homeserver.db') } },
    log_config: join(dir, 'log.yaml'),
    media_store_path: join(dir, 'media'),
    signing_key_path: join(dir, 'signing.key'),
    registration_shared_secret: sharedSecret,
    report_stats: false,
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    enable_metrics: false,
    max_event_delay_duration: '24h',
    // Section 8's application-service proxying: both flags exist in 1.163.2 (synapse/config/experimental.py).
    experimental_features: { msc4512_enabled: true, msc4502_enabled: true },
    ...RELAXED_LIMITS,
    ...(opts.defaultDelayedEventLimit ? {} : { rc_delayed_event_mgmt: RELAXED }),
    ...(opts.appServiceConfigFiles ? { app_service_config_files: opts.appServiceConfigFiles } : {}),
  };
  writeFileSync(join(dir, 'homeserver.yaml'), stringify(config));

  let proc: ChildProcess | null = null;
  let output = '';
  const start = async () => {
    output = '';
    proc = spawn(SYNAPSE_PYTHON, ['-m', 'synapse.app.homeserver', '-c', join(dir, 'homeserver.yaml')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout!.on('data', (d) => (output += String(d)));
    proc.stderr!.on('data', (d) => (output += String(d)));
    const p = proc;
    await waitFor(
      'Synapse to answer /versions',
      async () => {
        if (p.exitCode !== null) throw new Error(`synapse exited (${p.exitCode}): ${output.slice(-2000)}`);
        const res = await fetch(`${url}/_matrix/client/versions`);
        return res.ok;
      },
      90_000,
      200,
    );
  };

  const call = async (asUser: SynapseUser | null, method: string, path: string, body?: unknown) => {
    const headers: Record<string, string> = {};
    if (asUser) headers.authorization = `Bearer ${asUser.accessToken}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(url + path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    if (!res.ok) throw Object.assign(new Error(`synapse ${method} ${path.replace(/access_token=[^&]+/, 'access_token=…')}: ${res.status} ${text}`), { status: res.status });
    return text ? JSON.parse(text) : {};
  };

  await start();
  return {
    url,
    serverName,
    port,
    dir,
    logPath,
    accessLog() {
      // e.g. `<ts> - synapse.access.http.1234 - INFO - 127.0.0.1 - 1234 - {@a:localhost} Processed request: ... 138B 200 "POST /_matrix/... HTTP/1.1" ...`
      const lines = readFileSync(logPath, 'utf8').split('\n');
      const out: AccessLogEntry[] = [];
      for (const line of lines) {
        const m = / - synapse\.access\.http\.\d+ - INFO - .* - \{([^}]*)\} Processed request: .* \d+B (\d{3})!? "(GET|POST|PUT|DELETE|OPTIONS|HEAD) ([^ ]+) HTTP/.exec(line);
        if (m) out.push({ user: m[1] === 'None' ? null : m[1]!, status: Number(m[2]), method: m[3]!, path: m[4]!, ts: Date.parse(line.slice(0, 23).replace(' ', 'T').replace(',', '.')) });
      }
      return out;
    },
    async register(localpart) {
      const { nonce } = await call(null, 'GET', '/_synapse/admin/v1/register');
      const password = randomBytes(12).toString('hex');
      const mac = createHmac('sha1', sharedSecret).update(`${nonce}\0${localpart}\0${password}\0notadmin`).digest('hex');
      const res = await call(null, 'POST', '/_synapse/admin/v1/register', { nonce, username: localpart, password, admin: false, mac });
      return { userId: res.user_id, password, accessToken: res.access_token, deviceId: res.device_id };
    },
    async state(asUser, roomId, type, stateKey) {
      try {
        return await call(asUser, 'GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${encodeURIComponent(type)}/${encodeURIComponent(stateKey)}?format=event`);
      } catch (err) {
        if ((err as { status?: number }).status === 404) return null;
        throw err;
      }
    },
    call,
    async stop(signal = 'SIGTERM') {
      const p = proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill(signal);
      const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
    start,
  };
}

