/**
 * A MatrixRTC participant as Element Call is one, in its own process (run on Node 22: matrix-js-sdk needs it).
 * Per participant: matrix-js-sdk logs in, syncs, joins the Matrix room and joins the MatrixRTC session through
 * MatrixRTCSession (which schedules the delayed leave on Synapse with MSC4140 and sends the membership), connects to
 * LiveKit with @livekit/rtc-node, then delegates the delayed leave to the daemon as Element Call does.
 *
 * A process may host several participants (the 30-participant scenario). It reads commands from stdin and writes
 * events to stdout, one JSON object a line, each prefixed with "@@rig " so library logs cannot be mistaken for them.
 *   stdin:  {"cmd":"close"}  the tab is closed: every LiveKit room is left on purpose (CLIENT_INITIATED, as
 *                            livekit-client does on pagehide), then the process is gone at once (SIGKILL to itself),
 *                            so the daemon, not the client, must send the delayed leave. The Matrix client cannot just
 *                            be stopped: matrix-js-sdk's stopClient() stops the MatrixRTC session, which sends the
 *                            delayed leave itself (MatrixRTCSession.stop -> MembershipManager.leave); and a client left
 *                            running sees its membership emptied and joins again with a new delayed leave.
 *           {"cmd":"exit"}              disconnect everything and exit
 *   stdout: {"ev":"joined","i":0,"delayId":"…","stateKey":"…","identity":"…"}, {"ev":"delegated","i":0,"status":200},
 *           {"ev":"livekit","i":0,"what":"disconnected"|"reconnecting"|"reconnected","reason":…}, {"ev":"error",…}
 */
import { createInterface } from 'node:readline';
import { Room, RoomEvent, dispose } from '@livekit/rtc-node';
import { ClientEvent, createClient, SyncState, type MatrixClient } from 'matrix-js-sdk';
import { logger as sdkLogger } from 'matrix-js-sdk/lib/logger.js';
import { MatrixRTCSessionEvent } from 'matrix-js-sdk/lib/matrixrtc/MatrixRTCSession.js';
import { MembershipManagerEvent } from 'matrix-js-sdk/lib/matrixrtc/IMembershipManager.js';

export interface ParticipantSpec {
  homeserverUrl: string;
  userId: string;
  password: string;
  deviceId: string;
  roomId: string;
  livekitUrl: string;
  livekitToken: string;
  daemonUrl: string;
  /** The delayed leave's delay (Element Call: matrix_rtc_session.delayed_leave_event_delay_ms). */
  delayMs: number;
  /**
   * How the delayed leave is handed to the daemon: `v1` (POST /v1/delegations, delayed_events dialect),
   * `compat` (POST /delegate_delayed_leave with a real OpenID token, as lk-jwt-service takes it), or `none`: the
   * client keeps the delayed event alive itself with matrix-js-sdk's default timings (the comparison client).
   * `get_token` / `sfu_get`: Element Call with a `livekit_service_url` transport (facts §9.2): the LiveKit token
   * comes from the daemon's `/get_token` (hashed identity) or `/sfu/get` (`<user>:<device>`) with a real OpenID
   * token, the participant joins LiveKit with it (`livekitUrl` / `livekitToken` are not used), then asks the same
   * route again with the delay fields to delegate, and throws that second token away.
   * `appservice`: Matrix 2.0, through the homeserver (MSC4195 proxied by MSC4512): the LiveKit token comes from
   * the SDK's `_unstable_getLivekitToken` (with `livekitUrl` as the transport's `url`; `livekitToken` unused) and
   * the leave goes to `_unstable_delegateDelayedLeave`.
   */
  delegate: 'v1' | 'compat' | 'none' | 'appservice' | TokenRoute;
  /**
   * The participant's own address as the daemon's trusted proxy reports it: each participant is a browser of its
   * own, and the daemon holds one address to a share of a homeserver while its delegations are not yet accepted.
   */
  clientAddress: string;
}

type TokenRoute = 'get_token' | 'sfu_get';
const isTokenRoute = (d: ParticipantSpec['delegate']): d is TokenRoute => d === 'get_token' || d === 'sfu_get';

const out = (ev: Record<string, unknown>) => process.stdout.write(`@@rig ${JSON.stringify(ev)}\n`);

// matrix-js-sdk restarts the delayed leave every delayedLeaveEventRestartMs and has no switch to stop once the leave
// is delegated (facts §9.1: "the client keeps restarting itself even when the leave is delegated"). A delegating
// participant here sets the restart interval beyond any call instead, so only the daemon keeps the event alive.
// (Just under 2^31 ms: setTimeout turns anything larger into 1 ms.)
const NEVER_MS = 2_000_000_000;

async function startOne(i: number, spec: ParticipantSpec) {
  const client: MatrixClient = createClient({ baseUrl: spec.homeserverUrl });
  const login = await client.loginRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: spec.userId }, password: spec.password, device_id: spec.deviceId });
  const mx = createClient({ baseUrl: spec.homeserverUrl, userId: login.user_id, accessToken: login.access_token, deviceId: login.device_id });
  const synced = new Promise<void>((resolve, reject) =>
    mx.on(ClientEvent.Sync, (state) => {
      if (state === SyncState.Prepared || state === SyncState.Syncing) resolve();
      if (state === SyncState.Error) reject(new Error('matrix sync failed'));
    }),
  );
  await mx.startClient({ initialSyncLimit: 1, lazyLoadMembers: true });
  await synced;
  await mx.joinRoom(spec.roomId);
  const room = await waitForValue(() => mx.getRoom(spec.roomId), 'the room in the sync');
  const session = mx.matrixRTC.getRoomSession(room);
  const delayId = new Promise<string>((resolve) => {
    const check = (id?: string) => id && resolve(id);
    session.on(MembershipManagerEvent.DelayIdChanged as never, check as never);
  });
  const transport = { type: 'livekit', livekit_service_url: spec.daemonUrl, livekit_alias: spec.roomId };
  session.joinRoomSession([transport], transport, {
    delayedLeaveEventDelayMs: spec.delayMs,
    ...(spec.delegate === 'none' ? {} : { delayedLeaveEventRestartMs: NEVER_MS }),
  });
  const id = await withTimeout(delayId, 30_000, 'the delayed leave to be scheduled');
  const stateKey = `_${login.user_id}_${login.device_id}_m.call`;
  await withTimeout(new Promise<void>((resolve) => (session.isJoined() && session.memberships.some((m) => m.sender === login.user_id) ? resolve() : session.on(MatrixRTCSessionEvent.MembershipsChanged, () => session.memberships.some((m) => m.sender === login.user_id) && resolve()))), 30_000, 'the membership event');

  // Matrix 2.0, in matrix-js-sdk 43's body (`member: {id, claimed_device_id}`, no `member_id`); the member id is
  // the legacy membership's `<user>:<device>` (CallMembership.memberId).
  const proxied = { url: spec.livekitUrl, room_id: spec.roomId, slot_id: 'm.call#ROOM', member: { id: `${login.user_id}:${login.device_id}`, claimed_device_id: login.device_id } };
  const livekitToken = spec.delegate === 'appservice' ? (await mx._unstable_getLivekitToken(proxied)).jwt : spec.livekitToken;
  const lk = new Room();
  lk.on(RoomEvent.Disconnected, (reason) => out({ ev: 'livekit', i, what: 'disconnected', reason }));
  lk.on(RoomEvent.Reconnecting, () => out({ ev: 'livekit', i, what: 'reconnecting' }));
  lk.on(RoomEvent.Reconnected, () => out({ ev: 'livekit', i, what: 'reconnected' }));
  let livekit = { url: spec.livekitUrl, jwt: livekitToken };
  if (isTokenRoute(spec.delegate)) {
    const res = await tokenRequest(spec, spec.delegate, mx, login.user_id, login.device_id, null);
    out({ ev: 'token', i, route: spec.delegate, status: res.status, url: res.body?.url });
    if (res.status !== 200) throw new Error(`${spec.delegate} answered ${res.status}: ${JSON.stringify(res.body)}`);
    livekit = { url: res.body.url, jwt: res.body.jwt };
  }
  await lk.connect(livekit.url, livekit.jwt, { autoSubscribe: false, dynacast: false });
  out({ ev: 'joined', i, delayId: id, stateKey, identity: lk.localParticipant?.identity, userId: login.user_id, deviceId: login.device_id });

  if (spec.delegate === 'appservice') {
    const res = await mx._unstable_delegateDelayedLeave({ ...proxied, delay_id: id }).then(
      (body) => ({ status: 200, body }),
      (err: { httpStatus?: number; data?: unknown }) => ({ status: err.httpStatus ?? 0, body: err.data ?? String(err) }),
    );
    out({ ev: 'delegated', i, status: res.status, body: res.body });
  } else if (spec.delegate !== 'none') {
    const res = await delegate(spec, mx, id, login.user_id, login.device_id);
    out({ ev: 'delegated', i, status: res.status, body: res.body });
  }
  return { mx, lk, session };
}

/**
 * Element Call's token request (facts §1.2, §1.3, §9.2) with a fresh OpenID token from Synapse; with `delayId`, the
 * delay parts that delegate the delayed leave. Member id `<user>:<device>` as MatrixRTCSession makes it.
 */
async function tokenRequest(spec: ParticipantSpec, route: TokenRoute, mx: MatrixClient, userId: string, deviceId: string, delayId: string | null) {
  const openid = await mx.getOpenIdToken();
  const delay = delayId === null ? {} : { delay_id: delayId, delay_timeout: spec.delayMs, delay_cs_api_url: spec.homeserverUrl };
  const body =
    route === 'get_token'
      ? { room_id: spec.roomId, slot_id: 'm.call#ROOM', openid_token: openid, member: { id: `${userId}:${deviceId}`, claimed_user_id: userId, claimed_device_id: deviceId }, ...delay }
      : { room: spec.roomId, openid_token: openid, device_id: deviceId, ...delay };
  const res = await fetch(`${spec.daemonUrl}/${route === 'get_token' ? 'get_token' : 'sfu/get'}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-forwarded-for': spec.clientAddress },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function delegate(spec: ParticipantSpec, mx: MatrixClient, delayId: string, userId: string, deviceId: string) {
  if (isTokenRoute(spec.delegate)) {
    const res = await tokenRequest(spec, spec.delegate, mx, userId, deviceId, delayId);
    // Element Call discards the token of its delegating request; only whether one came back is reported.
    return { status: res.status, body: res.status === 200 ? { jwt: typeof res.body?.jwt === 'string' } : res.body };
  }
  let res: Response;
  if (spec.delegate === 'v1') {
    res = await fetch(`${spec.daemonUrl}/v1/delegations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${spec.livekitToken}`, 'content-type': 'application/json', 'x-forwarded-for': spec.clientAddress },
      body: JSON.stringify({ homeserver: spec.homeserverUrl, dialect: 'delayed_events', token: delayId, timeout_ms: spec.delayMs }),
    });
  } else {
    // Element Call's body (facts §1.4, §9.2): a fresh OpenID token, member id `<user>:<device>` as MatrixRTCSession makes it.
    const openid = await mx.getOpenIdToken();
    res = await fetch(`${spec.daemonUrl}/delegate_delayed_leave`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-forwarded-for': spec.clientAddress },
      body: JSON.stringify({
        room_id: spec.roomId,
        slot_id: 'm.call#ROOM',
        openid_token: openid,
        member: { id: `${userId}:${deviceId}`, claimed_user_id: userId, claimed_device_id: deviceId },
        delay_id: delayId,
        delay_timeout: spec.delayMs,
        delay_cs_api_url: spec.homeserverUrl,
      }),
    });
  }
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function waitForValue<T>(get: () => T | null | undefined, what: string, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = get();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms).unref())]);
}

async function main() {
  // The SDK's root logger is a loglevel logger; its type does not show setLevel.
  (sdkLogger as unknown as { setLevel(level: string): void }).setLevel('warn');
  const specs = JSON.parse(process.env.RIG_PARTICIPANTS ?? '[]') as ParticipantSpec[];
  const running: Awaited<ReturnType<typeof startOne>>[] = [];
  // One after another, as people join a call: a burst of logins and syncs from one process is no one's real load.
  for (let i = 0; i < specs.length; i++) {
    try {
      running[i] = await startOne(i, specs[i]!);
    } catch (err) {
      out({ ev: 'error', i, message: String((err as Error).stack ?? err) });
      process.exit(1);
    }
  }
  out({ ev: 'all-joined', n: running.length });
  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line) as { cmd: string };
    if (cmd.cmd === 'close') {
      for (const p of running) await p.lk.disconnect();
      out({ ev: 'done', cmd: cmd.cmd });
      process.kill(process.pid, 'SIGKILL');
    } else if (cmd.cmd === 'exit') {
      for (const p of running) {
        await p.lk.disconnect().catch(() => undefined);
        p.mx.stopClient();
      }
      await dispose();
      out({ ev: 'done', cmd: cmd.cmd });
      process.exit(0);
    }
  }
}

main().catch((err) => {
  out({ ev: 'error', message: String(err?.stack ?? err) });
  process.exit(1);
});
