import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken, type WebhookSender } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, api, sleep, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { startDaemonWithFakes, type DaemonWithFakes } from '../helpers/daemon-with-fakes.js';
import { metricValue } from '../helpers/metrics.js';
import { actionsFired, createHomeserverToken, delegate, refreshCalls, uniqueName, type Participant } from '../helpers/scenario.js';

/**
 * A homeserver that limits us like Synapse limits unauthenticated management calls (1/s, burst 5, per client IP):
 * the sidecar keeps every future alive that the rate allows, puts actions first, and refuses what it cannot serve.
 */
describe('homeserver back-pressure', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;
  let world: DaemonWithFakes | undefined;
  const TIMEOUT_MS = 20_000;

  beforeAll(async () => {
    // Each participant comes from its own address (through a trusted proxy): one address may hold only a share of a
    // homeserver with delegations it has not accepted yet, and this test is about the homeserver's whole budget.
    world = await startDaemonWithFakes({
      homeserver: { rateLimit: { perSecond: 1, burst: 5 } },
      env: { SIDECAR_HOMESERVER_RATE: '1', SIDECAR_TRUST_PROXY: '127.0.0.1' },
    });
    ({ hs, d, lk } = world);
  });
  afterAll(async () => {
    await world?.stop();
  });

  it('refreshes every future the rate allows before it expires, fires actions ahead of queued refreshes, and refuses more', async () => {
    // At 1 call/s with 80 % for steady refreshes at 0.45 of a 20 s timeout, 7 delegations fit; the 8th does not.
    const room = uniqueName('room');
    // Registered together, so that their first refreshes queue together however slow the machine is today (one by
    // one, a loaded machine took long enough for the limiter to refill and the queue was gone before the leave).
    const ps: Participant[] = await Promise.all(Array.from({ length: 7 }, (_, i) => delegate(d.url, hs, 'futures', { room, timeoutMs: TIMEOUT_MS, forwardedFor: `198.51.100.${i + 1}` })));
    const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: uniqueName('late'), room });
    const token = await createHomeserverToken(hs, 'futures', `!${room}:hs`, TIMEOUT_MS);
    const refused = await api(d.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'futures', token, timeout_ms: TIMEOUT_MS }, forwardedFor: '198.51.100.8' });
    expect(refused).toMatchObject({ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' } });

    // Seven first refreshes were queued at once: five go out in the burst, two wait. A leave now must not wait.
    const leaver = ps[6]!;
    await lk.participantJoined(room, leaver);
    await lk.participantLeft(room, leaver, 'CLIENT_INITIATED');
    await waitFor('the leave', () => actionsFired(hs, leaver.token).length === 1, 20_000);
    const actionAt = hs.calls.find((c) => c.handle === leaver.token && c.op === 'action')!.at;
    const firstRefreshes = ps.slice(0, 6).map((p) => hs.calls.find((c) => c.handle === p.token && c.op === 'refresh' && c.status === 200)?.at ?? Infinity);
    expect(firstRefreshes.some((at) => at > actionAt)).toBe(true);

    for (const p of ps.slice(0, 6)) await lk.participantJoined(room, p);
    await sleep(TIMEOUT_MS + 4000);
    for (const p of ps.slice(0, 6)) {
      expect(hs.status(p.token)).toBe('pending');
      expect(refreshCalls(hs, p.token)).toBeGreaterThanOrEqual(2);
    }
    const limited = hs.calls.filter((c) => c.status === 429).length;
    expect(limited).toBeLessThanOrEqual(2);
    expect(await metricValue(d.daemon.metrics.registry, 'futures_sidecar_delegations_registered_total', { dialect: 'futures', outcome: 'overloaded' })).toBe(1);
  }, 60_000);
});
