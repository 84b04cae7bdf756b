import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import type { FakeHomeserver } from '../fakes/homeserver.js';
import type { WebhookSender } from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_SECRET, api, sleep, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { startDaemonWithFakes, type DaemonWithFakes } from '../helpers/daemon-with-fakes.js';
import { delegate, delegationState, refreshCalls, type Participant } from '../helpers/scenario.js';
import { metric, scrape } from '../helpers/metrics.js';

function openWatcher(url: string, headers: Record<string, string> = {}): { ws: WebSocket; messages: any[]; ready: Promise<void>; closed: Promise<number> } {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/watch`, { headers });
  const messages: any[] = [];
  let onReady!: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  ws.on('message', (data) => {
    const m = JSON.parse(String(data));
    if (m.type === 'ready') onReady();
    else messages.push(m);
  });
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  return { ws, messages, ready, closed };
}

describe('operations', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;
  let world: DaemonWithFakes | undefined;

  beforeAll(async () => {
    world = await startDaemonWithFakes({ deps: { watchMaxBufferedBytes: 64 * 1024 } });
    ({ hs, d, lk } = world);
  });
  afterAll(async () => {
    await world?.stop();
  });

  describe('metrics', () => {
    it('counts a leave, moves the expiry margin on refresh, and counts a forged webhook', async () => {
      const before = await scrape(d.url);
      expect(metric(before, 'futures_sidecar_expiry_margin_seconds')).toBeDefined();
      const p = await delegate(d.url, hs, 'futures', { timeoutMs: 3000 });
      await lk.participantJoined(p.room, p);
      await waitFor('refresh', () => refreshCalls(hs, p.token) >= 1);
      const m1 = metric(await scrape(d.url), 'futures_sidecar_expiry_margin_seconds')!;
      expect(m1).toBeGreaterThan(0);
      expect(m1).toBeLessThanOrEqual(3);
      await sleep(700);
      const m2 = metric(await scrape(d.url), 'futures_sidecar_expiry_margin_seconds')!;
      expect(m2).toBeLessThan(m1);
      await waitFor('second refresh', () => refreshCalls(hs, p.token) >= 2, 20_000);
      const m3 = metric(await scrape(d.url), 'futures_sidecar_expiry_margin_seconds')!;
      expect(m3).toBeGreaterThan(m2);

      const mid = await scrape(d.url);
      expect(metric(mid, 'futures_sidecar_delegations', { state: 'connected', dialect: 'futures' })).toBeGreaterThanOrEqual(1);
      const leaves = metric(mid, 'futures_sidecar_actions_total', { action: 'leave', outcome: 'sent' }) ?? 0;
      const refreshesOk = metric(mid, 'futures_sidecar_refreshes_total', { outcome: 'ok' }) ?? 0;
      expect(refreshesOk).toBeGreaterThanOrEqual(2);

      await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
      await waitFor('fired', async () => (await delegationState(d.url, p)).state === 'fired');
      await lk.participantLeft(p.room, p, 'CLIENT_INITIATED', { signWith: { apiKey: 'devkey', apiSecret: `${API_SECRET}-forged` } });
      const after = await scrape(d.url);
      expect(metric(after, 'futures_sidecar_actions_total', { action: 'leave', outcome: 'sent' })).toBe(leaves + 1);
      expect(metric(after, 'futures_sidecar_webhooks_total', { event: 'unverified', outcome: 'rejected' })).toBeGreaterThanOrEqual(1);
      expect(metric(after, 'futures_sidecar_webhooks_total', { event: 'participant_left', outcome: 'accepted' })).toBeGreaterThanOrEqual(1);
      expect(metric(after, 'futures_sidecar_disconnect_to_action_seconds_count', { action: 'leave' })).toBeGreaterThanOrEqual(1);
      expect(metric(after, 'futures_sidecar_homeserver_request_duration_seconds_count', { op: 'refresh', outcome: 'ok' })).toBeGreaterThanOrEqual(2);
      expect(metric(after, 'futures_sidecar_delegations_registered_total', { dialect: 'futures', outcome: 'created' })).toBeGreaterThanOrEqual(1);
      expect(metric(after, 'futures_sidecar_info', { version: '0.1.0' })).toBe(1);
      expect(after).toContain('futures_sidecar_process_resident_memory_bytes');
      expect(metric(after, 'futures_sidecar_homeserver_limiter_backlog')).toBe(0);
    });
  });

  describe('health', () => {
    it('is alive and ready', async () => {
      expect(await api(d.url, 'GET', '/livez')).toMatchObject({ status: 200, body: { status: 'ok' } });
      expect(await api(d.url, 'GET', '/readyz')).toMatchObject({ status: 200, body: { status: 'ok' } });
    });
  });

  describe('admin API', () => {
    it('refuses a missing or wrong admin token', async () => {
      expect(await api(d.url, 'GET', '/v1/admin/delegations')).toMatchObject({ status: 401, body: { errcode: 'M_MISSING_TOKEN' } });
      expect(await api(d.url, 'GET', '/v1/admin/delegations', { token: 'not-the-admin-token-at-all' })).toMatchObject({ status: 403, body: { errcode: 'M_FORBIDDEN' } });
    });

    it('lists with filters and pages, shows one with its history, and revokes', async () => {
      const room = `admin-room-${Date.now()}`;
      const ps: Participant[] = [];
      for (let i = 0; i < 3; i++) ps.push(await delegate(d.url, hs, i === 2 ? 'delayed_events' : 'futures', { room }));
      await lk.participantJoined(room, ps[0]!);
      await waitFor('connected', async () => (await delegationState(d.url, ps[0]!)).state === 'connected');

      const all = await api(d.url, 'GET', `/v1/admin/delegations?room=${room}`, { token: ADMIN_TOKEN });
      expect(all.status).toBe(200);
      expect(all.body.delegations.map((x: any) => x.delegation_id).sort()).toEqual(ps.map((p) => p.delegationId).sort());
      expect(JSON.stringify(all.body)).not.toMatch(new RegExp(ps.map((p) => p.token).join('|')));

      const connected = await api(d.url, 'GET', `/v1/admin/delegations?room=${room}&state=connected`, { token: ADMIN_TOKEN });
      expect(connected.body.delegations.map((x: any) => x.delegation_id)).toEqual([ps[0]!.delegationId]);

      const page1 = await api(d.url, 'GET', `/v1/admin/delegations?room=${room}&limit=2`, { token: ADMIN_TOKEN });
      expect(page1.body.delegations).toHaveLength(2);
      const page2 = await api(d.url, 'GET', `/v1/admin/delegations?room=${room}&limit=2&cursor=${page1.body.next_cursor}`, { token: ADMIN_TOKEN });
      expect(page2.body.delegations).toHaveLength(1);
      expect(page2.body.next_cursor).toBeNull();

      expect(await api(d.url, 'GET', '/v1/admin/delegations?state=sleeping', { token: ADMIN_TOKEN })).toMatchObject({ status: 400, body: { errcode: 'M_BAD_JSON' } });
      expect(await api(d.url, 'GET', '/v1/admin/delegations?limit=0', { token: ADMIN_TOKEN })).toMatchObject({ status: 400, body: { errcode: 'M_INVALID_PARAM' } });

      const one = await api(d.url, 'GET', `/v1/admin/delegations/${ps[0]!.delegationId}`, { token: ADMIN_TOKEN });
      expect(one.body.state).toBe('connected');
      const history = one.body.history.map((h: any) => h.what).join('\n');
      expect(history).toMatch(/registered/);
      expect(history).toMatch(/participant_joined: awaiting_join -> connected/);
      expect(history).toMatch(/refresh answered: ok/);

      const stats = await api(d.url, 'GET', '/v1/admin/stats', { token: ADMIN_TOKEN });
      expect(stats.body.open).toBeGreaterThanOrEqual(3);
      expect(stats.body.by_state.connected).toBeGreaterThanOrEqual(1);
      expect(stats.body.refreshes_last_minute).toBeGreaterThanOrEqual(3);
      expect(stats.body.smallest_expiry_margin_seconds).toBeGreaterThan(0);

      const revoked = await api(d.url, 'DELETE', `/v1/admin/delegations/${ps[1]!.delegationId}`, { token: ADMIN_TOKEN });
      expect(revoked).toMatchObject({ status: 200, body: { state: 'revoked' } });
      expect((await delegationState(d.url, ps[1]!)).state).toBe('revoked');
    });
  });

  describe('watch stream', () => {
    it('streams every lifecycle change of a delegation in order', async () => {
      const w = openWatcher(d.url, { authorization: `Bearer ${ADMIN_TOKEN}` });
      await w.ready;
      const p = await delegate(d.url, hs, 'futures', { timeoutMs: 2000 });
      await lk.participantJoined(p.room, p);
      await waitFor('refreshed', () => w.messages.some((m) => m.delegation_id === p.delegationId && m.type === 'refreshed'));
      await lk.participantLeft(p.room, p, 'CONNECTION_TIMEOUT');
      await waitFor('fired', () => w.messages.some((m) => m.delegation_id === p.delegationId && m.type === 'fired'), 20_000);
      const types = w.messages.filter((m) => m.delegation_id === p.delegationId).map((m) => m.type);
      const firstOf = (t: string) => types.indexOf(t);
      expect(firstOf('registered')).toBe(0);
      expect(firstOf('connected')).toBeGreaterThan(firstOf('registered'));
      expect(firstOf('grace')).toBeGreaterThan(firstOf('refreshed'));
      expect(types[types.length - 1]).toBe('fired');
      const fired = w.messages.find((m) => m.delegation_id === p.delegationId && m.type === 'fired');
      expect(fired).toMatchObject({ state: 'fired', outcome: 'sent' });
      expect(typeof fired.at).toBe('number');
      w.ws.close();
    });

    it('answers a plain GET without an upgrade in Matrix style', async () => {
      expect(await api(d.url, 'GET', '/v1/watch', { token: ADMIN_TOKEN })).toMatchObject({ status: 426, body: { errcode: 'M_UNRECOGNIZED' } });
    });

    it('accepts the admin token in the first message, and refuses a wrong one', async () => {
      const good = openWatcher(d.url);
      good.ws.on('open', () => good.ws.send(JSON.stringify({ type: 'auth', token: ADMIN_TOKEN })));
      await good.ready;
      const p = await delegate(d.url, hs, 'delayed_events');
      await lk.participantJoined(p.room, p);
      await waitFor('connected seen', () => good.messages.some((m) => m.delegation_id === p.delegationId && m.type === 'connected'));
      good.ws.close();

      const bad = openWatcher(d.url);
      bad.ws.on('open', () => bad.ws.send(JSON.stringify({ type: 'auth', token: 'wrong' })));
      expect(await bad.closed).toBe(4401);
      const badHeader = openWatcher(d.url, { authorization: 'Bearer wrong' });
      badHeader.ws.on('open', () => badHeader.ws.send('not json'));
      expect(await badHeader.closed).toBe(4401);
    });

    it('drops a watcher that never reads, without affecting the daemon or other watchers', async () => {
      const slow = openWatcher(d.url, { authorization: `Bearer ${ADMIN_TOKEN}` });
      await slow.ready;
      (slow.ws as unknown as { _socket: { pause(): void } })._socket.pause();
      const fast = openWatcher(d.url, { authorization: `Bearer ${ADMIN_TOKEN}` });
      await fast.ready;
      const droppedBefore = d.daemon.watch.dropped;
      const filler = { type: 'refreshed' as const, delegation_id: 'dg_filler_'.padEnd(40, 'x'), state: 'connected' as const, at: Date.now() };
      for (let i = 0; i < 5000 && d.daemon.watch.dropped === droppedBefore; i++) {
        for (let j = 0; j < 100; j++) d.daemon.watch.broadcast(filler);
        await new Promise((r) => setImmediate(r));
      }
      expect(d.daemon.watch.dropped).toBe(droppedBefore + 1);
      expect(d.daemon.watch.size).toBe(1);
      expect((await api(d.url, 'GET', '/livez')).status).toBe(200);
      const p = await delegate(d.url, hs, 'futures');
      await waitFor('fast watcher still served', () => fast.messages.some((m) => m.delegation_id === p.delegationId));
      fast.ws.close();
      slow.ws.terminate();
    });
  });

  it('never writes a secret into its logs or metrics', async () => {
    const p = await delegate(d.url, hs, 'delayed_events');
    await lk.participantJoined(p.room, p);
    await lk.participantLeft(p.room, p, 'CLIENT_INITIATED');
    await waitFor('fired', async () => (await delegationState(d.url, p)).state === 'fired');
    await api(d.url, 'GET', `/v1/admin/delegations/${p.delegationId}`, { token: ADMIN_TOKEN });
    await api(d.url, 'GET', '/v1/admin/delegations', { token: 'wrong-admin-token-value-123' });
    const secrets = [p.token, p.jwt, ADMIN_TOKEN, 'wrong-admin-token-value-123'];
    // Every future token and delay id any test in this file delegated, as the homeserver saw them.
    const allTokens = [...new Set([...hs.calls.map((c) => c.handle), ...hs.sent.map((e) => e.handle)])].filter((h): h is string => !!h && h.length > 8);
    expect(allTokens.length).toBeGreaterThan(5);
    const text = d.logs.join('\n') + (await scrape(d.url));
    expect(d.logs.length).toBeGreaterThan(20);
    for (const s of [...secrets, ...allTokens]) expect(text.includes(s), `a secret appears in the output`).toBe(false);
  });
});
