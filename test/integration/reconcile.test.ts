import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { startFakeRoomService, type FakeRoomService, type WebhookSender } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, sleep, startDaemon, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { metricValue } from '../helpers/metrics.js';
import { actionsFired, delegate, delegationState, webhookSender } from '../helpers/scenario.js';

function corrections(d: RunningDaemon, kind: string): Promise<number> {
  return metricValue(d.daemon.metrics.registry, 'futures_sidecar_reconcile_corrections_total', { kind });
}

/** When webhooks go missing, LiveKit's RoomService (a Twirp fake, called by livekit-server-sdk) fills the gap. */
describe('reconciliation with LiveKit', () => {
  let hs: FakeHomeserver;
  let rs: FakeRoomService;
  let d: RunningDaemon;
  let lk: WebhookSender;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
  });
  afterAll(async () => {
    await hs.close();
  });
  beforeEach(async () => {
    rs = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
    d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '1000', SIDECAR_JOIN_TIMEOUT_MS: '30000' });
    lk = webhookSender(d.url);
  });
  afterEach(async () => {
    await d.stop();
    await rs.close();
  });

  it('connects a delegation whose participant_joined webhook was lost, by polling getParticipant', async () => {
    // A reconcile interval far beyond the test, so only the join poll can find the participant.
    await d.stop();
    d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '600000', SIDECAR_JOIN_TIMEOUT_MS: '30000' });
    lk = webhookSender(d.url);
    const p = await delegate(d.url, hs, 'futures');
    rs.join(p.room, { sid: p.sid, identity: p.identity, state: 'ACTIVE' });
    await waitFor('connected by the join poll', async () => (await delegationState(d.url, p)).state === 'connected', 20_000);
    expect(rs.calls.some((c) => c.method === 'GetParticipant' && c.identity === p.identity && c.status === 200)).toBe(true);
    expect(await corrections(d, 'joined')).toBeGreaterThanOrEqual(1);
    await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    await waitFor('leave fired for the polled session', () => actionsFired(hs, p.token).length === 1);
  });

  it('counts a participant that is still joining as present', async () => {
    const p = await delegate(d.url, hs, 'delayed_events');
    rs.join(p.room, { sid: p.sid, identity: p.identity, state: 'JOINING' });
    await waitFor('connected', async () => (await delegationState(d.url, p)).state === 'connected', 20_000);
  });

  it('declares a participant lost after two reconcile answers without it, then fires connection_lost after the grace', async () => {
    const p = await delegate(d.url, hs, 'futures');
    rs.join(p.room, { sid: p.sid, identity: p.identity, state: 'ACTIVE' });
    await lk.participantJoined(p.room, p);
    await waitFor('connected', async () => (await delegationState(d.url, p)).state === 'connected');
    await sleep(1200);
    expect((await delegationState(d.url, p)).state).toBe('connected');
    rs.leave(p.room, p.identity);
    const t0 = Date.now();
    await waitFor('grace', async () => (await delegationState(d.url, p)).state === 'grace', 20_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    await waitFor('connection_lost fired', () => actionsFired(hs, p.token).length === 1, 20_000);
    expect((await delegationState(d.url, p)).pending_action).toBe('connection_lost');
    expect(await corrections(d, 'lost')).toBe(1);
  });

  it('rebinds to the new session LiveKit lists for the identity, without firing', async () => {
    const p = await delegate(d.url, hs, 'futures');
    rs.join(p.room, { sid: p.sid, identity: p.identity, state: 'ACTIVE' });
    await lk.participantJoined(p.room, p);
    rs.leave(p.room, p.identity);
    rs.join(p.room, { sid: `${p.sid}-new`, identity: p.identity, state: 'ACTIVE' });
    await waitFor('rebound', async () => (await corrections(d, 'rebound')) >= 1, 20_000);
    await sleep(2500);
    expect((await delegationState(d.url, p)).state).toBe('connected');
    expect(actionsFired(hs, p.token)).toEqual([]);
  });

  it('changes nothing while LiveKit answers errors or is unreachable', async () => {
    const p = await delegate(d.url, hs, 'futures');
    await lk.participantJoined(p.room, p);
    await waitFor('connected', async () => (await delegationState(d.url, p)).state === 'connected');
    const listed = (): number => rs.calls.filter((c) => c.method === 'ListParticipants').length;
    const before = listed();
    rs.setFailing(503);
    await waitFor('two reconcile cycles answered with errors', () => listed() >= before + 2, 20_000);
    rs.setFailing(null);
    rs.setDown(true);
    await sleep(2500);
    expect((await delegationState(d.url, p)).state).toBe('connected');
    expect(rs.calls.filter((c) => c.method === 'ListParticipants').length).toBeGreaterThanOrEqual(2);
    expect(actionsFired(hs, p.token)).toEqual([]);
    rs.setDown(false);
  });

  // Found by the soak: a rejoin within the grace whose webhook was lost was seen only by the next reconcile cycle.
  it('looks the participant up during the grace, so a rejoin whose webhook was lost fires nothing', async () => {
    await d.stop();
    d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '600000', SIDECAR_RECONNECT_GRACE_MS: '5000' });
    lk = webhookSender(d.url);
    const p = await delegate(d.url, hs, 'futures');
    rs.join(p.room, { sid: p.sid, identity: p.identity, state: 'ACTIVE' });
    await lk.participantJoined(p.room, p);
    await lk.participantLeft(p.room, p, 'CONNECTION_TIMEOUT');
    await waitFor('grace', async () => (await delegationState(d.url, p)).state === 'grace');
    rs.leave(p.room, p.identity);
    rs.join(p.room, { sid: `${p.sid}-back`, identity: p.identity, state: 'ACTIVE' });
    await waitFor('connected again by the poll', async () => (await delegationState(d.url, p)).state === 'connected', 20_000);
    await sleep(5500);
    expect(actionsFired(hs, p.token)).toEqual([]);
    expect(await corrections(d, 'rejoined')).toBe(1);
  });

  it('does not take the session that just dropped, still listed by LiveKit, for a rejoin', async () => {
    await d.stop();
    d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '600000', SIDECAR_RECONNECT_GRACE_MS: '3000' });
    lk = webhookSender(d.url);
    const p = await delegate(d.url, hs, 'futures');
    rs.join(p.room, { sid: p.sid, identity: p.identity, state: 'ACTIVE' });
    await lk.participantJoined(p.room, p);
    await lk.participantLeft(p.room, p, 'CONNECTION_TIMEOUT');
    await waitFor('connection_lost fired', () => actionsFired(hs, p.token).length === 1, 20_000);
  });
});
