import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeHomeserver } from '../fakes/homeserver.js';
import type { WebhookSender } from '../fakes/livekit.js';
import { sleep, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { startDaemonWithFakes, type DaemonWithFakes } from '../helpers/daemon-with-fakes.js';
import { actionsFired, delegate, delegationState, refreshCalls, type DialectName } from '../helpers/scenario.js';

/** The contract's promise (section 1), over real HTTP, for both homeserver dialects. */
describe.each<DialectName>(['futures', 'delayed_events'])('the promise, %s dialect', (dialect) => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;
  let world: DaemonWithFakes | undefined;
  const expectedAction = (kind: 'leave' | 'connection_lost') => (dialect === 'futures' ? kind : 'send');

  beforeAll(async () => {
    world = await startDaemonWithFakes({ env: { SIDECAR_JOIN_TIMEOUT_MS: '1500' } });
    ({ hs, d, lk } = world);
  });
  afterAll(async () => {
    await world?.stop();
  });

  it('refreshes at once on registration and keeps the future alive while connected', async () => {
    const p = await delegate(d.url, hs, dialect, { timeoutMs: 1500 });
    await lk.participantJoined(p.room, p);
    await waitFor('first refresh', () => refreshCalls(hs, p.token) >= 1, 20_000);
    // Four refreshes of a 1.5 s future span more than twice its timeout: it lived only because they came in time.
    await waitFor('four refreshes', () => refreshCalls(hs, p.token) >= 4, 20_000);
    expect(hs.status(p.token)).toBe('pending');
    expect(refreshCalls(hs, p.token)).toBeGreaterThanOrEqual(4);
    expect(actionsFired(hs, p.token)).toEqual([]);
    expect((await delegationState(d.url, p)).state).toBe('connected');
  });

  it('fires leave once for an intentional leave', async () => {
    const p = await delegate(d.url, hs, dialect);
    await lk.participantJoined(p.room, p);
    await waitFor('connected', async () => (await delegationState(d.url, p)).state === 'connected');
    await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    await waitFor('leave fired', () => actionsFired(hs, p.token).length === 1);
    const s = await delegationState(d.url, p);
    expect(s).toMatchObject({ state: 'fired', pending_action: 'leave', outcome: 'sent' });
    expect(actionsFired(hs, p.token)).toEqual([expectedAction('leave')]);
  });

  for (const reason of ['PARTICIPANT_REMOVED', 'ROOM_DELETED', 'ROOM_CLOSED'] as const) {
    it(`fires leave for ${reason}`, async () => {
      const p = await delegate(d.url, hs, dialect);
      await lk.participantJoined(p.room, p);
      await lk.participantLeft(p.room, p, reason);
      await waitFor('leave fired', () => actionsFired(hs, p.token).length === 1);
      expect((await delegationState(d.url, p)).pending_action).toBe('leave');
    });
  }

  for (const [what, send] of [
    ['a lost connection (CONNECTION_TIMEOUT)', (lk: WebhookSender, p: any) => lk.participantLeft(p.room, p, 'CONNECTION_TIMEOUT')],
    ['SERVER_SHUTDOWN', (lk: WebhookSender, p: any) => lk.participantLeft(p.room, p, 'SERVER_SHUTDOWN')],
    ['participant_connection_aborted', (lk: WebhookSender, p: any) => lk.connectionAborted(p.room, p)],
    ['room_finished', (lk: WebhookSender, p: any) => lk.roomFinished(p.room)],
  ] as const) {
    it(`fires connection_lost after the grace for ${what}`, async () => {
      const p = await delegate(d.url, hs, dialect);
      await lk.participantJoined(p.room, p);
      await waitFor('connected', async () => (await delegationState(d.url, p)).state === 'connected');
      const t0 = Date.now();
      await send(lk, p);
      await waitFor('grace', async () => (await delegationState(d.url, p)).state === 'grace', 20_000);
      await waitFor('connection_lost fired', () => actionsFired(hs, p.token).length === 1, 20_000);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(550);
      expect(await delegationState(d.url, p)).toMatchObject({ state: 'fired', pending_action: 'connection_lost' });
      expect(actionsFired(hs, p.token)).toEqual([expectedAction('connection_lost')]);
    });
  }

  it('fires nothing when the identity reconnects within the grace', async () => {
    const p = await delegate(d.url, hs, dialect);
    await lk.participantJoined(p.room, p);
    await lk.participantLeft(p.room, p, 'SIGNAL_CLOSE');
    // The rejoin follows at once: any wait here would have to fit in the 600 ms grace on a loaded machine.
    await lk.participantJoined(p.room, { ...p, sid: `${p.sid}-2` });
    await sleep(1200);
    expect(actionsFired(hs, p.token)).toEqual([]);
    expect((await delegationState(d.url, p)).state).toBe('connected');
  });

  for (const reason of ['DUPLICATE_IDENTITY', 'MIGRATION'] as const) {
    it(`fires nothing for ${reason} and follows the new session`, async () => {
      const p = await delegate(d.url, hs, dialect);
      await lk.participantJoined(p.room, p);
      await lk.participantLeft(p.room, p, reason);
      await waitFor('awaiting the new session', async () => (await delegationState(d.url, p)).state === 'awaiting_join');
      await lk.participantJoined(p.room, { ...p, sid: `${p.sid}-new` });
      await sleep(1000);
      expect(actionsFired(hs, p.token)).toEqual([]);
      expect((await delegationState(d.url, p)).state).toBe('connected');
      await lk.participantLeft(p.room, { ...p, sid: `${p.sid}-new` }, 'CLIENT_INITIATED');
      await waitFor('leave fired for the new session', () => actionsFired(hs, p.token).length === 1);
    });
  }

  it('ignores the old session leaving after a duplicate-identity replacement joined first', async () => {
    const p = await delegate(d.url, hs, dialect);
    await lk.participantJoined(p.room, p);
    await lk.participantJoined(p.room, { ...p, sid: `${p.sid}-b` });
    await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    await sleep(800);
    expect(actionsFired(hs, p.token)).toEqual([]);
    expect((await delegationState(d.url, p)).state).toBe('connected');
  });

  it('fires connection_lost when the participant never joins before the join deadline', async () => {
    const p = await delegate(d.url, hs, dialect);
    await sleep(1000);
    expect(actionsFired(hs, p.token)).toEqual([]);
    await waitFor('connection_lost fired', () => actionsFired(hs, p.token).length === 1, 20_000);
    expect((await delegationState(d.url, p)).pending_action).toBe('connection_lost');
  });

  it('fires once for a duplicated webhook', async () => {
    const p = await delegate(d.url, hs, dialect);
    await lk.participantJoined(p.room, p);
    const first = await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    const again = await lk.participantLeft(p.room, p, 'CLIENT_INITIATED', { id: first.id });
    expect(first.status).toBe(200);
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ status: 'duplicate' });
    await waitFor('leave fired', () => actionsFired(hs, p.token).length === 1);
    await sleep(300);
    expect(actionsFired(hs, p.token)).toHaveLength(1);
  });

  it('fires nothing and stops refreshing once revoked', async () => {
    const p = await delegate(d.url, hs, dialect, { timeoutMs: 1200 });
    await lk.participantJoined(p.room, p);
    await waitFor('first refresh', () => refreshCalls(hs, p.token) >= 1);
    const res = await fetch(`${d.url}/v1/delegations/${p.delegationId}`, { method: 'DELETE', headers: { authorization: `Bearer ${p.jwt}` } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { state: string }).state).toBe('revoked');
    const refreshes = refreshCalls(hs, p.token);
    await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    await sleep(1500);
    expect(refreshCalls(hs, p.token)).toBe(refreshes);
    expect(actionsFired(hs, p.token)).toEqual([]);
    expect(hs.status(p.token)).toBe('timed_out');
  });

  it('becomes invalidated when the homeserver no longer knows the token', async () => {
    const p = await delegate(d.url, hs, dialect, { timeoutMs: 1200 });
    await lk.participantJoined(p.room, p);
    await waitFor('first refresh', () => refreshCalls(hs, p.token) >= 1);
    hs.failNext('refresh', 1, { status: 404, errcode: 'M_NOT_FOUND', handle: p.token });
    await waitFor('invalidated', async () => (await delegationState(d.url, p)).state === 'invalidated', 20_000);
    await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    await sleep(200);
    expect(actionsFired(hs, p.token)).toEqual([]);
  });

  it('survives 5xx answers and a 429 with retry_after_ms without the future expiring', async () => {
    // 6 s: the daemon's retries must land before the future expires, with room for a loaded machine's late timers.
    const p = await delegate(d.url, hs, dialect, { timeoutMs: 6000 });
    await lk.participantJoined(p.room, p);
    await waitFor('first refresh', () => refreshCalls(hs, p.token) >= 1);
    const before = refreshCalls(hs, p.token);
    hs.failNext('refresh', 2, { status: 503, handle: p.token });
    // Deadlines for a loaded machine; the future's timeout, not these, is what the test holds the daemon to.
    await waitFor('503s consumed', () => hs.calls.filter((c) => c.handle === p.token && c.status === 503).length === 2, 20_000);
    hs.failNext('refresh', 1, { status: 429, retryAfterMs: 300, handle: p.token });
    await waitFor('429 consumed', () => hs.calls.some((c) => c.handle === p.token && c.status === 429), 20_000);
    await waitFor('refreshed again', () => refreshCalls(hs, p.token) > before, 20_000);
    // Two more regular refreshes after the failures, and the future never expired in between.
    const after = refreshCalls(hs, p.token);
    await waitFor('two more refreshes', () => refreshCalls(hs, p.token) >= after + 2, 20_000);
    expect(hs.status(p.token)).toBe('pending');
    expect((await delegationState(d.url, p)).state).toBe('connected');
  }, 90_000);
});
