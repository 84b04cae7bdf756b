/**
 * `npm run demo`: one call in a LiveKit room, end to end, on this machine alone.
 *
 * Starts a local homeserver (the test fake, both dialects) and the daemon in this process, then plays a scripted
 * call: six participants create futures or delayed events with the client kit and hand them to the sidecar, and
 * signed LiveKit webhooks tell the sidecar who joins, who leaves on purpose, who loses the connection, and who
 * comes back within the grace. The timeline comes from the daemon's `/v1/watch` stream and the homeserver's own
 * record; the summary and the verdict come from the homeserver's record. Exit code 0 when everything happened as
 * the contract promises, 1 otherwise.
 *
 * `DEMO_LOG_LEVEL=debug npm run demo` adds the daemon's own log lines (JSON) to the output.
 * `npm run demo -- --real` plays a story on the real Synapse, LiveKit and MatrixRTC participants instead (demo/real.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { Homeserver, KeepAlive, SidecarClient, type FutureHandle, type KeepAliveEvent } from '../client/index.js';
import { buildApp, type Daemon } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { startFakeHomeserver, type FakeHomeserver, type SentEvent } from '../test/fakes/homeserver.js';
import { WebhookSender, mintParticipantToken, startFakeRoomService, type FakeRoomService } from '../test/fakes/livekit.js';
import { DemoConsole, table } from './output.js';

const ROOM = 'demo-call';
const MATRIX_ROOM = '!demo-call:localhost';
const MEMBER = 'org.matrix.msc3401.call.member';
const TIMEOUT_MS = 4_000;
const GRACE_MS = 2_000;
const JOIN_TIMEOUT_MS = 4_000;
/** The whole run, the daemon's start included, must end well within this. */
const WATCHDOG_MS = 60_000;
const API_KEY = 'demokey';
const API_SECRET = randomBytes(24).toString('base64url');
const ADMIN_TOKEN = randomBytes(24).toString('base64url').slice(0, 32);
const STEPS = 12;

type Expected = 'leave' | 'connection_lost' | 'nothing';

interface Person {
  name: string;
  dialect: 'futures' | 'delayed_events';
  form: string;
  story: string;
  expected: Expected;
  expectedState: string;
  sid: string;
  jwt: string;
  handle?: FutureHandle;
  keepAlive?: KeepAlive;
  kit?: Homeserver;
  sidecar?: SidecarClient;
  delegationId?: string;
  selfRefreshesBeforeHandover: number;
}

function person(name: string, dialect: Person['dialect'], form: string, story: string, expected: Expected, expectedState: string): Person {
  return { name, dialect, form, story, expected, expectedState, sid: `PA_${name}_${randomBytes(3).toString('hex')}`, jwt: '', selfRefreshesBeforeHandover: 0 };
}

const people = {
  alice: person('alice', 'futures', 'send/future', 'joined, left on purpose', 'leave', 'fired'),
  bob: person('bob', 'delayed_events', 'state ?delay', 'joined, lost the connection', 'connection_lost', 'fired'),
  carol: person('carol', 'futures', 'state/.../future', 'joined, dropped, rejoined in the grace', 'nothing', 'connected'),
  dave: person('dave', 'delayed_events', 'state ?delay', 'joined, revoked, refreshes himself', 'nothing', 'revoked'),
  erin: person('erin', 'futures', 'send/future', 'delegated, never joined', 'connection_lost', 'fired'),
  frank: person('frank', 'futures', 'send/future', 'sidecar down at first, then handed over', 'nothing', 'connected'),
};
const everyone = Object.values(people);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

function stateKeyOf(p: Person): string {
  return `_@${p.name}:localhost_${p.name.toUpperCase()}DEVICE`;
}

function membership(p: Person, sidecarUrl: string): Record<string, unknown> {
  return {
    application: 'm.call',
    call_id: '',
    scope: 'm.room',
    device_id: `${p.name.toUpperCase()}DEVICE`,
    focus_active: { type: 'livekit', focus_selection: 'oldest_membership' },
    foci_preferred: [{ type: 'livekit', livekit_service_url: sidecarUrl, livekit_alias: MATRIX_ROOM }],
  };
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const counts = { open: 0, refreshed: 0, fired: 0 };
  const ui = new DemoConsole(process.stdout, t0, STEPS, () => `open ${counts.open} · refreshes ${counts.refreshed} · actions fired ${counts.fired}`);
  const dataDir = mkdtempSync(join(tmpdir(), 'futures-sidecar-demo-'));
  const watchdog = setTimeout(() => {
    ui.stopTicker();
    console.error(`demo: did not finish within ${WATCHDOG_MS / 1000} s`);
    process.exit(1);
  }, WATCHDOG_MS);
  watchdog.unref();

  let hs: FakeHomeserver | undefined;
  let rooms: FakeRoomService | undefined;
  let daemon: Daemon | undefined;
  let watch: WebSocket | undefined;
  let hsPoll: NodeJS.Timeout | undefined;
  try {
    ui.write('futures-sidecar demo: one LiveKit call, six participants, two homeserver dialects\n');
    ui.startTicker();

    // 1. Everything that costs CPU comes first (building the daemon compiles its schemas), so that no timer of the
    // script runs late because of it. The sidecar is built and started here but listens only in step 2.
    ui.next('starting the homeserver and LiveKit\'s RoomService; building the sidecar (it does not listen yet)');
    hs = await startFakeHomeserver();
    const homeserver = hs;
    ui.event('homeserver', `listening on ${hs.url} (futures draft and Synapse delayed events)`);
    // The fake RoomService, kept in step with the webhooks, answers the sidecar's reconciliation, so that it never
    // asks a real LiveKit that may be running on this machine's default port.
    rooms = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
    const roomService = rooms;
    const port = await freePort();
    const sidecarUrl = `http://127.0.0.1:${port}`;
    const config = loadConfig(
      {
        SIDECAR_STORE: `sqlite:${join(dataDir, 'demo.db')}`,
        LOG_LEVEL: process.env['DEMO_LOG_LEVEL'] ?? 'silent',
        LIVEKIT_URL: rooms.url,
        LIVEKIT_API_KEY: API_KEY,
        LIVEKIT_API_SECRET: API_SECRET,
        SIDECAR_ADMIN_TOKEN: ADMIN_TOKEN,
        SIDECAR_RECONNECT_GRACE_MS: String(GRACE_MS),
        SIDECAR_JOIN_TIMEOUT_MS: String(JOIN_TIMEOUT_MS),
        SIDECAR_MIN_TIMEOUT_MS: '1000',
        SIDECAR_HOMESERVER_RATE: '50',
      },
      { dev: true },
    );
    daemon = await buildApp(config);
    await daemon.start();
    await daemon.app.ready();
    const sidecar = daemon;
    const kitFor = (p: Person) => new Homeserver({ baseUrl: homeserver.url, accessToken: `syt_${p.name}_${randomBytes(6).toString('hex')}` });
    const byHandle = new Map<string, Person>();
    const byDelegation = new Map<string, Person>();
    let seenSent = 0;
    hsPoll = setInterval(() => {
      for (; seenSent < homeserver.sent.length; seenSent++) describeSent(ui, homeserver.sent[seenSent]!, byHandle);
    }, 20);
    for (const p of everyone) p.jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: p.name, room: ROOM });
    // The script's clock: every step below is timed from here.
    const s0 = Date.now();
    const at = (ms: number) => sleep(s0 + ms - Date.now());

    // frank shows up before the sidecar does.
    ui.next('frank creates his future while the sidecar is still down');
    const frank = people.frank;
    const frankKit = kitFor(frank);
    const frankFuture = await createFuture(frankKit, frank, sidecarUrl, TIMEOUT_MS);
    byHandle.set(frankFuture.token, frank);
    frank.handle = frankFuture;
    ui.event(frank.name, `created a future (futures, timeout ${TIMEOUT_MS / 1000} s) and offers it to the sidecar at ${sidecarUrl}`);
    frank.sidecar = new SidecarClient({ baseUrl: sidecarUrl, liveKitToken: frank.jwt, retry: { attempts: 1 }, requestTimeoutMs: 2_000 });
    frank.keepAlive = new KeepAlive({
      homeserver: frankKit,
      handle: frankFuture,
      timeoutMs: TIMEOUT_MS,
      sidecar: frank.sidecar,
      redelegateEveryMs: 1_000,
      onEvent: (e) => onKeepAlive(ui, frank, e, byDelegation),
    });
    await frank.keepAlive.start();

    // 2. The sidecar opens its port.
    await at(2_400);
    ui.next(`the sidecar starts listening (SQLite store, ${GRACE_MS / 1000} s reconnect grace, ${JOIN_TIMEOUT_MS / 1000} s join deadline)`);
    await sidecar.app.listen({ port, host: '127.0.0.1' });
    ui.event('sidecar', `listening on ${sidecarUrl}`);
    const watched = new Set<string>();
    watch = await openWatch(sidecarUrl, (e) => {
      watched.add(e.type);
      if (e.type === 'refreshed') counts.refreshed++;
      if (e.type === 'fired') counts.fired++;
      if (e.type === 'registered') counts.open++;
      if (['fired', 'revoked', 'invalidated', 'expired', 'failed'].includes(e.type)) counts.open--;
    }, (e) => describeWatch(ui, sidecarUrl, e, byDelegation));
    const lk = new WebhookSender({ url: `${sidecarUrl}/livekit/webhook`, apiKey: API_KEY, apiSecret: API_SECRET });
    const webhook = async (label: string, send: Promise<{ status: number; body: unknown }>) => {
      const r = await send;
      ui.event('livekit', label);
      if (r.status !== 200) throw new Error(`webhook ${label} answered ${r.status} ${JSON.stringify(r.body)}`);
    };

    // 3. Everyone else creates a future or a delayed event and delegates it.
    await at(2_600);
    ui.next('alice, bob, carol, dave and erin create their futures and delegate them');
    for (const p of [people.alice, people.bob, people.carol, people.dave, people.erin]) {
      const kit = kitFor(p);
      p.kit = kit;
      p.handle = p.dialect === 'futures' ? await createFuture(kit, p, sidecarUrl, TIMEOUT_MS) : await createDelayedLeave(kit, p, sidecarUrl);
      byHandle.set(p.handle.token, p);
      ui.event(p.name, `created ${p.dialect === 'futures' ? `a future (${p.form})` : 'a delayed leave event, then its membership'}, timeout ${TIMEOUT_MS / 1000} s`);
      p.sidecar = new SidecarClient({ baseUrl: sidecarUrl, liveKitToken: p.jwt });
      p.keepAlive = new KeepAlive({ homeserver: kit, handle: p.handle, timeoutMs: TIMEOUT_MS, sidecar: p.sidecar, onEvent: (e) => onKeepAlive(ui, p, e, byDelegation) });
      await p.keepAlive.start();
    }

    // 4. LiveKit: five join; erin never does.
    await at(3_000);
    ui.next('five participants join the LiveKit room; erin never shows up');
    for (const p of [people.alice, people.bob, people.carol, people.dave, people.frank]) {
      roomService.join(ROOM, { sid: p.sid, identity: p.name });
      await webhook(`participant_joined ${p.name} (${p.sid})`, lk.participantJoined(ROOM, { sid: p.sid, identity: p.name }));
    }

    await at(5_500);
    ui.next('alice hangs up');
    roomService.leave(ROOM, 'alice');
    await webhook('participant_left alice, disconnectReason CLIENT_INITIATED', lk.participantLeft(ROOM, { sid: people.alice.sid, identity: 'alice' }, 'CLIENT_INITIATED'));

    await at(6_000);
    ui.next("bob's connection is lost");
    roomService.leave(ROOM, 'bob');
    await webhook('participant_connection_aborted bob', lk.connectionAborted(ROOM, { sid: people.bob.sid, identity: 'bob' }));

    await at(6_500);
    ui.next("carol's signal drops, and she comes back within the grace");
    roomService.leave(ROOM, 'carol');
    await webhook('participant_left carol, disconnectReason SIGNAL_CLOSE', lk.participantLeft(ROOM, { sid: people.carol.sid, identity: 'carol' }, 'SIGNAL_CLOSE'));
    await at(6_900);
    const carolOld = people.carol.sid;
    people.carol.sid = `PA_carol_${randomBytes(3).toString('hex')}`;
    roomService.join(ROOM, { sid: people.carol.sid, identity: 'carol' });
    await webhook(`participant_joined carol again (${people.carol.sid}, was ${carolOld})`, lk.participantJoined(ROOM, { sid: people.carol.sid, identity: 'carol' }));

    await at(8_800);
    ui.next('dave revokes his delegation and keeps his delayed event alive himself');
    const dave = people.dave;
    await dave.keepAlive!.stop({ revoke: true });
    ui.event('dave', 'revoked his delegation with DELETE /v1/delegations/{id}; refreshes by himself from now on');
    dave.keepAlive = new KeepAlive({ homeserver: dave.kit!, handle: dave.handle!, timeoutMs: TIMEOUT_MS, onEvent: (e) => onKeepAlive(ui, dave, e, byDelegation) });
    await dave.keepAlive.start();

    // 5. Wait until the homeserver has seen what it should, or give up and let the verdict say what is missing.
    ui.next('waiting for the last actions to reach the homeserver');
    await waitUntil(() => everyone.every((p) => p.expected === 'nothing' || firedOn(homeserver, p).length > 0), s0 + 16_000);
    await sleep(Math.max(500, s0 + 10_000 - Date.now()));

    ui.next('checking the outcome against the homeserver and the sidecar');
    const states = new Map<string, { state: string; pending_action: string | null; outcome: string | null }>();
    for (const p of everyone) if (p.delegationId) states.set(p.name, await adminView(sidecarUrl, p.delegationId));
    const sentBeforeShutdown = homeserver.sent.length;

    ui.next('shutting down: the sidecar stops without firing anything');
    for (const p of everyone) await p.keepAlive?.stop();
    watch.close();
    await daemon.shutdown();
    daemon = undefined;
    await sleep(300);
    clearInterval(hsPoll);
    for (; seenSent < homeserver.sent.length; seenSent++) describeSent(ui, homeserver.sent[seenSent]!, byHandle);
    ui.stopTicker();

    return report(ui, homeserver, states, watched, homeserver.sent.length === sentBeforeShutdown);
  } finally {
    ui.stopTicker();
    if (hsPoll) clearInterval(hsPoll);
    for (const p of everyone) await p.keepAlive?.stop().catch(() => undefined);
    watch?.terminate();
    await daemon?.shutdown().catch(() => undefined);
    await hs?.close().catch(() => undefined);
    await rooms?.close().catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
}

/** A MatrixRTC membership as a future: the membership now, an empty one on timeout or on either action. */
async function createFuture(kit: Homeserver, p: Person, sidecarUrl: string, timeoutMs: number): Promise<FutureHandle> {
  const stateKey = stateKeyOf(p);
  if (p.form === 'state/.../future') {
    const f = await kit.createStateFuture({
      roomId: MATRIX_ROOM,
      eventType: MEMBER,
      stateKey,
      timeoutMs,
      sendNow: membership(p, sidecarUrl),
      onTimeout: {},
      actions: { leave: {}, connection_lost: {} },
    });
    return f.handle;
  }
  const left = { type: MEMBER, stateKey, content: {} };
  const f = await kit.createFuture({
    roomId: MATRIX_ROOM,
    timeoutMs,
    sendNow: { type: MEMBER, stateKey, content: membership(p, sidecarUrl) },
    onTimeout: left,
    actions: { leave: left, connection_lost: left },
  });
  return f.handle;
}

/** Element Call's order with Synapse: the delayed leave first, then the membership it will end. */
async function createDelayedLeave(kit: Homeserver, p: Person, sidecarUrl: string): Promise<FutureHandle> {
  const { handle } = await kit.createDelayedEvent({ roomId: MATRIX_ROOM, eventType: MEMBER, stateKey: stateKeyOf(p), content: {}, delayMs: TIMEOUT_MS });
  await kit.sendStateEvent(MATRIX_ROOM, MEMBER, stateKeyOf(p), membership(p, sidecarUrl));
  return handle;
}

function onKeepAlive(ui: DemoConsole, p: Person, e: KeepAliveEvent, byDelegation: Map<string, Person>): void {
  switch (e.type) {
    case 'sidecar_unreachable':
      ui.event(p.name, `sidecar unreachable (${e.error.message.replace(/^.*\(/, '').replace(/\)$/, '')}); keeps the future alive himself, next offer in ${(e.retryInMs / 1000).toFixed(1)} s`);
      break;
    case 'refreshed':
      ui.event(p.name, `refreshed the future himself (client kit), it now expires in ${((e.expiresAt - Date.now()) / 1000).toFixed(1)} s`);
      break;
    case 'delegated':
      p.delegationId = e.delegation.delegationId;
      p.selfRefreshesBeforeHandover = p.keepAlive?.refreshCount ?? 0;
      byDelegation.set(e.delegation.delegationId, p);
      if (p.selfRefreshesBeforeHandover > 0) ui.event(p.name, `handed over to the sidecar after ${p.selfRefreshesBeforeHandover} refreshes of his own; stops refreshing himself`);
      break;
    case 'delegation_refused':
    case 'refresh_failed':
    case 'finalised':
    case 'expired':
    case 'failed':
      ui.event(p.name, `client kit: ${e.type} (${e.error.message})`);
      break;
    case 'stopped':
      break;
  }
}

interface WatchEvent {
  type: string;
  delegation_id: string;
  state: string;
  at: number;
  outcome?: string;
}

/** Subscribes to `/v1/watch` with the admin token; `handle` runs strictly in order, one event after the other. */
async function openWatch(sidecarUrl: string, count: (e: WatchEvent) => void, handle: (e: WatchEvent) => Promise<void>): Promise<WebSocket> {
  const ws = new WebSocket(`${sidecarUrl.replace(/^http/, 'ws')}/v1/watch`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  let chain = Promise.resolve();
  await new Promise<void>((resolve, reject) => {
    ws.once('error', reject);
    ws.on('message', (data) => {
      const e = JSON.parse(String(data)) as WatchEvent | { type: 'ready' };
      if (e.type === 'ready') {
        // Errors after the subscription (the daemon closing the stream at shutdown) end the stream, nothing more.
        ws.off('error', reject);
        ws.on('error', () => undefined);
        return resolve();
      }
      count(e as WatchEvent);
      chain = chain.then(() => handle(e as WatchEvent)).catch((err: unknown) => console.error('demo: watch event:', err));
    });
  });
  return ws;
}

const lastState = new Map<string, string>();

async function describeWatch(ui: DemoConsole, sidecarUrl: string, e: WatchEvent, byDelegation: Map<string, Person>): Promise<void> {
  // The stream can be faster than the delegation's own HTTP answer, which is where the demo learns the id.
  const deadline = Date.now() + 2_000;
  while (!byDelegation.has(e.delegation_id) && Date.now() < deadline) await sleep(10);
  const who = byDelegation.get(e.delegation_id)?.name ?? e.delegation_id;
  const previous = lastState.get(e.delegation_id);
  lastState.set(e.delegation_id, e.state);
  const at = e.at;
  switch (e.type) {
    case 'registered':
      return ui.event(who, `registered with the sidecar as ${e.delegation_id} (${e.state})`, at);
    case 'connected':
      return ui.event(who, previous === 'grace' ? 'reconnected within the grace: nothing will be fired' : 'connected: the sidecar saw the LiveKit session', at);
    case 'refreshed':
      return ui.event(who, 'refreshed by the sidecar', at);
    case 'grace':
      return ui.event(who, `connection lost: grace of ${GRACE_MS / 1000} s before connection_lost`, at);
    case 'fired': {
      const view = await adminView(sidecarUrl, e.delegation_id, true);
      return ui.event(who, `fired ${view.pending_action ?? '?'} -> ${e.outcome ?? view.outcome ?? '?'} (why: ${view.why ?? 'see history'})`, at);
    }
    case 'revoked':
      return ui.event(who, 'revoked: the sidecar stops refreshing and fires nothing', at);
    default:
      return ui.event(who, `${e.type} (${e.state}${e.outcome ? `, ${e.outcome}` : ''})`, at);
  }
}

function describeSent(ui: DemoConsole, s: SentEvent, byHandle: Map<string, Person>): void {
  const who = byHandle.get(s.handle)?.name ?? (s.stateKey?.match(/^_@([a-z]+):/)?.[1] ?? 'someone');
  const what = Object.keys(s.content).length === 0 ? 'an empty membership (left the call)' : 'a call membership';
  const cause =
    s.cause === 'action' ? `action ${s.actionName}` : s.cause === 'send_now' ? 'm.send_now' : s.cause === 'direct' ? 'plain state event' : `${s.cause}: the future EXPIRED`;
  ui.event('homeserver', `${who}: sent ${what} (${cause})`, s.at);
}

async function adminView(sidecarUrl: string, id: string, withWhy = false): Promise<{ state: string; pending_action: string | null; outcome: string | null; why?: string }> {
  const res = await fetch(`${sidecarUrl}/v1/admin/delegations/${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  if (!res.ok) throw new Error(`admin view of ${id}: ${res.status}`);
  const body = (await res.json()) as { state: string; pending_action: string | null; outcome: string | null; history?: Array<{ what: string }> };
  if (!withWhy) return body;
  const firing = body.history?.find((h) => h.what.includes('-> firing'))?.what;
  const why = firing ? (/-> firing \((.*)\)$/.exec(firing)?.[1] ?? firing) : undefined;
  return { ...body, ...(why !== undefined ? { why } : {}) };
}

function firedOn(hs: FakeHomeserver, p: Person): SentEvent[] {
  return p.handle ? hs.sent.filter((s) => s.handle === p.handle!.token && s.cause !== 'send_now') : [];
}

async function waitUntil(check: () => boolean, deadline: number): Promise<void> {
  while (!check() && Date.now() < deadline) await sleep(50);
}

function report(
  ui: DemoConsole,
  hs: FakeHomeserver,
  states: Map<string, { state: string; pending_action: string | null; outcome: string | null }>,
  watched: Set<string>,
  shutdownFiredNothing: boolean,
): number {
  const checks: Array<[string, boolean]> = [];
  const rows = everyone.map((p) => {
    const token = p.handle?.token ?? '';
    const refreshes = hs.calls.filter((c) => c.handle === token && (c.op === 'refresh' || c.op === 'restart') && c.status === 200).length;
    const fired = firedOn(hs, p);
    const firedText = fired.map((s) => (s.cause === 'action' ? `${s.actionName} (action)` : `${s.cause} (TIMEOUT)`)).join(', ') || '-';
    const wantAction = p.expected === 'nothing' ? null : p.dialect === 'futures' ? p.expected : 'send';
    const actionsOk = wantAction === null ? fired.length === 0 : fired.length === 1 && fired[0]!.cause === 'action' && fired[0]!.actionName === wantAction;
    const view = states.get(p.name);
    const stateOk = view?.state === p.expectedState && (p.expected === 'nothing' || view.pending_action === p.expected);
    const ok = actionsOk && stateOk;
    checks.push([`${p.name}: homeserver saw ${wantAction ?? 'no action'}, sidecar state ${p.expectedState}${p.expected !== 'nothing' ? ` (${p.expected})` : ''}`, ok]);
    return [
      p.name,
      p.dialect,
      p.form,
      p.story,
      p.name === 'frank' ? `${refreshes} (${p.selfRefreshesBeforeHandover} his own)` : String(refreshes),
      firedText,
      hs.status(token),
      view ? `${view.state}${view.pending_action ? `/${view.pending_action}` : ''}` : '?',
      ok ? 'ok' : 'WRONG',
    ];
  });
  const timeouts = hs.sent.filter((s) => s.cause === 'timeout' || s.cause === 'delayed');
  checks.push(['no future expired: every timeout was kept off by a refresh', timeouts.length === 0]);
  checks.push(['frank refreshed by himself while the sidecar was down, then handed over', people.frank.selfRefreshesBeforeHandover > 0 && people.frank.keepAlive?.delegation != null]);
  for (const kind of ['registered', 'connected', 'refreshed', 'grace', 'fired', 'revoked']) checks.push([`the watch stream showed "${kind}"`, watched.has(kind)]);
  checks.push(["the sidecar's shutdown fired nothing", shutdownFiredNothing]);

  ui.write('\nSummary (from the homeserver\'s own record; "sidecar" from its admin API before shutdown)\n');
  ui.write(table(['who', 'dialect', 'created with', 'story', 'refreshes', 'homeserver sent', 'future now', 'sidecar', 'verdict'], rows));
  ui.write('\nChecks');
  for (const [what, ok] of checks) ui.write(`  ${ok ? 'ok  ' : 'FAIL'}  ${what}`);
  const failed = checks.filter(([, ok]) => !ok).length;
  ui.write(failed === 0 ? '\ndemo passed: every participant got exactly what the contract promises.' : `\ndemo FAILED: ${failed} check(s) did not hold.`);
  return failed === 0 ? 0 : 1;
}

(process.argv.includes('--real') ? import('./real.js').then((m) => m.runRealDemo((line) => console.log(line))) : main()).then(
  (code) => {
    process.exitCode = code;
    // Everything is closed by now; this only guards against a handle someone forgot.
    setTimeout(() => process.exit(code), 2_000).unref();
  },
  (err: unknown) => {
    console.error('demo failed:', err instanceof Error ? (err.stack ?? err.message) : err);
    process.exitCode = 1;
    setTimeout(() => process.exit(1), 2_000).unref();
  },
);
