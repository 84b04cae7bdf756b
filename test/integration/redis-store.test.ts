import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeHomeserver } from '../fakes/homeserver.js';
import type { WebhookSender } from '../fakes/livekit.js';
import { ADMIN_TOKEN, api, sleep, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { startDaemonWithFakes, type DaemonWithFakes } from '../helpers/daemon-with-fakes.js';
import { redisTestsEnabled, startRedis, type RedisServer } from '../helpers/redis.js';
import { actionsFired, delegate, delegationState, refreshCalls } from '../helpers/scenario.js';

/** One daemon on the replicated store behaves like the embedded one. */
describe.runIf(redisTestsEnabled('redis store'))('the Redis store, one replica', () => {
  let redis: RedisServer;
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;

  let world: DaemonWithFakes | undefined;

  beforeAll(async () => {
    redis = await startRedis();
    world = await startDaemonWithFakes({ env: { SIDECAR_STORE: redis.url, SIDECAR_REDIS_LEASE_MS: '3000' } });
    ({ hs, d, lk } = world);
    await waitFor('shards held', async () => (await api(d.url, 'GET', '/readyz')).status === 200);
  });
  afterAll(async () => {
    await world?.stop();
    await redis?.stop();
  });

  it('refreshes, fires leave once for a duplicated webhook, and revokes', async () => {
    // Long enough that a loaded machine's late refresh does not let it expire (a 2 s future once did).
    const p = await delegate(d.url, hs, 'futures', { timeoutMs: 8000 });
    await lk.participantJoined(p.room, p);
    await waitFor('connected', async () => (await delegationState(d.url, p)).state === 'connected');
    await waitFor('two refreshes', () => refreshCalls(hs, p.token) >= 2, 20_000);
    expect(hs.status(p.token)).toBe('pending');
    const left = await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    const again = await lk.participantLeft(p.room, p, 'CLIENT_INITIATED', { id: left.id });
    expect(again.body).toMatchObject({ status: 'duplicate' });
    await waitFor('leave', () => actionsFired(hs, p.token).length === 1);
    await sleep(300);
    expect(actionsFired(hs, p.token)).toEqual(['leave']);

    const q = await delegate(d.url, hs, 'delayed_events');
    expect(await api(d.url, 'DELETE', `/v1/delegations/${q.delegationId}`, { token: q.jwt })).toMatchObject({ status: 200, body: { state: 'revoked' } });
    const again2 = await api(d.url, 'POST', '/v1/delegations', { token: q.jwt, body: { homeserver: hs.url, dialect: 'delayed_events', token: q.token, timeout_ms: 4000 } });
    expect(again2).toMatchObject({ status: 200, body: { delegation_id: q.delegationId, state: 'revoked' } });
  });

  it('lists through the admin API', async () => {
    const p = await delegate(d.url, hs, 'futures');
    const res = await api(d.url, 'GET', `/v1/admin/delegations?room=${p.room}`, { token: ADMIN_TOKEN });
    expect(res.body.delegations.map((x: { delegation_id: string }) => x.delegation_id)).toEqual([p.delegationId]);
  });

  it('fails /readyz while Redis is unreachable and recovers without losing or double-firing anything', async () => {
    const stays = await delegate(d.url, hs, 'futures', { timeoutMs: 12_000 });
    const leaves = await delegate(d.url, hs, 'delayed_events', { timeoutMs: 12_000 });
    for (const p of [stays, leaves]) await lk.participantJoined(p.room, p);
    await waitFor('connected', async () => (await delegationState(d.url, leaves)).state === 'connected');
    const refreshesBefore = refreshCalls(hs, stays.token);
    redis.pause();
    await waitFor('not ready', async () => (await api(d.url, 'GET', '/readyz')).status === 503, 20_000);
    // Not acknowledged, so LiveKit retries it; whether the first attempt reached Redis or not, it takes effect once.
    const duringOutage = await lk.participantLeft(leaves.room, leaves, 'CLIENT_INITIATED');
    expect(duringOutage.status).toBe(503);
    expect(duringOutage.body).toMatchObject({ errcode: 'M_UNKNOWN' });
    await sleep(2000);
    redis.resume();
    await waitFor('ready again', async () => (await api(d.url, 'GET', '/readyz')).status === 200, 20_000);
    const retried = await lk.participantLeft(leaves.room, leaves, 'CLIENT_INITIATED', { id: duringOutage.id });
    expect(retried.status).toBe(200);
    await waitFor('leave after the outage', () => actionsFired(hs, leaves.token).length === 1, 20_000);
    await waitFor('refreshing again', () => refreshCalls(hs, stays.token) > refreshesBefore, 20_000);
    await sleep(500);
    expect(actionsFired(hs, leaves.token)).toEqual(['send']);
    expect(actionsFired(hs, stays.token)).toEqual([]);
    expect(hs.status(stays.token)).toBe('pending');
    expect((await delegationState(d.url, stays)).state).toBe('connected');
  });
});
