import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type Daemon } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import {
  Homeserver,
  HomeserverUnreachableError,
  KeepAlive,
  MatrixApiError,
  SidecarApiError,
  SidecarClient,
  SidecarUnreachableError,
  type FetchLike,
  type KeepAliveEvent,
  type Timers,
} from '../../client/index.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, freePort, sleep, startDaemon, testEnv, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { actionsFired, refreshCalls, uniqueName } from '../helpers/scenario.js';

const MEMBER = 'org.matrix.msc3401.call.member';
const USER_TOKEN = 'syt_user_access_token';

function member(stateKey: string, content: Record<string, unknown> = {}) {
  return { type: MEMBER, stateKey, content };
}

function participantToken(identity: string, room: string): Promise<string> {
  return mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
}

/** Timers that fire at once but remember the delays asked for, so backoff can be checked without waiting. */
function recordingTimers(): Timers & { delays: number[] } {
  const delays: number[] = [];
  return {
    delays,
    now: () => Date.now(),
    setTimeout: (fn, ms) => {
      delays.push(ms);
      return setTimeout(fn, 0);
    },
    clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
  };
}

/** A fetch that answers from a script, one entry per call; an Error entry is thrown like a network failure. */
function scriptedFetch(script: Array<{ status: number; body?: unknown; headers?: Record<string, string> } | Error>): FetchLike & { calls: Array<{ url: string; init: RequestInit }> } {
  const calls: Array<{ url: string; init: RequestInit }> = [];
  const f = (async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    const next = script.shift();
    if (!next) throw new Error('script exhausted');
    if (next instanceof Error) throw next;
    return new Response(next.body === undefined ? '' : JSON.stringify(next.body), { status: next.status, headers: { 'content-type': 'application/json', ...next.headers } });
  }) as FetchLike & { calls: typeof calls };
  f.calls = calls;
  return f;
}

function connectionRefused(): Error {
  return new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) });
}

describe('Homeserver (client kit) against the fake homeserver', () => {
  let hs: FakeHomeserver;
  let kit: Homeserver;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    kit = new Homeserver({ baseUrl: hs.url, accessToken: USER_TOKEN, retry: { baseDelayMs: 10 } });
  });
  afterAll(async () => hs.close());

  it('creates a future with send_now and actions, refreshes it, and fires one action', async () => {
    const room = '!call:hs';
    const future = await kit.createFuture({
      roomId: room,
      timeoutMs: 3000,
      sendNow: member('_@alice:hs_DEV', { application: 'm.call' }),
      onTimeout: member('_@alice:hs_DEV'),
      actions: { leave: member('_@alice:hs_DEV'), connection_lost: member('_@alice:hs_DEV') },
    });
    expect(future.handle.dialect).toBe('futures');
    expect(hs.status(future.handle.token)).toBe('pending');
    expect(future.eventIds.sendNow).toMatch(/^\$/);
    expect(Object.keys(future.eventIds.actions).sort()).toEqual(['connection_lost', 'leave']);
    expect(hs.currentState(room, MEMBER, '_@alice:hs_DEV')?.content).toEqual({ application: 'm.call' });

    const before = hs.expiresAt(future.handle.token)!;
    await sleep(20);
    await kit.refresh(future.handle);
    expect(hs.expiresAt(future.handle.token)!).toBeGreaterThan(before);
    const refresh = hs.calls.find((c) => c.op === 'refresh' && c.handle === future.handle.token)!;
    expect(refresh).toMatchObject({ method: 'PUT', path: '/_matrix/client/v3/futures/refresh', status: 200 });
    // The future_token is the credential in this draft: no access token goes with management calls.
    expect(refresh.authorization).toBeUndefined();

    await kit.futureAction(future.handle.token, 'leave');
    expect(actionsFired(hs, future.handle.token)).toEqual(['leave']);
    expect(hs.currentState(room, MEMBER, '_@alice:hs_DEV')?.content).toEqual({});
  });

  it('creates a state future in the older /state/{eventType}/{stateKey}/future form', async () => {
    const future = await kit.createStateFuture({
      roomId: '!state:hs',
      eventType: MEMBER,
      stateKey: '_@bob:hs_DEV',
      timeoutMs: 3000,
      sendNow: { application: 'm.call' },
      onTimeout: {},
      actions: { leave: { left: true } },
    });
    const create = hs.calls.find((c) => c.op === 'create' && c.handle === future.handle.token)!;
    // The path as it went over the wire: room id and state key percent-encoded.
    expect(create.path).toBe(`/_matrix/client/v3/rooms/!state%3Ahs/state/${MEMBER}/_%40bob%3Ahs_DEV/future`);
    expect(hs.currentState('!state:hs', MEMBER, '_@bob:hs_DEV')?.content).toEqual({ application: 'm.call' });
    await kit.futureAction(future.handle.token, 'leave');
    const sent = hs.sent.find((e) => e.handle === future.handle.token && e.cause === 'action')!;
    expect(sent).toMatchObject({ type: MEMBER, stateKey: '_@bob:hs_DEV', content: { left: true }, actionName: 'leave' });
  });

  it('returns the same future when a creation is repeated with the same transaction id', async () => {
    const input = { roomId: '!txn:hs', timeoutMs: 3000, onTimeout: member('_x'), txnId: uniqueName('txn') };
    const a = await kit.createFuture(input);
    const b = await kit.createFuture(input);
    expect(b.handle.token).toBe(a.handle.token);
  });

  it('creates delayed events in the state and send variants, restarts them and sends one', async () => {
    const state = await kit.createDelayedEvent({ roomId: '!de:hs', eventType: MEMBER, stateKey: '_@carol:hs_DEV', content: {}, delayMs: 3000 });
    const plain = await kit.createDelayedEvent({ roomId: '!de:hs', eventType: 'm.room.message', content: { body: 'later' }, delayMs: 3000 });
    expect(state.handle).toMatchObject({ dialect: 'delayed_events', token: expect.stringMatching(/^syd_/) });
    expect(hs.status(plain.handle.token)).toBe('pending');
    const creates = hs.calls.filter((c) => c.op === 'create' && (c.handle === state.handle.token || c.handle === plain.handle.token));
    expect(creates.map((c) => c.path).sort()).toEqual([
      expect.stringMatching(/^\/_matrix\/client\/v3\/rooms\/!de%3Ahs\/send\/m\.room\.message\/[^/]+$/),
      `/_matrix/client/v3/rooms/!de%3Ahs/state/${MEMBER}/_%40carol%3Ahs_DEV`,
    ]);

    await kit.refresh(state.handle);
    const restart = hs.calls.find((c) => c.op === 'restart' && c.handle === state.handle.token)!;
    expect(restart).toMatchObject({ method: 'POST', path: '/_matrix/client/unstable/org.matrix.msc4140/delayed_events/<token>/restart', status: 200 });
    expect(restart.authorization).toBe(`Bearer ${USER_TOKEN}`);

    await kit.sendDelayedEvent(plain.handle.token);
    expect(actionsFired(hs, plain.handle.token)).toEqual(['send']);
    await kit.cancelDelayedEvent(state.handle.token);
    expect(hs.status(state.handle.token)).toBe('cancelled');
  });

  it('retries futures management with POST on 405 and remembers the method', async () => {
    const postHs = await startFakeHomeserver({ futuresMethod: 'POST' });
    try {
      const k = new Homeserver({ baseUrl: postHs.url, accessToken: USER_TOKEN });
      const future = await k.createFuture({ roomId: '!post:hs', timeoutMs: 3000, onTimeout: member('_p'), actions: { leave: member('_p') } });
      await k.refreshFuture(future.handle.token);
      await k.refreshFuture(future.handle.token);
      await k.futureAction(future.handle.token, 'leave');
      const managed = postHs.calls.filter((c) => c.handle === future.handle.token && c.op !== 'create').map((c) => `${c.method} ${c.op} ${c.status}`);
      expect(managed).toEqual(['PUT refresh 405', 'POST refresh 200', 'POST refresh 200', 'POST action 200']);
      expect(actionsFired(postHs, future.handle.token)).toEqual(['leave']);
    } finally {
      await postHs.close();
    }
  });

  it('falls back to the body-action delayed-event endpoint when the per-action ones are missing', async () => {
    const oldHs = await startFakeHomeserver({ perActionEndpoints: false });
    try {
      const k = new Homeserver({ baseUrl: oldHs.url, accessToken: USER_TOKEN });
      const { handle } = await k.createDelayedEvent({ roomId: '!old:hs', eventType: MEMBER, stateKey: '_o', content: {}, delayMs: 3000 });
      await k.restartDelayedEvent(handle.token);
      await k.sendDelayedEvent(handle.token);
      const managed = oldHs.calls.filter((c) => c.handle === handle.token && c.op !== 'create').map((c) => `${c.path.endsWith('<token>') ? 'body' : 'path'} ${c.op} ${c.status}`);
      expect(managed).toEqual(['path restart 404', 'body restart 200', 'body send 200']);
    } finally {
      await oldHs.close();
    }
  });

  it('throws MatrixApiError with status and errcode for a token the homeserver no longer knows', async () => {
    const err = await kit.refreshFuture('no-such-token').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MatrixApiError);
    expect(err).toMatchObject({ status: 404, errcode: 'M_NOT_FOUND', isFinalised: true });
    const de = await kit.restartDelayedEvent('syd_unknown').catch((e: unknown) => e);
    expect(de).toMatchObject({ name: 'MatrixApiError', status: 404, errcode: 'M_NOT_FOUND' });
    const bad = await kit.createFuture({ roomId: '!r:hs', timeoutMs: 1000, onTimeout: { type: '', content: {} }, actions: { '': member('_') } }).catch((e: unknown) => e);
    expect(bad).toMatchObject({ name: 'MatrixApiError', status: 400, errcode: 'M_BAD_JSON', isFinalised: false });
  });

  it('retries a 5xx within its attempt budget, then gives up with the last answer', async () => {
    const { handle } = await kit.createFuture({ roomId: '!retry:hs', timeoutMs: 5000, onTimeout: member('_r') });
    hs.failNext('refresh', 2, { status: 503, handle: handle.token });
    await kit.refresh(handle);
    expect(refreshCalls(hs, handle.token)).toBe(1);
    expect(hs.calls.filter((c) => c.handle === handle.token && c.op === 'refresh').map((c) => c.status)).toEqual([503, 503, 200]);

    hs.failNext('refresh', 3, { status: 502, handle: handle.token });
    const err = await kit.refresh(handle).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'MatrixApiError', status: 502 });
    expect(hs.calls.filter((c) => c.handle === handle.token && c.op === 'refresh')).toHaveLength(6);
  });

  it('throws HomeserverUnreachableError when nothing listens', async () => {
    const k = new Homeserver({ baseUrl: `http://127.0.0.1:${await freePort()}`, accessToken: USER_TOKEN, retry: { attempts: 2, baseDelayMs: 5 } });
    const err = await k.refreshFuture('t').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HomeserverUnreachableError);
    expect((err as Error).message).toContain('ECONNREFUSED');
  });
});

describe('retries and backoff (scripted fetch, injected timers)', () => {
  it('backs off exponentially with jitter and honours retry_after_ms, within the attempts', async () => {
    const timers = recordingTimers();
    const fetch = scriptedFetch([
      { status: 500, body: { errcode: 'M_UNKNOWN', error: 'boom' } },
      { status: 429, body: { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', retry_after_ms: 1500 } },
      { status: 502 },
      { status: 200, body: {} },
    ]);
    const k = new Homeserver({ baseUrl: 'https://hs.example', accessToken: 'x', fetch, timers, random: () => 1, retry: { attempts: 4, baseDelayMs: 100, maxDelayMs: 2000 } });
    await k.refreshFuture('tok');
    expect(fetch.calls).toHaveLength(4);
    expect(timers.delays).toEqual([100, 1500, 400]);
    expect(JSON.parse(String(fetch.calls[0]!.init.body))).toEqual({ future_token: 'tok' });
  });

  it('hands a 429 that asks for longer than maxDelayMs straight to the caller', async () => {
    const fetch = scriptedFetch([{ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED', error: 'later', retry_after_ms: 60_000 } }]);
    const k = new Homeserver({ baseUrl: 'https://hs.example', accessToken: 'x', fetch, timers: recordingTimers() });
    const err = await k.restartDelayedEvent('syd_x').catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'MatrixApiError', status: 429, errcode: 'M_LIMIT_EXCEEDED', retryAfterMs: 60_000 });
    expect(fetch.calls).toHaveLength(1);
  });

  it('never blindly repeats a delayed state event whose first attempt may have arrived', async () => {
    const reset = new TypeError('fetch failed', { cause: Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }) });
    const fetch = scriptedFetch([reset]);
    const k = new Homeserver({ baseUrl: 'https://hs.example', accessToken: 'x', fetch, timers: recordingTimers() });
    const err = await k.createDelayedEvent({ roomId: '!r:hs', eventType: MEMBER, stateKey: '_k', content: {}, delayMs: 1000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HomeserverUnreachableError);
    expect(fetch.calls).toHaveLength(1);

    // A connection that was never made cannot have created anything: that one is retried.
    const fetch2 = scriptedFetch([connectionRefused(), { status: 200, body: { delay_id: 'syd_ok' } }]);
    const k2 = new Homeserver({ baseUrl: 'https://hs.example', accessToken: 'x', fetch: fetch2, timers: recordingTimers() });
    const created = await k2.createDelayedEvent({ roomId: '!r:hs', eventType: MEMBER, stateKey: '_k', content: {}, delayMs: 1000 });
    expect(created.handle.token).toBe('syd_ok');
    expect(fetch2.calls[1]!.url).toBe(`https://hs.example/_matrix/client/v3/rooms/!r%3Ahs/state/${MEMBER}/_k?org.matrix.msc4140.delay=1000`);
  });

  it('reports a 503 from the sidecar as unreachable and a 403 as a typed refusal', async () => {
    const timers = recordingTimers();
    const unavailable = new SidecarClient({ baseUrl: 'https://sidecar.example/', liveKitToken: 'jwt', timers, fetch: scriptedFetch([{ status: 503 }, { status: 503 }, { status: 503, body: { errcode: 'M_UNKNOWN', error: 'shutting down' } }]) });
    const err = await unavailable.get('dg_1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SidecarUnreachableError);
    expect(err).toMatchObject({ status: 503 });

    const fetch = scriptedFetch([{ status: 403, body: { errcode: 'M_FORBIDDEN', error: 'This token was delegated by another participant' } }]);
    const refusing = new SidecarClient({ baseUrl: 'https://sidecar.example', liveKitToken: async () => 'fresh-jwt', timers, fetch });
    const refused = await refusing.delegate({ homeserver: 'https://hs.example', dialect: 'futures', token: 't', timeoutMs: 60_000 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SidecarApiError);
    expect(refused).toMatchObject({ status: 403, errcode: 'M_FORBIDDEN', isTransient: false });
    expect(fetch.calls).toHaveLength(1);
    expect(new Headers(fetch.calls[0]!.init.headers).get('authorization')).toBe('Bearer fresh-jwt');
  });
});

/** Timers that only move when told to; `advance` lets promise chains settle between timers. */
function manualTimers(start = 1_000_000): Timers & { advance(ms: number): Promise<void>; readonly at: number } {
  let now = start;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  const settle = async () => {
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  };
  return {
    get at() {
      return now;
    },
    now: () => now,
    setTimeout(fn, ms) {
      timers.set(++seq, { at: now + Math.max(0, ms), fn });
      return seq;
    },
    clearTimeout: (h) => void timers.delete(h as number),
    async advance(ms) {
      const target = now + ms;
      for (;;) {
        await settle();
        const next = [...timers.entries()].filter(([, t]) => t.at <= target).sort((a, b) => a[1].at - b[1].at)[0];
        if (!next) break;
        timers.delete(next[0]);
        now = next[1].at;
        next[1].fn();
      }
      now = target;
      await settle();
    },
  };
}

describe('KeepAlive schedule (scripted fetch, manual timers)', () => {
  it('refreshes at half the timeout, offers the future again on its own schedule, and stops once delegated', async () => {
    const timers = manualTimers();
    const start = timers.now();
    let sidecarUp = false;
    const hsCalls: number[] = [];
    const sidecarCalls: number[] = [];
    const fetch: FetchLike = async (url) => {
      if (url.startsWith('https://sidecar.example')) {
        sidecarCalls.push(timers.now() - start);
        if (!sidecarUp) throw connectionRefused();
        const body = { delegation_id: 'dg_1', state: 'awaiting_join', room: 'r', identity: 'i', expires_at: timers.now() + 10_000 };
        return new Response(JSON.stringify(body), { status: 201, headers: { 'content-type': 'application/json' } });
      }
      hsCalls.push(timers.now() - start);
      return new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } });
    };
    const common = { fetch, timers, random: () => 0.5, retry: { attempts: 1 } };
    const events: string[] = [];
    const keepAlive = new KeepAlive({
      homeserver: new Homeserver({ baseUrl: 'https://hs.example', accessToken: 'x', ...common }),
      handle: { dialect: 'futures', token: 'ft' },
      timeoutMs: 10_000,
      sidecar: new SidecarClient({ baseUrl: 'https://sidecar.example', liveKitToken: 'jwt', ...common }),
      redelegateEveryMs: 4_000,
      timers,
      random: () => 0.5,
      onEvent: (e) => events.push(e.type),
    });

    expect(await keepAlive.start()).toBe('self');
    await timers.advance(7_000);
    expect(hsCalls).toEqual([0, 5_000]);
    expect(sidecarCalls).toEqual([0, 4_000]);
    sidecarUp = true;
    await timers.advance(20_000);
    expect(keepAlive.mode).toBe('delegated');
    expect(sidecarCalls).toEqual([0, 4_000, 8_000]);
    expect(hsCalls).toEqual([0, 5_000]);
    expect(events).toEqual(['sidecar_unreachable', 'refreshed', 'sidecar_unreachable', 'refreshed', 'delegated']);
    expect(keepAlive.expiresAt).toBe(start + 8_000 + 10_000);
  });
});

describe('SidecarClient (client kit) against the real daemon', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let kit: Homeserver;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    d = await startDaemon();
    kit = new Homeserver({ baseUrl: hs.url, accessToken: USER_TOKEN });
  });
  afterAll(async () => {
    await d.stop();
    await hs.close();
  });

  it('delegates, reads and revokes; repeating a delegation or a revocation is harmless', async () => {
    const room = uniqueName('room');
    const identity = uniqueName('alice');
    const sidecar = new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken(identity, room) });
    const future = await kit.createFuture({ roomId: `!${room}:hs`, timeoutMs: 4000, onTimeout: member('_a'), actions: { bye: member('_a'), lost: member('_a') } });

    const first = await sidecar.delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 4000, actions: { leave: 'bye', connection_lost: 'lost' } });
    expect(first.created).toBe(true);
    expect(first.delegation).toMatchObject({ state: 'awaiting_join', room, identity, delegationId: expect.stringMatching(/^dg_/) });
    const again = await sidecar.delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 4000, actions: { leave: 'bye', connection_lost: 'lost' } });
    expect(again).toMatchObject({ created: false, delegation: { delegationId: first.delegation.delegationId } });

    await waitFor('the daemon refreshes the delegated future', () => refreshCalls(hs, future.handle.token) >= 1, 20_000);
    const details = await sidecar.get(first.delegation.delegationId);
    expect(details).toMatchObject({ dialect: 'futures', state: 'awaiting_join', pendingAction: null, outcome: null });
    expect(details.nextRefreshAt).toBeGreaterThan(details.createdAt);

    const revoked = await sidecar.revoke(first.delegation.delegationId);
    expect(revoked).toMatchObject({ state: 'revoked', outcome: 'revoked' });
    expect(await sidecar.revoke(first.delegation.delegationId)).toMatchObject({ state: 'revoked' });
    expect((await sidecar.get(first.delegation.delegationId)).state).toBe('revoked');
    expect(hs.status(future.handle.token)).toBe('pending');
    expect(actionsFired(hs, future.handle.token)).toEqual([]);
  });

  it('delegates a delayed event, with an access token only when asked to', async () => {
    const room = uniqueName('room');
    const sidecar = new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken(uniqueName('bob'), room) });
    const { handle } = await kit.createDelayedEvent({ roomId: `!${room}:hs`, eventType: MEMBER, stateKey: '_b', content: {}, delayMs: 4000 });
    const { delegation, created } = await sidecar.delegate({ homeserver: hs.url, ...handle, timeoutMs: 4000 });
    expect(created).toBe(true);
    await waitFor('restart', () => refreshCalls(hs, handle.token) >= 1, 20_000);
    expect(hs.calls.find((c) => c.handle === handle.token && c.op === 'restart')!.authorization).toBeUndefined();
    await sidecar.revoke(delegation.delegationId);
  });

  it('turns the daemon\'s refusals into typed errors', async () => {
    const room = uniqueName('room');
    const owner = new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken(uniqueName('owner'), room) });
    const other = new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken(uniqueName('other'), room) });
    const future = await kit.createFuture({ roomId: `!${room}:hs`, timeoutMs: 4000, onTimeout: member('_o') });
    const { delegation } = await owner.delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 4000 });

    await expect(other.delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 4000 })).rejects.toMatchObject({ name: 'SidecarApiError', status: 403, errcode: 'M_FORBIDDEN' });
    await expect(other.get(delegation.delegationId)).rejects.toMatchObject({ name: 'SidecarApiError', status: 404, errcode: 'M_NOT_FOUND' });
    await expect(owner.delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 999 })).rejects.toMatchObject({ status: 400, errcode: 'M_INVALID_PARAM' });
    const forged = new SidecarClient({ baseUrl: d.url, liveKitToken: await mintParticipantToken({ apiKey: API_KEY, apiSecret: 'wrong-secret', identity: 'x', room }) });
    await expect(forged.get(delegation.delegationId)).rejects.toMatchObject({ status: 401, errcode: 'M_UNKNOWN_TOKEN' });
    await expect(owner.delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 4000, accessToken: 'x' })).rejects.toBeInstanceOf(TypeError);
    await owner.revoke(delegation.delegationId);
  });

  it('throws SidecarUnreachableError when nothing listens', async () => {
    const sidecar = new SidecarClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, liveKitToken: 'jwt', retry: { attempts: 2, baseDelayMs: 5 } });
    await expect(sidecar.get('dg_x')).rejects.toBeInstanceOf(SidecarUnreachableError);
  });
});

describe('KeepAlive', () => {
  let hs: FakeHomeserver;
  let kit: Homeserver;
  const cleanups: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    kit = new Homeserver({ baseUrl: hs.url, accessToken: USER_TOKEN, retry: { baseDelayMs: 20 } });
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  afterAll(async () => hs.close());

  it('refreshes by itself while the sidecar is unreachable, then hands over once it is up', async () => {
    const port = await freePort();
    const room = uniqueName('room');
    // 3 s: a loaded machine's late refresh must not let the future expire before the hand-over (1.5 s once did).
    const timeoutMs = 3000;
    const future = await kit.createFuture({ roomId: `!${room}:hs`, timeoutMs, onTimeout: member('_f'), actions: { leave: member('_f'), connection_lost: member('_f') } });
    const sidecar = new SidecarClient({ baseUrl: `http://127.0.0.1:${port}`, liveKitToken: await participantToken(uniqueName('frank'), room), retry: { attempts: 1 } });
    const events: KeepAliveEvent[] = [];
    const keepAlive = new KeepAlive({ homeserver: kit, handle: future.handle, timeoutMs, sidecar, redelegateEveryMs: 400, onEvent: (e) => events.push(e) });
    cleanups.push(() => keepAlive.stop());

    expect(await keepAlive.start()).toBe('self');
    expect(events.map((e) => e.type).slice(0, 2)).toEqual(['sidecar_unreachable', 'refreshed']);
    // Three timeouts long: without the kit's own refreshes the future would have fired twice over.
    await sleep(3 * timeoutMs);
    expect(hs.status(future.handle.token)).toBe('pending');
    expect(keepAlive.refreshCount).toBeGreaterThanOrEqual(4);
    expect(events.filter((e) => e.type === 'sidecar_unreachable').length).toBeGreaterThanOrEqual(5);

    const daemon: Daemon = await buildApp(loadConfig(testEnv(), { dev: true }));
    await daemon.start();
    await daemon.app.listen({ host: '127.0.0.1', port });
    cleanups.push(() => daemon.shutdown());

    await waitFor('handed over', () => keepAlive.mode === 'delegated', 20_000);
    expect(keepAlive.delegation).toMatchObject({ state: 'awaiting_join' });
    const ownRefreshes = keepAlive.refreshCount;
    const hsRefreshes = refreshCalls(hs, future.handle.token);
    await sleep(2 * timeoutMs);
    expect(keepAlive.refreshCount).toBe(ownRefreshes);
    expect(refreshCalls(hs, future.handle.token)).toBeGreaterThan(hsRefreshes);
    expect(hs.status(future.handle.token)).toBe('pending');
    expect(hs.sent.filter((e) => e.handle === future.handle.token)).toEqual([]);
  });

  it('delegates at once when the sidecar is up, and revokes on stop when asked', async () => {
    const d = await startDaemon();
    cleanups.push(() => d.stop());
    const room = uniqueName('room');
    const { handle } = await kit.createDelayedEvent({ roomId: `!${room}:hs`, eventType: MEMBER, stateKey: '_g', content: {}, delayMs: 2000 });
    const sidecar = new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken(uniqueName('grace'), room) });
    const keepAlive = new KeepAlive({ homeserver: kit, handle, timeoutMs: 2000, sidecar });
    expect(await keepAlive.start()).toBe('delegated');
    expect(keepAlive.refreshCount).toBe(0);
    await keepAlive.stop({ revoke: true });
    expect(keepAlive.mode).toBe('stopped');
    expect((await sidecar.get(keepAlive.delegation!.delegationId)).state).toBe('revoked');
  });

  it('keeps refreshing by itself, without asking again, when the sidecar refuses for good', async () => {
    const d = await startDaemon();
    cleanups.push(() => d.stop());
    const room = uniqueName('room');
    const future = await kit.createFuture({ roomId: `!${room}:hs`, timeoutMs: 1000, onTimeout: member('_h') });
    // Someone else delegated this token first: the sidecar answers 403 to everyone else.
    await new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken('first', room) }).delegate({ homeserver: hs.url, ...future.handle, timeoutMs: 1000 });
    const events: KeepAliveEvent[] = [];
    const sidecar = new SidecarClient({ baseUrl: d.url, liveKitToken: await participantToken('second', room) });
    const keepAlive = new KeepAlive({ homeserver: kit, handle: future.handle, timeoutMs: 1000, sidecar, redelegateEveryMs: 100, onEvent: (e) => events.push(e) });
    cleanups.push(() => keepAlive.stop());
    expect(await keepAlive.start()).toBe('self');
    await sleep(600);
    const refused = events.filter((e) => e.type === 'delegation_refused');
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ retryInMs: null, error: { status: 403, errcode: 'M_FORBIDDEN' } });
    expect(keepAlive.refreshCount).toBeGreaterThanOrEqual(2);
  });

  it('ends as finalised when the homeserver no longer knows the future, and stop() ends the refreshes', async () => {
    const a = await kit.createFuture({ roomId: '!k:hs', timeoutMs: 1000, onTimeout: member('_k'), actions: { leave: member('_k') } });
    const events: KeepAliveEvent[] = [];
    const finalising = new KeepAlive({ homeserver: kit, handle: a.handle, timeoutMs: 1000, onEvent: (e) => events.push(e) });
    cleanups.push(() => finalising.stop());
    expect(await finalising.start()).toBe('self');
    await kit.futureAction(a.handle.token, 'leave');
    await waitFor('finalised', () => finalising.mode === 'finalised', 20_000);
    expect(events.at(-1)).toMatchObject({ type: 'finalised', error: { status: 404, errcode: 'M_NOT_FOUND' } });

    const b = await kit.createDelayedEvent({ roomId: '!k:hs', eventType: MEMBER, stateKey: '_s', content: {}, delayMs: 1000 });
    const stopping = new KeepAlive({ homeserver: kit, handle: b.handle, timeoutMs: 1000 });
    await stopping.start();
    await stopping.stop();
    const calls = hs.calls.filter((c) => c.handle === b.handle.token && c.op === 'restart').length;
    await sleep(1300);
    expect(hs.calls.filter((c) => c.handle === b.handle.token && c.op === 'restart').length).toBe(calls);
    expect(hs.status(b.handle.token)).toBe('timed_out');
  });

  it('retries a failing refresh before the expiry instead of waiting for the next regular one', async () => {
    const future = await kit.createFuture({ roomId: '!f:hs', timeoutMs: 2000, onTimeout: member('_z') });
    const events: KeepAliveEvent[] = [];
    const keepAlive = new KeepAlive({ homeserver: new Homeserver({ baseUrl: hs.url, accessToken: USER_TOKEN, retry: { attempts: 1 } }), handle: future.handle, timeoutMs: 2000, onEvent: (e) => events.push(e) });
    cleanups.push(() => keepAlive.stop());
    hs.failNext('refresh', 2, { status: 500, handle: future.handle.token });
    await keepAlive.start();
    await waitFor('refreshed after the failures', () => keepAlive.refreshCount >= 1, 20_000);
    const failed = events.filter((e): e is Extract<KeepAliveEvent, { type: 'refresh_failed' }> => e.type === 'refresh_failed');
    expect(failed).toHaveLength(2);
    for (const f of failed) expect(f.retryInMs).toBeLessThan(1000);
    expect(hs.status(future.handle.token)).toBe('pending');
  });
});
