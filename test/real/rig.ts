import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AccessToken } from 'livekit-server-sdk';
import { parse } from 'yaml';
import { legacyIdentity, liveKitIdentity, liveKitRoomName, msc4195Identity } from '../../src/compat/livekit-names.js';
import { readRawBody } from '../fakes/listen.js';
import { freePort, spawnDaemon, type ChildDaemon } from '../helpers/daemon.js';
import { RIG_API_KEY, RIG_API_SECRET, startLiveKit, type LiveKit } from './livekit.js';
import { spawnParticipants, type ParticipantProcess, type ParticipantSpec } from './participants.js';
import { CALL_MEMBER_TYPE, startSynapse, SYNAPSE_SERVER_NAME, type StateEvent, type Synapse, type SynapseUser } from './synapse.js';

export interface WebhookSeen {
  event: string;
  room?: string;
  identity?: string;
  reason?: string;
  at: number;
  /** LiveKit's own event time (`createdAt`, whole seconds), in ms. */
  createdAt?: number;
  /** When the daemon acknowledged it (the record and its state change are durable by then). */
  ackedAt?: number;
}

export interface RigOptions {
  /** Settings for the daemon on top of the test defaults (see test/helpers/daemon.ts testEnv). */
  daemonEnv?: Record<string, string>;
  defaultDelayedEventLimit?: boolean;
  /** Where LiveKit listens and what it advertises (a veth address for the network-namespace scenarios). */
  livekitIp?: string;
  /** Where the daemon listens (0.0.0.0-free: one address only). */
  daemonHost?: string;
  /**
   * The daemon configured as an lk-jwt-service operator configures it (no `--dev`): `LIVEKIT_URL` (the WebSocket URL
   * handed to clients), `LIVEKIT_KEY` / `LIVEKIT_SECRET`, `LIVEKIT_FULL_ACCESS_HOMESERVERS`,
   * `LIVEKIT_CS_API_URL_OVERRIDES`, `LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS`, `LIVEKIT_LOG_LEVEL`. Beyond them only
   * the store path, the listen address, the trusted proxy and the federation override the loopback Synapse needs
   * (lk-jwt-service would find its federation API through `.well-known`, which a loopback Synapse cannot serve).
   */
  lkJwtService?: boolean;
  /**
   * Application-service mode (contract section 8): Synapse gets the registration `futures-sidecar registration`
   * prints and proxies MSC4195's routes to the daemon, which runs with LIVEKIT_AS_TOKEN / LIVEKIT_HS_TOKEN /
   * LIVEKIT_HS_SERVER_NAME and hands clients LiveKit's ws:// URL as its LIVEKIT_URL.
   */
  appservice?: boolean;
}

export interface Member {
  userId: string;
  deviceId: string;
  stateKey: string;
  identity: string;
  delayId: string;
}

export interface Call {
  roomId: string;
  livekitRoom: string;
  participants: ParticipantProcess;
  members: Member[];
}

export interface Rig {
  synapse: Synapse;
  livekit: LiveKit;
  daemon: ChildDaemon;
  daemonUrl: string;
  /** Webhooks as LiveKit delivered them, recorded by a pass-through proxy in front of the daemon. */
  webhooks: WebhookSeen[];
  observer: SynapseUser;
  /** The tokens of the registration Synapse loaded, in application-service mode. */
  appservice: { asToken: string; hsToken: string } | null;
  restartDaemon(signal?: NodeJS.Signals): Promise<void>;
  startCall(n: number, opts: { delayMs: number; delegate: ParticipantSpec['delegate']; wrap?: string[]; homeserverUrl?: string; daemonUrl?: string; livekitUrl?: string }): Promise<Call>;
  /** The member's call membership as Synapse holds it. */
  membership(call: Call, m: Member): Promise<StateEvent | null>;
  /** Is the member's membership emptied (its delayed leave sent)? */
  left(call: Call, m: Member): Promise<boolean>;
  livekitLists(call: Call, m: Member): Promise<boolean>;
  /** The last lines each process printed, for a failed test's message. */
  diagnostics(): string;
  stop(): Promise<void>;
}

/** Starts the peers; whatever was started is stopped again if a later one fails, so no server outlives the suite. */
export async function startRig(opts: RigOptions = {}): Promise<Rig> {
  const started: Array<() => Promise<unknown>> = [];
  try {
    return await assembleRig(opts, started);
  } catch (err) {
    for (const stop of started.reverse()) await stop().catch(() => undefined);
    throw err;
  }
}

async function assembleRig(opts: RigOptions, started: Array<() => Promise<unknown>>): Promise<Rig> {
  const daemonHost = opts.daemonHost ?? '127.0.0.1';
  const daemonPort = await freePort();
  const daemonUrl = `http://${daemonHost}:${daemonPort}`;
  const appservice = opts.appservice ? writeRegistration(daemonUrl) : null;
  const synapse = await startSynapse({ defaultDelayedEventLimit: opts.defaultDelayedEventLimit, ...(appservice ? { appServiceConfigFiles: [appservice.path] } : {}) });
  started.push(() => synapse.stop());
  const webhooks: WebhookSeen[] = [];
  const proxy = await webhookProxy(`http://127.0.0.1:${daemonPort}`, webhooks);
  started.push(() => new Promise((r) => proxy.server.close(r)));
  const livekit = await startLiveKit({ webhookUrl: `${proxy.url}/livekit/webhook`, nodeIp: opts.livekitIp });
  started.push(() => livekit.stop());
  const store = `sqlite:${join(mkdtempSync(join(tmpdir(), 'futures-sidecar-rig-')), 'sidecar.db')}`;
  const hsOverride = `${synapse.serverName}=${synapse.url}`;
  const lkJwtEnv = {
    SIDECAR_STORE: store,
    LIVEKIT_URL: livekit.wsUrl,
    LIVEKIT_KEY: RIG_API_KEY,
    LIVEKIT_SECRET: RIG_API_SECRET,
    LIVEKIT_FULL_ACCESS_HOMESERVERS: synapse.serverName,
    LIVEKIT_CS_API_URL_OVERRIDES: hsOverride,
    LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '5',
    LIVEKIT_LOG_LEVEL: 'info',
    SIDECAR_FEDERATION_URL_OVERRIDES: hsOverride,
    LIVEKIT_JWT_BIND: `${daemonHost}:${daemonPort}`,
    SIDECAR_TRUST_PROXY: 'true',
    ...opts.daemonEnv,
  };
  const daemonEnv = opts.lkJwtService ? lkJwtEnv : {
    SIDECAR_STORE: store,
    LIVEKIT_URL: livekit.httpUrl,
    LIVEKIT_API_KEY: RIG_API_KEY,
    LIVEKIT_API_SECRET: RIG_API_SECRET,
    SIDECAR_FEDERATION_URL_OVERRIDES: hsOverride,
    SIDECAR_CS_API_URL_OVERRIDES: hsOverride,
    SIDECAR_RECONCILE_INTERVAL_MS: '5000',
    // Participants reach the daemon from 127.0.0.1 (or their namespace) and tell their own address, as through an
    // ingress: one address may hold only a share of a homeserver with delegations it has not yet accepted.
    SIDECAR_TRUST_PROXY: 'true',
    SIDECAR_HOST: daemonHost,
    LOG_LEVEL: 'info',
    ...(appservice ? { LIVEKIT_URL: livekit.wsUrl, LIVEKIT_AS_TOKEN: appservice.asToken, LIVEKIT_HS_TOKEN: appservice.hsToken, LIVEKIT_HS_SERVER_NAME: SYNAPSE_SERVER_NAME } : {}),
    ...opts.daemonEnv,
  };
  const spawnOpts = { dev: !opts.lkJwtService };
  let daemon = await spawnDaemon(daemonEnv, daemonPort, spawnOpts);
  started.push(async () => daemon.kill('SIGKILL'));
  const observer = await synapse.register('observer');
  const calls: Call[] = [];
  let users = 0;

  const rig: Rig = {
    synapse,
    livekit,
    get daemon() {
      return daemon;
    },
    daemonUrl,
    webhooks,
    observer,
    appservice: appservice && { asToken: appservice.asToken, hsToken: appservice.hsToken },
    async restartDaemon(signal = 'SIGKILL') {
      daemon.kill(signal);
      await daemon.exited;
      daemon = await spawnDaemon(daemonEnv, daemonPort, spawnOpts);
    },
    async startCall(n, call) {
      const { room_id: roomId } = await synapse.call(observer, 'POST', '/_matrix/client/v3/createRoom', { preset: 'public_chat', power_level_content_override: { events_default: 0, state_default: 0 } });
      const livekitRoom = liveKitRoomName(roomId, 'm.call#ROOM');
      // Through the token routes the room is the daemon's to create (CreateRoom for full-access users) and the token
      // is the one it issues; otherwise the rig plays the authorization service.
      const tokenRoute = call.delegate === 'get_token' || call.delegate === 'sfu_get';
      // auto_create is off, as in a deployment where the authorization service creates rooms.
      if (!tokenRoute) await livekit.rooms.createRoom({ name: livekitRoom, emptyTimeout: 600, departureTimeout: 20 });
      const specs: ParticipantSpec[] = [];
      const members: Omit<Member, 'delayId'>[] = [];
      for (let k = 0; k < n; k++) {
        const user = await synapse.register(`p${++users}x${Date.now() % 100000}`);
        const deviceId = `RIGDEV${users}`;
        // MSC4195's identity for tokens the homeserver proxied; lk-jwt-service's forms for the others.
        const memberId = `${user.userId}:${deviceId}`;
        const identity =
          call.delegate === 'appservice' ? msc4195Identity(user.userId, memberId) : call.delegate === 'sfu_get' ? legacyIdentity(user.userId, deviceId) : liveKitIdentity(user.userId, deviceId, memberId);
        const at = new AccessToken(RIG_API_KEY, RIG_API_SECRET, { identity, ttl: '2h' });
        at.addGrant({ roomJoin: true, room: livekitRoom, roomCreate: false, canPublish: true, canSubscribe: true });
        specs.push({
          homeserverUrl: call.homeserverUrl ?? synapse.url,
          userId: user.userId,
          password: user.password,
          deviceId,
          roomId,
          livekitUrl: call.livekitUrl ?? livekit.wsUrl,
          livekitToken: tokenRoute ? '' : await at.toJwt(),
          daemonUrl: call.daemonUrl ?? daemonUrl,
          delayMs: call.delayMs,
          delegate: call.delegate,
          // A documentation address (RFC 5737) per participant: only ever a header, never a destination.
          clientAddress: `198.51.100.${users % 250}`,
        });
        members.push({ userId: user.userId, deviceId, identity, stateKey: `_${user.userId}_${deviceId}_m.call` });
      }
      const participants = spawnParticipants(specs, { wrap: call.wrap });
      try {
        await participants.waitEvent((e) => e.ev === 'all-joined', `${n} participants to join`, 60_000 + n * 10_000);
      } catch (err) {
        participants.proc.kill('SIGKILL');
        throw err;
      }
      const full: Member[] = members.map((m, k) => {
        const joined = participants.events.find((e) => e.ev === 'joined' && e.i === k)!;
        if (joined.identity !== m.identity) throw new Error(`participant ${k} joined LiveKit as ${String(joined.identity)}, expected ${m.identity}`);
        return { ...m, delayId: String(joined.delayId) };
      });
      if (call.delegate !== 'none') {
        for (let k = 0; k < n; k++) {
          const d = await participants.waitEvent((e) => e.ev === 'delegated' && e.i === k, `participant ${k} to delegate`);
          if (d.status !== 200 && d.status !== 201) throw new Error(`delegation of participant ${k} answered ${String(d.status)}: ${JSON.stringify(d.body)}`);
        }
      }
      const c = { roomId, livekitRoom, participants, members: full };
      calls.push(c);
      return c;
    },
    membership: (c, m) => synapse.state(observer, c.roomId, CALL_MEMBER_TYPE, m.stateKey),
    async left(c, m) {
      const ev = await rig.membership(c, m);
      if (!ev) throw new Error(`no membership event for ${m.userId}`);
      return Object.keys(ev.content).length === 0;
    },
    async livekitLists(c, m) {
      const list = await livekit.rooms.listParticipants(c.livekitRoom);
      return list.some((p) => p.identity === m.identity);
    },
    diagnostics() {
      const tail = (lines: string[]) => lines.slice(-40).join('\n');
      return [
        `--- daemon\n${tail(daemon.output)}`,
        `--- livekit\n${livekit.output().split('\n').slice(-20).join('\n')}`,
        `--- synapse log: ${synapse.logPath}`,
        `--- webhooks\n${JSON.stringify(webhooks)}`,
        ...calls.map((c, k) => `--- participants of call ${k}\n${tail(c.participants.log)}\n${JSON.stringify(c.participants.events)}`),
      ].join('\n');
    },
    async stop() {
      for (const c of calls) c.participants.proc.kill('SIGKILL');
      daemon.kill('SIGTERM');
      await Promise.race([daemon.exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (daemon.proc.exitCode === null) daemon.kill('SIGKILL');
      await livekit.stop();
      await synapse.stop();
      await new Promise((r) => proxy.server.close(r));
    },
  };
  return rig;
}

/** The registration file as `futures-sidecar registration` prints it for the daemon at `daemonUrl`. */
function writeRegistration(daemonUrl: string): { path: string; asToken: string; hsToken: string } {
  const printed = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'registration', '--url', daemonUrl, '--server-name', SYNAPSE_SERVER_NAME], {
    cwd: join(import.meta.dirname, '..', '..'),
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    encoding: 'utf8',
  });
  if (printed.status !== 0) throw new Error(`futures-sidecar registration failed (${printed.status}): ${printed.stderr}`);
  const path = join(mkdtempSync(join(tmpdir(), 'futures-sidecar-as-')), 'registration.yaml');
  writeFileSync(path, printed.stdout);
  const reg = parse(printed.stdout) as { as_token: string; hs_token: string };
  return { path, asToken: reg.as_token, hsToken: reg.hs_token };
}

/** Forwards LiveKit's webhooks to the daemon untouched and notes when each arrived (for the latency figures). */
async function webhookProxy(target: string, seen: WebhookSeen[]): Promise<{ url: string; server: Server }> {
  const server = createServer(async (req, res) => {
    const body = await readRawBody(req);
    const at = Date.now();
    let entry: WebhookSeen;
    try {
      const ev = JSON.parse(body.toString('utf8'));
      entry = { event: ev.event, room: ev.room?.name, identity: ev.participant?.identity, reason: ev.participant?.disconnectReason, at, ...(ev.createdAt ? { createdAt: Number(ev.createdAt) * 1000 } : {}) };
    } catch {
      entry = { event: 'unparsable', at };
    }
    seen.push(entry);
    try {
      const headers: Record<string, string> = {};
      for (const h of ['authorization', 'content-type']) if (req.headers[h]) headers[h] = String(req.headers[h]);
      const answer = await fetch(`${target}${req.url}`, { method: 'POST', headers, body });
      entry.ackedAt = Date.now();
      res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'text/plain' });
      res.end(Buffer.from(await answer.arrayBuffer()));
    } catch {
      // The daemon is down (a restart scenario): LiveKit retries 5xx.
      res.writeHead(502).end();
    }
  });
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, server };
}

