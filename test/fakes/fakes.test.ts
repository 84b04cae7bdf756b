import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DisconnectReason, ParticipantInfo_State } from '@livekit/protocol';
import { RoomServiceClient, TokenVerifier, TwirpError, WebhookReceiver } from 'livekit-server-sdk';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver, type FakeHomeserverOptions } from './homeserver.js';
import { readRawBody } from './listen.js';
import { waitFor } from '../helpers/daemon.js';
import {
  buildWebhookBody,
  mintParticipantToken,
  signWebhook,
  startFakeRoomService,
  WebhookSender,
  type FakeRoomService,
} from './livekit.js';

const ROOM = '!room:fake.hs';
const MEMBER_TYPE = 'org.matrix.msc3401.call.member';
const API_KEY = 'devkey';
const API_SECRET = 'secret-secret-secret-secret-secret';

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface HttpResult {
  status: number;
  body: unknown;
  text: string;
  headers: Headers;
}

async function http(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpResult> {
  const response = await fetch(url, {
    method,
    headers: { 'Content-Type': 'application/json', ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // a non-JSON answer stays as text; tests assert on it
  }
  return { status: response.status, body: parsed, text, headers: response.headers };
}

describe('fake homeserver: futures dialect', () => {
  let hs: FakeHomeserver;
  const refresh = (token: string, method = 'PUT') => http(method, `${hs.url}/_matrix/client/v3/futures/refresh`, { future_token: token });
  const action = (token: string, name: string, method = 'PUT') =>
    http(method, `${hs.url}/_matrix/client/v3/futures/action/${encodeURIComponent(name)}`, { future_token: token });

  async function start(opts?: FakeHomeserverOptions): Promise<void> {
    hs = await startFakeHomeserver(opts);
  }

  afterEach(async () => {
    await hs.close();
  });

  it('sends the timeout event when the timer runs out, then forgets the token', async () => {
    await start();
    const { future_token, response } = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 0.3,
      onTimeout: { type: 'm.room.message', content: { body: 'timed out' } },
    });
    expect(hs.status(future_token)).toBe('pending');
    expect(hs.expiresAt(future_token)).toBeGreaterThan(Date.now());
    expect(hs.sent).toHaveLength(0);

    await sleep(500);
    expect(hs.status(future_token)).toBe('timed_out');
    expect(hs.expiresAt(future_token)).toBeUndefined();
    expect(hs.sent).toEqual([
      expect.objectContaining({
        roomId: ROOM,
        type: 'm.room.message',
        content: { body: 'timed out' },
        cause: 'timeout',
        handle: future_token,
        eventId: (response['m.send_on_timeout'] as { eventId: string }).eventId,
      }),
    ]);

    const late = await refresh(future_token);
    expect(late.status).toBe(404);
    expect(late.body).toMatchObject({ errcode: 'M_NOT_FOUND' });
  });

  it('refresh restarts the timer with the stored timeout', async () => {
    await start();
    const { future_token } = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 3,
      onTimeout: { type: 'm.room.message', content: { body: 'timed out' } },
    });
    const firstExpiry = hs.expiresAt(future_token) ?? 0;
    // Seconds, not fractions: a loaded machine's late request must still refresh before the first expiry.
    await sleep(1500);
    const refreshed = await refresh(future_token);
    expect(refreshed.status).toBe(200);
    expect(refreshed.body).toEqual({});
    const secondExpiry = hs.expiresAt(future_token) ?? 0;
    expect(secondExpiry).toBeGreaterThanOrEqual(firstExpiry + 1450);

    await waitFor('past the first expiry', () => Date.now() > firstExpiry + 100, 20_000);
    expect(hs.status(future_token)).toBe('pending');
    expect(hs.sent).toHaveLength(0);

    await waitFor('timed out', () => hs.status(future_token) === 'timed_out', 20_000);
    expect(Date.now()).toBeGreaterThanOrEqual(secondExpiry);
    expect(hs.sent.map((e) => e.cause)).toEqual(['timeout']);
    expect(hs.calls.filter((c) => c.op === 'refresh')).toEqual([
      expect.objectContaining({ method: 'PUT', path: '/_matrix/client/v3/futures/refresh', handle: future_token, status: 200 }),
    ]);
  });

  it('an action sends its event once, then the token is gone', async () => {
    await start();
    const { future_token, response } = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 5,
      onTimeout: { type: MEMBER_TYPE, state_key: '@a:fake.hs', content: { reason: 'timeout' } },
      actions: {
        leave: { type: MEMBER_TYPE, state_key: '@a:fake.hs', content: { reason: 'leave' } },
        connection_lost: { type: MEMBER_TYPE, state_key: '@a:fake.hs', content: { reason: 'lost' } },
      },
    });
    expect(response).toMatchObject({
      future_token,
      'm.send_on_timeout': { eventId: expect.stringMatching(/^\$/) },
      'm.send_on_action:leave': { eventId: expect.stringMatching(/^\$/) },
      'm.send_on_action:connection_lost': { eventId: expect.stringMatching(/^\$/) },
    });

    const unknownAction = await action(future_token, 'dance');
    expect(unknownAction.status).toBe(400);
    expect(unknownAction.body).toMatchObject({ errcode: 'M_INVALID_PARAM' });
    expect(hs.status(future_token)).toBe('pending');

    const fired = await action(future_token, 'leave');
    expect(fired.status).toBe(200);
    expect(hs.status(future_token)).toBe('actioned');
    expect(hs.sent).toEqual([
      expect.objectContaining({
        cause: 'action',
        actionName: 'leave',
        stateKey: '@a:fake.hs',
        content: { reason: 'leave' },
        eventId: (response['m.send_on_action:leave'] as { eventId: string }).eventId,
      }),
    ]);
    expect(hs.currentState(ROOM, MEMBER_TYPE, '@a:fake.hs')?.content).toEqual({ reason: 'leave' });

    for (const again of [await action(future_token, 'leave'), await action(future_token, 'connection_lost'), await refresh(future_token)]) {
      expect(again.status).toBe(404);
      expect(again.body).toMatchObject({ errcode: 'M_NOT_FOUND' });
    }
    expect(hs.sent).toHaveLength(1);
  });

  it('validates requests: authenticated creation, unauthenticated management, shapes', async () => {
    await start();
    const path = `${hs.url}/_matrix/client/v3/rooms/${encodeURIComponent(ROOM)}/send/future/txn1`;
    const body = { 'm.timeout': 10, 'm.send_on_timeout': { type: 'm.room.message', content: {} } };
    const anonymous = await http('PUT', path, body);
    expect(anonymous.status).toBe(401);
    expect(anonymous.body).toMatchObject({ errcode: 'M_MISSING_TOKEN' });

    const noTimeout = await http('PUT', path, { 'm.send_on_timeout': body['m.send_on_timeout'] }, { Authorization: 'Bearer t' });
    expect(noTimeout.status).toBe(400);
    expect(noTimeout.body).toMatchObject({ errcode: 'M_BAD_JSON' });

    const created = await http('PUT', path, body, { Authorization: 'Bearer t' });
    expect(created.status).toBe(200);
    const token = (created.body as { future_token: string }).future_token;
    const replayed = await http('PUT', path, body, { Authorization: 'Bearer t' });
    expect((replayed.body as { future_token: string }).future_token).toBe(token);

    const missingToken = await http('PUT', `${hs.url}/_matrix/client/v3/futures/refresh`, {});
    expect(missingToken.status).toBe(400);
    expect(missingToken.body).toMatchObject({ errcode: 'M_BAD_JSON' });
    const notJson = await http('PUT', `${hs.url}/_matrix/client/v3/futures/refresh`, 'nope');
    expect(notJson.status).toBe(400);
    expect(notJson.body).toMatchObject({ errcode: 'M_NOT_JSON' });
    const unknown = await refresh('no-such-token');
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ errcode: 'M_NOT_FOUND' });

    expect((await refresh(token)).status).toBe(200);
    expect(hs.calls.find((c) => c.op === 'refresh' && c.status === 200)?.authorization).toBeUndefined();
  });

  it('replaces $m.send_now.event_id deep inside timeout and action contents', async () => {
    await start();
    const template = '$m.send_now.event_id';
    const { future_token, response } = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 0.15,
      sendNow: { type: 'm.room.message', content: { body: 'self-destructing', echo: template } },
      onTimeout: {
        type: 'm.room.redaction',
        content: { redacts: template, nested: { list: [template, `see ${template}`, 7] } },
      },
    });
    const sendNowId = (response['m.send_now'] as { eventId: string }).eventId;
    expect(hs.sent).toEqual([
      expect.objectContaining({ cause: 'send_now', eventId: sendNowId, content: { body: 'self-destructing', echo: template } }),
    ]);

    await sleep(350);
    expect(hs.status(future_token)).toBe('timed_out');
    expect(hs.sent[1]).toMatchObject({
      cause: 'timeout',
      content: { redacts: sendNowId, nested: { list: [sendNowId, `see ${sendNowId}`, 7] } },
    });
  });

  it('invalidates a state future once its send_now is no longer the current state', async () => {
    await start();
    const member = (reason: string) => ({ type: MEMBER_TYPE, state_key: '@a:fake.hs', content: { reason } });
    const first = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 0.4,
      sendNow: member('joined'),
      onTimeout: member('timeout'),
      actions: { leave: member('leave') },
    });
    const unrelated = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 5,
      sendNow: { ...member('other key'), state_key: '@b:fake.hs' },
      onTimeout: member('timeout'),
    });
    expect(hs.currentState(ROOM, MEMBER_TYPE, '@a:fake.hs')?.eventId).toBe(
      (first.response['m.send_now'] as { eventId: string }).eventId,
    );

    await hs.sendStateEvent({ roomId: ROOM, eventType: MEMBER_TYPE, stateKey: '@a:fake.hs', content: { reason: 'rejoined' } });
    expect(hs.status(first.future_token)).toBe('invalidated');
    expect(hs.status(unrelated.future_token)).toBe('pending');
    expect((await action(first.future_token, 'leave')).status).toBe(404);

    await sleep(550);
    expect(hs.sent.filter((e) => e.cause === 'timeout')).toHaveLength(0);

    const older = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 5,
      stateForm: { eventType: MEMBER_TYPE, stateKey: '@c:fake.hs' },
      sendNow: { type: 'ignored', content: { reason: 'joined' } },
      onTimeout: { type: 'ignored', content: { reason: 'timeout' } },
    });
    expect(hs.sent.at(-1)).toMatchObject({ cause: 'send_now', type: MEMBER_TYPE, stateKey: '@c:fake.hs', content: { reason: 'joined' } });
    const newer = await hs.createFuture({
      roomId: ROOM,
      timeoutSeconds: 5,
      sendNow: { type: MEMBER_TYPE, state_key: '@c:fake.hs', content: { reason: 'joined again' } },
      onTimeout: member('timeout'),
    });
    expect(hs.status(older.future_token)).toBe('invalidated');
    expect(hs.status(newer.future_token)).toBe('pending');
  });

  it('answers 405 M_UNRECOGNIZED for the method it does not speak', async () => {
    await start({ futuresMethod: 'POST' });
    const { future_token } = await hs.createFuture({ roomId: ROOM, timeoutSeconds: 5, onTimeout: { type: 'x', content: {} }, actions: { leave: { type: 'x', content: {} } } });
    const put = await refresh(future_token, 'PUT');
    expect(put.status).toBe(405);
    expect(put.body).toMatchObject({ errcode: 'M_UNRECOGNIZED' });
    expect(hs.calls.at(-1)).toMatchObject({ op: 'refresh', status: 405, handle: future_token });
    expect((await action(future_token, 'leave', 'PUT')).status).toBe(405);
    expect(hs.status(future_token)).toBe('pending');
    expect((await refresh(future_token, 'POST')).status).toBe(200);

    hs.setFuturesMethod('PUT');
    expect((await refresh(future_token, 'POST')).status).toBe(405);
    hs.setFuturesMethod('both');
    expect((await refresh(future_token, 'PUT')).status).toBe(200);
    expect((await action(future_token, 'leave', 'POST')).status).toBe(200);
  });
});

describe('fake homeserver: delayed events dialect', () => {
  let hs: FakeHomeserver;
  const base = () => `${hs.url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events`;
  const perAction = (delayId: string, op: string, headers?: Record<string, string>) => http('POST', `${base()}/${delayId}/${op}`, {}, headers);
  const bodyAction = (delayId: string, op: unknown) => http('POST', `${base()}/${delayId}`, { action: op });

  beforeEach(async () => {
    hs = await startFakeHomeserver();
  });

  afterEach(async () => {
    await hs.close();
  });

  it('schedules, restarts and finally sends a delayed event on its timer', async () => {
    const delayId = await hs.createDelayedEvent({ roomId: ROOM, eventType: MEMBER_TYPE, stateKey: '@a:fake.hs', content: {}, delayMs: 600 });
    expect(delayId).toMatch(/^syd_[A-Za-z]{20}$/);
    const scheduled = hs.expiresAt(delayId) ?? 0;

    await sleep(300);
    const restarted = await perAction(delayId, 'restart');
    expect(restarted.status).toBe(200);
    expect(restarted.body).toEqual({});
    expect(hs.expiresAt(delayId)).toBeGreaterThanOrEqual(scheduled + 250);

    await sleep(400);
    expect(hs.sent).toHaveLength(0);
    await sleep(450);
    expect(hs.status(delayId)).toBe('timed_out');
    expect(hs.sent).toEqual([expect.objectContaining({ cause: 'delayed', handle: delayId, type: MEMBER_TYPE, stateKey: '@a:fake.hs', content: {} })]);

    const gone = await perAction(delayId, 'restart');
    expect(gone.status).toBe(404);
    expect(gone.body).toMatchObject({ errcode: 'M_NOT_FOUND' });
    expect(hs.calls.filter((c) => c.op === 'restart').map((c) => [c.path, c.status])).toEqual([
      ['/_matrix/client/unstable/org.matrix.msc4140/delayed_events/<token>/restart', 200],
      ['/_matrix/client/unstable/org.matrix.msc4140/delayed_events/<token>/restart', 404],
    ]);
  });

  it('send fires at once, cancel drops it, both finalise the id', async () => {
    const toSend = await hs.createDelayedEvent({ roomId: ROOM, eventType: 'm.room.message', content: { body: 'bye' }, delayMs: 10_000 });
    const toCancel = await hs.createDelayedEvent({ roomId: ROOM, eventType: 'm.room.message', content: { body: 'never' }, delayMs: 10_000 });

    expect((await perAction(toSend, 'send')).status).toBe(200);
    expect(hs.status(toSend)).toBe('sent');
    expect(hs.sent).toEqual([expect.objectContaining({ cause: 'action', actionName: 'send', handle: toSend, content: { body: 'bye' } })]);
    expect((await perAction(toSend, 'send')).status).toBe(404);

    expect((await perAction(toCancel, 'cancel')).status).toBe(200);
    expect(hs.status(toCancel)).toBe('cancelled');
    expect((await perAction(toCancel, 'send')).status).toBe(404);
    expect(hs.sent).toHaveLength(1);

    expect((await perAction('syd_unknown', 'restart')).body).toMatchObject({ errcode: 'M_NOT_FOUND' });
  });

  it('plain sends without the delay parameter go out at once; scheduling needs a token', async () => {
    const url = `${hs.url}/_matrix/client/v3/rooms/${encodeURIComponent(ROOM)}/send/m.room.message/t1`;
    const direct = await http('PUT', url, { body: 'hi' }, { Authorization: 'Bearer t' });
    expect(direct.status).toBe(200);
    expect(direct.body).toEqual({ event_id: expect.stringMatching(/^\$/) });
    expect(hs.sent).toEqual([expect.objectContaining({ cause: 'direct', content: { body: 'hi' } })]);

    const anonymous = await http('PUT', `${url}2?org.matrix.msc4140.delay=1000`, { body: 'hi' });
    expect(anonymous.status).toBe(401);
    expect(anonymous.body).toMatchObject({ errcode: 'M_MISSING_TOKEN' });
  });

  it('keeps the legacy body-action endpoint, and can hide the per-action ones like an older Synapse', async () => {
    const delayId = await hs.createDelayedEvent({ roomId: ROOM, eventType: 'm.room.message', content: {}, delayMs: 10_000 });
    hs.setPerActionEndpoints(false);
    const hidden = await perAction(delayId, 'restart');
    expect(hidden.status).toBe(404);
    expect(hidden.body).toMatchObject({ errcode: 'M_UNRECOGNIZED' });
    expect(hs.status(delayId)).toBe('pending');

    expect((await bodyAction(delayId, 'restart')).status).toBe(200);
    expect(hs.calls.at(-1)).toMatchObject({ op: 'restart', handle: delayId, path: '/_matrix/client/unstable/org.matrix.msc4140/delayed_events/<token>' });
    expect((await bodyAction(delayId, 'explode')).body).toMatchObject({ errcode: 'M_INVALID_PARAM' });
    expect((await http('POST', `${base()}/${delayId}`, {})).body).toMatchObject({ errcode: 'M_MISSING_PARAM' });
    expect((await bodyAction(delayId, 'send')).status).toBe(200);
    expect(hs.status(delayId)).toBe('sent');
    expect((await bodyAction(delayId, 'cancel')).status).toBe(404);

    hs.reset();
    expect((await perAction(delayId, 'restart')).body).toMatchObject({ errcode: 'M_NOT_FOUND' });
  });

  it('accepts an optional access token, or refuses it when told to', async () => {
    const delayId = await hs.createDelayedEvent({ roomId: ROOM, eventType: 'm.room.message', content: {}, delayMs: 10_000 });
    expect((await perAction(delayId, 'restart', { Authorization: 'Bearer user-token' })).status).toBe(200);
    expect(hs.calls.at(-1)?.authorization).toBe('Bearer user-token');

    hs.setRejectAccessToken(true);
    const refused = await perAction(delayId, 'restart', { Authorization: 'Bearer user-token' });
    expect(refused.status).toBe(401);
    expect(refused.body).toMatchObject({ errcode: 'M_UNKNOWN_TOKEN' });
    expect((await perAction(delayId, 'restart')).status).toBe(200);
  });
});

describe('fake homeserver: fault knobs', () => {
  let hs: FakeHomeserver;

  beforeEach(async () => {
    hs = await startFakeHomeserver();
  });

  afterEach(async () => {
    await hs.close();
  });

  it('failNext answers matching calls with the given error and skips the operation', async () => {
    const delayId = await hs.createDelayedEvent({ roomId: ROOM, eventType: 'm.room.message', content: {}, delayMs: 10_000 });
    const restart = () => http('POST', `${hs.url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/${delayId}/restart`, {});
    const send = () => http('POST', `${hs.url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/${delayId}/send`, {});
    const expiry = hs.expiresAt(delayId);

    hs.failNext('refresh', 2, { status: 503 });
    hs.failNext('action', 1, { status: 429, errcode: 'M_LIMIT_EXCEEDED', retryAfterMs: 1234, retryAfterHeaderSeconds: 2 });
    await sleep(5);
    const first = await restart();
    expect(first.status).toBe(503);
    expect(first.body).toMatchObject({ errcode: 'M_UNKNOWN' });
    expect(hs.expiresAt(delayId)).toBe(expiry);

    const limited = await send();
    expect(limited.status).toBe(429);
    expect(limited.body).toMatchObject({ errcode: 'M_LIMIT_EXCEEDED', retry_after_ms: 1234 });
    expect(limited.headers.get('retry-after')).toBe('2');
    expect(hs.status(delayId)).toBe('pending');

    expect((await restart()).status).toBe(503);
    expect((await restart()).status).toBe(200);
    expect(hs.expiresAt(delayId)).toBeGreaterThan(expiry ?? 0);

    hs.failNext('any', 1, { status: 404, nonJson: true });
    const plain = await send();
    expect(plain.status).toBe(404);
    expect(plain.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(() => JSON.parse(plain.text) as unknown).toThrow();
    expect(hs.status(delayId)).toBe('pending');
    expect(hs.calls.filter((c) => c.op !== 'create').map((c) => [c.op, c.status])).toEqual([
      ['restart', 503],
      ['send', 429],
      ['restart', 503],
      ['restart', 200],
      ['send', 404],
    ]);
  });

  it('rate-limits management calls per client IP with a token bucket', async () => {
    const { future_token } = await hs.createFuture({ roomId: ROOM, timeoutSeconds: 60, onTimeout: { type: 'x', content: {} } });
    const refresh = () => http('PUT', `${hs.url}/_matrix/client/v3/futures/refresh`, { future_token });
    // One token per 2 s: the burst is spent before a loaded machine's slow requests could earn a token back.
    hs.setRateLimit({ perSecond: 0.5, burst: 3 });
    const statuses = [];
    for (let i = 0; i < 4; i += 1) statuses.push((await refresh()).status);
    expect(statuses).toEqual([200, 200, 200, 429]);

    const limited = await refresh();
    expect(limited.status).toBe(429);
    const retryAfterMs = (limited.body as { errcode: string; retry_after_ms: number }).retry_after_ms;
    expect(limited.body).toMatchObject({ errcode: 'M_LIMIT_EXCEEDED' });
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(2000);

    await sleep(retryAfterMs + 20);
    expect((await refresh()).status).toBe(200);
    hs.setRateLimit(null);
    for (let i = 0; i < 6; i += 1) expect((await refresh()).status).toBe(200);
  });

  it('down means network errors for management calls; latency delays them', async () => {
    const { future_token } = await hs.createFuture({ roomId: ROOM, timeoutSeconds: 60, onTimeout: { type: 'x', content: {} } });
    const refresh = () => http('PUT', `${hs.url}/_matrix/client/v3/futures/refresh`, { future_token });

    hs.setDown(true);
    await expect(refresh()).rejects.toThrow();
    expect(hs.calls.at(-1)).toMatchObject({ op: 'refresh', status: 0 });
    await expect(http('POST', `${hs.url}/_matrix/client/v3/futures/refresh`, { future_token })).rejects.toThrow();
    await expect(http('POST', `${hs.url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/syd_x/restart`, {})).rejects.toThrow();
    await hs.createFuture({ roomId: ROOM, timeoutSeconds: 60, onTimeout: { type: 'x', content: {} } });

    hs.setDown(false);
    // Long enough that a loaded machine's slowest loopback request still answers well within it once reset.
    hs.setLatency(2000);
    const started = Date.now();
    expect((await refresh()).status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1990);

    hs.reset();
    const again = Date.now();
    expect((await refresh()).status).toBe(200);
    expect(Date.now() - again).toBeLessThan(1990);
  });
});

describe('fake LiveKit: webhooks', () => {
  const receiver = new WebhookReceiver(API_KEY, API_SECRET);

  it('builds proto3 JSON exactly as LiveKit marshals WebhookEvent', () => {
    const body = buildWebhookBody({
      event: 'participant_left',
      id: 'EV_fixed',
      createdAt: 1_771_351_907,
      room: { name: 'room-a', sid: 'RM_a' },
      participant: { sid: 'PA_1', identity: '@a:fake.hs', state: 'DISCONNECTED', disconnectReason: 'CLIENT_INITIATED', joinedAt: 1_771_351_800 },
    });
    const json = JSON.parse(body) as Record<string, unknown>;
    expect(json).toEqual({
      event: 'participant_left',
      id: 'EV_fixed',
      createdAt: '1771351907',
      room: { sid: 'RM_a', name: 'room-a' },
      participant: {
        sid: 'PA_1',
        identity: '@a:fake.hs',
        state: 'DISCONNECTED',
        disconnectReason: 'CLIENT_INITIATED',
        joinedAt: '1771351800',
        joinedAtMs: '1771351800000',
      },
    });

    const zeroes = JSON.parse(
      buildWebhookBody({ event: 'participant_left', room: { name: 'r' }, participant: { sid: 'PA_2', identity: 'b', state: 'JOINING', disconnectReason: 'UNKNOWN_REASON' } }),
    ) as { id: string; createdAt: string; participant: Record<string, unknown> };
    expect(zeroes.participant).toEqual({ sid: 'PA_2', identity: 'b' });
    expect(zeroes.id).toMatch(/^EV_/);
    expect(Math.abs(Number(zeroes.createdAt) - Date.now() / 1000)).toBeLessThan(5);
  });

  it('signs with the SDK by default and like the Go server on request; WebhookReceiver accepts both and rejects a tampered body', async () => {
    const body = buildWebhookBody({
      event: 'participant_left',
      room: { name: 'room-a', sid: 'RM_a' },
      participant: { sid: 'PA_1', identity: '@a:fake.hs', state: 'DISCONNECTED', disconnectReason: 'CLIENT_INITIATED' },
    });
    const sdkClaims = JSON.parse(Buffer.from((await signWebhook(body, API_KEY, API_SECRET)).split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
    expect(Object.keys(sdkClaims).sort()).toEqual(['exp', 'iss', 'nbf', 'sha256']);
    const jwt = await signWebhook(body, API_KEY, API_SECRET, { signer: 'livekit' });
    const claims = JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
    expect(Object.keys(claims).sort()).toEqual(['exp', 'iat', 'iss', 'nbf', 'sha256']);
    expect(claims['iss']).toBe(API_KEY);
    expect(claims['iat']).toBe(claims['nbf']);
    expect(Number(claims['exp']) - Number(claims['iat'])).toBe(300);
    expect(claims['sha256']).toMatch(/^[A-Za-z0-9+/]{43}=$/);

    const event = await receiver.receive(body, jwt);
    expect(event.event).toBe('participant_left');
    expect(event.participant?.identity).toBe('@a:fake.hs');
    expect(event.participant?.disconnectReason).toBe(DisconnectReason.CLIENT_INITIATED);
    expect(event.participant?.state).toBe(ParticipantInfo_State.DISCONNECTED);

    const viaSdk = await signWebhook(body, API_KEY, API_SECRET, { signer: 'sdk' });
    await expect(receiver.receive(body, viaSdk)).resolves.toBeDefined();

    await expect(receiver.receive(`${body} `, jwt)).rejects.toThrow(/sha256/);
    await expect(receiver.receive(body, await signWebhook(body, API_KEY, 'wrong-secret'))).rejects.toThrow();
    await expect(receiver.receive(body, await signWebhook(body, 'other-key', API_SECRET))).rejects.toThrow();
    await expect(receiver.receive(body, await signWebhook(body, API_KEY, API_SECRET, { ttlSeconds: -60 }))).rejects.toThrow();
    await expect(receiver.receive(body, await signWebhook(body, API_KEY, API_SECRET, { ttlSeconds: -60, signer: 'livekit' }))).rejects.toThrow();
  });

  describe('WebhookSender', () => {
    interface Received {
      headers: IncomingHttpHeaders;
      body: string;
      accepted: boolean;
    }
    const received: Received[] = [];
    let server: Server;
    let url: string;

    beforeAll(async () => {
      server = createServer((req, res) => {
        void readRawBody(req).then((raw) => {
          const body = raw.toString('utf8');
          receiver.receive(body, req.headers.authorization).then(
            (event) => {
              received.push({ headers: req.headers, body, accepted: true });
              res.writeHead(200, { 'Content-Type': 'application/json' });
              res.end(JSON.stringify({ id: event.id }));
            },
            (err: unknown) => {
              received.push({ headers: req.headers, body, accepted: false });
              res.writeHead(401, { 'Content-Type': 'application/json' });
              res.end(JSON.stringify({ errcode: 'M_UNKNOWN_TOKEN', error: String(err) }));
            },
          );
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/livekit/webhook`;
    });

    afterAll(async () => {
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    });

    beforeEach(() => {
      received.length = 0;
    });

    it('posts signed webhooks with LiveKit headers, and can resend the same event id', async () => {
      const sender = new WebhookSender({ url, apiKey: API_KEY, apiSecret: API_SECRET });
      const joined = await sender.participantJoined('room-a', { sid: 'PA_1', identity: 'alice' });
      expect(joined).toMatchObject({ status: 200, body: { id: joined.id } });
      expect(joined.id).toMatch(/^EV_/);
      const headers = received[0]?.headers;
      expect(headers?.['content-type']).toBe('application/webhook+json');
      expect(headers?.['user-agent']).toBe('LiveKit');
      expect(headers?.authorization).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
      expect(JSON.parse(received[0]?.body ?? '{}')).toMatchObject({
        event: 'participant_joined',
        room: { name: 'room-a', sid: expect.stringMatching(/^RM_/) },
        participant: { sid: 'PA_1', identity: 'alice', state: 'ACTIVE' },
      });

      const left = await sender.participantLeft('room-a', { sid: 'PA_1', identity: 'alice' }, 'DUPLICATE_IDENTITY');
      const leftBody = JSON.parse(left.rawBody) as { room: { sid: string }; participant: Record<string, unknown> };
      expect(leftBody.participant).toMatchObject({ state: 'DISCONNECTED', disconnectReason: 'DUPLICATE_IDENTITY' });
      expect(leftBody.room.sid).toBe((JSON.parse(received[0]?.body ?? '{}') as { room: { sid: string } }).room.sid);
      const aborted = await sender.connectionAborted('room-a', { sid: 'PA_2', identity: 'bob' });
      expect((JSON.parse(aborted.rawBody) as { participant: Record<string, unknown> }).participant).not.toHaveProperty('disconnectReason');
      const finished = await sender.roomFinished('room-a');
      expect(finished.status).toBe(200);

      const again = await sender.send({ event: 'participant_left', id: left.id, room: { name: 'room-a' }, participant: { sid: 'PA_1', identity: 'alice' } });
      expect(again.status).toBe(200);
      expect(again.id).toBe(left.id);
      expect(received.every((r) => r.accepted)).toBe(true);
    });

    it('can tamper, sign with another key, or drop the Authorization header', async () => {
      const sender = new WebhookSender({ url, apiKey: API_KEY, apiSecret: API_SECRET });
      const participant = { sid: 'PA_1', identity: 'alice' };
      expect((await sender.participantJoined('room-a', participant, { tamperBody: true })).status).toBe(401);
      expect((await sender.participantJoined('room-a', participant, { signWith: { apiKey: API_KEY, apiSecret: 'nope' } })).status).toBe(401);
      expect((await sender.participantJoined('room-a', participant, { authorization: null })).status).toBe(401);
      expect(received[2]?.headers.authorization).toBeUndefined();
      expect(received.map((r) => r.accepted)).toEqual([false, false, false]);
      expect(JSON.parse(received[0]?.body ?? '{}')).toMatchObject({ event: 'participant_joined' });
    });
  });
});

describe('fake LiveKit: RoomService and tokens', () => {
  let service: FakeRoomService;

  beforeAll(async () => {
    service = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
  });

  afterAll(async () => {
    await service.close();
  });

  beforeEach(() => {
    service.clear();
    service.setFailing(null);
    service.setDown(false);
    service.calls.length = 0;
  });

  it('answers the real RoomServiceClient: list, get, not found', async () => {
    const client = new RoomServiceClient(service.url, API_KEY, API_SECRET);
    service.join('room-a', { sid: 'PA_1', identity: 'alice' });
    service.join('room-a', { sid: 'PA_2', identity: 'bob', state: 'JOINED' });
    service.join('room-b', { sid: 'PA_3', identity: 'carol' });

    const listed = await client.listParticipants('room-a');
    expect(listed.map((p) => [p.identity, p.sid, p.state])).toEqual([
      ['alice', 'PA_1', ParticipantInfo_State.ACTIVE],
      ['bob', 'PA_2', ParticipantInfo_State.JOINED],
    ]);
    expect(await client.listParticipants('room-empty')).toEqual([]);

    const alice = await client.getParticipant('room-a', 'alice');
    expect(alice.sid).toBe('PA_1');
    expect(typeof alice.joinedAt).toBe('bigint');

    service.leave('room-a', 'alice');
    const missing = await client.getParticipant('room-a', 'alice').then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(missing).toBeInstanceOf(TwirpError);
    expect(missing).toMatchObject({ status: 404, code: 'not_found', message: 'participant not found' });
    expect(service.calls.map((c) => [c.method, c.room, c.identity, c.status])).toEqual([
      ['ListParticipants', 'room-a', undefined, 200],
      ['ListParticipants', 'room-empty', undefined, 200],
      ['GetParticipant', 'room-a', 'alice', 200],
      ['GetParticipant', 'room-a', 'alice', 404],
    ]);
  });

  it('refuses a wrong secret or a token without roomAdmin for that room', async () => {
    service.join('room-a', { sid: 'PA_1', identity: 'alice' });
    const wrongSecret = new RoomServiceClient(service.url, API_KEY, 'not-the-secret');
    await expect(wrongSecret.listParticipants('room-a')).rejects.toMatchObject({ status: 401, code: 'unauthenticated' });

    const participantToken = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'alice', room: 'room-a' });
    const withJoinToken = new RoomServiceClient(service.url, undefined, undefined, { token: participantToken });
    await expect(withJoinToken.listParticipants('room-a')).rejects.toMatchObject({ status: 401, code: 'unauthenticated' });
  });

  it('creates rooms for a roomCreate grant, records the settings asked for, and answers an existing room again', async () => {
    const client = new RoomServiceClient(service.url, API_KEY, API_SECRET);
    const first = await client.createRoom({ name: 'room-c', emptyTimeout: 300, departureTimeout: 20, maxParticipants: 0 });
    const again = await client.createRoom({ name: 'room-c', emptyTimeout: 300, departureTimeout: 20 });
    expect(first.name).toBe('room-c');
    expect(again.sid).toBe(first.sid);
    expect(service.calls.map((c) => [c.method, c.room, c.params, c.status])).toEqual([
      ['CreateRoom', 'room-c', { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 0 }, 200],
      ['CreateRoom', 'room-c', { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 0 }, 200],
    ]);
    const participantToken = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'alice', room: 'room-c' });
    const joinOnly = new RoomServiceClient(service.url, undefined, undefined, { token: participantToken });
    await expect(joinOnly.createRoom({ name: 'room-d' })).rejects.toMatchObject({ status: 401, code: 'unauthenticated' });
  });

  it('can fail every call or be unreachable', async () => {
    const client = new RoomServiceClient(service.url, API_KEY, API_SECRET, { requestTimeout: 2 });
    service.join('room-a', { sid: 'PA_1', identity: 'alice' });
    service.setFailing(503);
    await expect(client.listParticipants('room-a')).rejects.toMatchObject({ status: 503, code: 'unavailable' });
    service.setFailing(null);
    service.setDown(true);
    await expect(client.listParticipants('room-a')).rejects.toThrow();
    expect(service.calls.map((c) => c.status)).toEqual([503, 0]);
    service.setDown(false);
    expect(await client.listParticipants('room-a')).toHaveLength(1);
  });

  it('mints participant tokens bound to identity and room', async () => {
    const token = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'alice', room: 'room-a', ttlSeconds: 60 });
    const claims = await new TokenVerifier(API_KEY, API_SECRET).verify(token);
    expect(claims.sub).toBe('alice');
    expect(claims.video).toMatchObject({ roomJoin: true, room: 'room-a' });
    expect(Number(claims.exp) - Number(claims.nbf)).toBe(60);
    await expect(new TokenVerifier(API_KEY, 'other').verify(token)).rejects.toThrow();
  });
});
