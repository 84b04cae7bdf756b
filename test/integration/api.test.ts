import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken, type WebhookSender } from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, sleep, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { startDaemonWithFakes, type DaemonWithFakes } from '../helpers/daemon-with-fakes.js';
import { metricValue } from '../helpers/metrics.js';
import { createHomeserverToken, delegate, delegationState, uniqueName, webhookSender } from '../helpers/scenario.js';

/** Bad input gets the contract's status and errcode, and changes no state. */
describe('the delegation API', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;
  let world: DaemonWithFakes | undefined;
  let jwt: string;
  let token: string;
  const room = uniqueName('room');
  const identity = uniqueName('alice');

  const openDelegations = () => d.daemon.engine.openCount;
  const body = (over: Record<string, unknown> = {}) => ({ homeserver: hs.url, dialect: 'futures', token, timeout_ms: 60_000, ...over });

  beforeAll(async () => {
    world = await startDaemonWithFakes({ env: { LIVEKIT_KEYS: `${API_KEY}: ${API_SECRET}\nsecondkey: second-secret` } });
    ({ hs, d, lk } = world);
    jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
    token = await createHomeserverToken(hs, 'futures', `!${room}:hs`, 60_000);
  });
  afterAll(async () => {
    await world?.stop();
  });

  const refused: Array<[string, () => Promise<{ status: number; body: any }>, number, string]> = [
    ['no LiveKit token', () => api(d.url, 'POST', '/v1/delegations', { body: body() }), 401, 'M_MISSING_TOKEN'],
    [
      'a token signed with the wrong secret',
      async () => api(d.url, 'POST', '/v1/delegations', { token: await mintParticipantToken({ apiKey: API_KEY, apiSecret: 'forged', identity, room }), body: body() }),
      401,
      'M_UNKNOWN_TOKEN',
    ],
    [
      'a token from an unknown key',
      async () => api(d.url, 'POST', '/v1/delegations', { token: await mintParticipantToken({ apiKey: 'nokey', apiSecret: API_SECRET, identity, room }), body: body() }),
      401,
      'M_UNKNOWN_TOKEN',
    ],
    [
      'an expired token',
      async () => api(d.url, 'POST', '/v1/delegations', { token: await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room, ttlSeconds: -60 }), body: body() }),
      401,
      'M_UNKNOWN_TOKEN',
    ],
    [
      'a token without roomJoin',
      async () => api(d.url, 'POST', '/v1/delegations', { token: await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room, roomJoin: false }), body: body() }),
      401,
      'M_UNKNOWN_TOKEN',
    ],
    ['malformed JSON', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, rawBody: '{"homeserver": ' }), 400, 'M_NOT_JSON'],
    ['a non-JSON content type', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, rawBody: 'x', contentType: 'text/plain' }), 415, 'M_NOT_JSON'],
    ['a missing field', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'futures', timeout_ms: 60_000 } }), 400, 'M_BAD_JSON'],
    ['an unknown field', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ extra: 1 }) }), 400, 'M_BAD_JSON'],
    ['a string where a number belongs (no coercion)', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ timeout_ms: '60000' }) }), 400, 'M_BAD_JSON'],
    ['an unknown dialect', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ dialect: 'telepathy' }) }), 400, 'M_BAD_JSON'],
    ['a timeout below the minimum', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ timeout_ms: 10 }) }), 400, 'M_INVALID_PARAM'],
    ['a timeout above the maximum', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ timeout_ms: 10 * 86_400_000 }) }), 400, 'M_INVALID_PARAM'],
    ['actions with delayed events', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ dialect: 'delayed_events', actions: { leave: 'x' } }) }), 400, 'M_BAD_JSON'],
    ['an access token with futures', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ access_token: 'syt_x' }) }), 400, 'M_BAD_JSON'],
    ['a homeserver that is not a URL', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ homeserver: 'not a url' }) }), 400, 'M_INVALID_PARAM'],
    ['a body over the size limit', () => api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body({ token: 'x'.repeat(100_000) }) }), 413, 'M_TOO_LARGE'],
  ];
  for (const [what, send, status, errcode] of refused) {
    it(`refuses ${what} with ${status} ${errcode} and changes nothing`, async () => {
      const before = openDelegations();
      const res = await send();
      expect(res.status).toBe(status);
      expect(res.body).toMatchObject({ errcode });
      expect(typeof res.body.error).toBe('string');
      expect(openDelegations()).toBe(before);
      expect(JSON.stringify(res.body)).not.toContain(token);
    });
  }

  it('answers unknown routes and wrong methods in Matrix style', async () => {
    expect(await api(d.url, 'GET', '/nope')).toMatchObject({ status: 404, body: { errcode: 'M_UNRECOGNIZED' } });
    expect(await api(d.url, 'PUT', '/v1/delegations')).toMatchObject({ status: 405, body: { errcode: 'M_UNRECOGNIZED' } });
    expect(await api(d.url, 'POST', '/v1/delegations/abc')).toMatchObject({ status: 405, body: { errcode: 'M_UNRECOGNIZED' } });
  });

  it('accepts tokens of every configured key and is idempotent per token', async () => {
    const other = await mintParticipantToken({ apiKey: 'secondkey', apiSecret: 'second-secret', identity, room });
    const first = await api(d.url, 'POST', '/v1/delegations', { token: other, body: body() });
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({ state: 'awaiting_join', room, identity });
    expect(first.body.delegation_id).toMatch(/^dg_/);
    expect(first.body.expires_at).toBeGreaterThan(Date.now());
    const again = await api(d.url, 'POST', '/v1/delegations', { token: jwt, body: body() });
    expect(again.status).toBe(200);
    expect(again.body.delegation_id).toBe(first.body.delegation_id);
  });

  it('refuses the same token from another identity with 403', async () => {
    const mallory = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'mallory', room });
    const res = await api(d.url, 'POST', '/v1/delegations', { token: mallory, body: body() });
    expect(res).toMatchObject({ status: 403, body: { errcode: 'M_FORBIDDEN' } });
  });

  it('lets only the same identity or the admin read and revoke; others get 404', async () => {
    const p = await delegate(d.url, hs, 'futures');
    const mallory = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: 'mallory', room: p.room });
    expect(await api(d.url, 'GET', `/v1/delegations/${p.delegationId}`, { token: mallory })).toMatchObject({ status: 404, body: { errcode: 'M_NOT_FOUND' } });
    expect(await api(d.url, 'DELETE', `/v1/delegations/${p.delegationId}`, { token: mallory })).toMatchObject({ status: 404 });
    expect((await delegationState(d.url, p)).state).toBe('awaiting_join');
    expect(await api(d.url, 'GET', `/v1/delegations/${p.delegationId}`)).toMatchObject({ status: 401, body: { errcode: 'M_MISSING_TOKEN' } });
    const asAdmin = await api(d.url, 'GET', `/v1/delegations/${p.delegationId}`, { token: ADMIN_TOKEN });
    expect(asAdmin.status).toBe(200);
    expect(JSON.stringify(asAdmin.body)).not.toContain(p.token);
    expect(await api(d.url, 'DELETE', `/v1/delegations/${p.delegationId}`, { token: ADMIN_TOKEN })).toMatchObject({ status: 200, body: { state: 'revoked' } });
    expect(await api(d.url, 'DELETE', `/v1/delegations/${p.delegationId}`, { token: p.jwt })).toMatchObject({ status: 200, body: { state: 'revoked' } });
    expect(await api(d.url, 'GET', '/v1/delegations/dg_unknown', { token: ADMIN_TOKEN })).toMatchObject({ status: 404 });
  });

  it('caps open delegations per identity', async () => {
    const capped = await startDaemon({ SIDECAR_MAX_DELEGATIONS_PER_IDENTITY: '2' });
    try {
      const who = uniqueName('capped');
      const r = uniqueName('room');
      const t = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: who, room: r });
      for (let i = 0; i < 2; i++) {
        const tok = await createHomeserverToken(hs, 'futures', `!${r}:hs`, 60_000);
        expect((await api(capped.url, 'POST', '/v1/delegations', { token: t, body: body({ token: tok }) })).status).toBe(201);
      }
      const tok = await createHomeserverToken(hs, 'futures', `!${r}:hs`, 60_000);
      const res = await api(capped.url, 'POST', '/v1/delegations', { token: t, body: body({ token: tok }) });
      expect(res).toMatchObject({ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' } });
      expect(res.body.retry_after_ms).toBeGreaterThan(0);
    } finally {
      await capped.stop();
    }
  });

  it('limits requests per client IP and per participant with 429 M_LIMIT_EXCEEDED, never the webhooks', async () => {
    const limited = await startDaemon({ SIDECAR_RATE_LIMIT_PER_MINUTE: '8', SIDECAR_RATE_LIMIT_PER_IDENTITY_PER_MINUTE: '2' });
    try {
      const r = uniqueName('room');
      const t = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: uniqueName('eve'), room: r });
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) {
        const tok = await createHomeserverToken(hs, 'futures', `!${r}:hs`, 60_000);
        statuses.push((await api(limited.url, 'POST', '/v1/delegations', { token: t, body: body({ token: tok }) })).status);
      }
      expect(statuses).toEqual([201, 201, 429]);
      const lkLimited = webhookSender(limited.url);
      for (let i = 0; i < 10; i++) expect((await lkLimited.participantJoined(r, { sid: `PA_${i}`, identity: `w${i}` })).status).toBe(200);
      let last = { status: 0, body: {} as any };
      for (let i = 0; i < 8; i++) last = await api(limited.url, 'GET', '/v1/delegations/dg_nothing', { token: ADMIN_TOKEN });
      expect(last).toMatchObject({ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' } });
      expect(last.body.retry_after_ms).toBeGreaterThan(0);
      expect((await api(limited.url, 'GET', '/livez')).status).toBe(200);
    } finally {
      await limited.stop();
    }
  });

  describe('webhooks that fail verification', () => {
    it('refuses a forged, altered, unsigned or expired webhook with 401 and changes nothing', async () => {
      const p = await delegate(d.url, hs, 'futures');
      await lk.participantJoined(p.room, p);
      await sleep(100);
      const leaving = { ...p };
      const forged = await lk.participantLeft(p.room, leaving, 'CLIENT_INITIATED', { signWith: { apiKey: API_KEY, apiSecret: 'not-the-secret' } });
      const altered = await lk.participantLeft(p.room, leaving, 'CLIENT_INITIATED', { tamperBody: true });
      const unsigned = await lk.participantLeft(p.room, leaving, 'CLIENT_INITIATED', { authorization: null });
      const expired = await lk.participantLeft(p.room, leaving, 'CLIENT_INITIATED', { sign: { ttlSeconds: -120 } });
      const unknownKey = await lk.participantLeft(p.room, leaving, 'CLIENT_INITIATED', { signWith: { apiKey: 'who', apiSecret: API_SECRET } });
      for (const r of [forged, altered, expired, unknownKey]) expect(r).toMatchObject({ status: 401, body: { errcode: 'M_UNKNOWN_TOKEN' } });
      expect(unsigned).toMatchObject({ status: 401, body: { errcode: 'M_MISSING_TOKEN' } });
      await sleep(300);
      expect((await delegationState(d.url, p)).state).toBe('connected');
      expect(await metricValue(d.daemon.metrics.registry, 'futures_sidecar_webhooks_total', { event: 'unverified', outcome: 'rejected' })).toBe(5);
    });

    it('accepts a webhook on the lk-jwt-service alias /sfu_webhook', async () => {
      const p = await delegate(d.url, hs, 'futures');
      const alias = webhookSender(d.url);
      (alias as unknown as { url: string }).url = `${d.url}/sfu_webhook`;
      const res = await alias.participantJoined(p.room, p);
      expect(res.status).toBe(200);
      await sleep(100);
      expect((await delegationState(d.url, p)).state).toBe('connected');
    });

    it('counts an event older than the dedupe window as stale and ignores it', async () => {
      const p = await delegate(d.url, hs, 'futures');
      await lk.participantJoined(p.room, p);
      const res = await lk.send({ event: 'participant_left', createdAt: Math.floor(Date.now() / 1000) - 3600, room: { name: p.room }, participant: { sid: p.sid, identity: p.identity, state: 'DISCONNECTED', disconnectReason: 'CLIENT_INITIATED' } });
      expect(res).toMatchObject({ status: 200, body: { status: 'stale' } });
      await sleep(200);
      expect((await delegationState(d.url, p)).state).toBe('connected');
    });
  });
});
