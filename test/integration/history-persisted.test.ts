import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { ADMIN_TOKEN, api, spawnDaemon, tempDbPath, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { delegate, refreshCalls, webhookSender } from '../helpers/scenario.js';

/** Issue 18: a delegation's history is in the store, so the admin API (and the console) show it after a restart. */
describe('history after a restart (SQLite)', { timeout: 180_000 }, () => {
  let hs: FakeHomeserver;
  let d: ChildDaemon | null = null;
  const store = `sqlite:${tempDbPath('history-restart')}`;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
  });
  afterAll(async () => {
    if (d && d.proc.exitCode === null) d.kill('SIGKILL');
    await hs?.close();
  });

  const historyOf = async (url: string, id: string): Promise<string[]> => {
    const res = await api(url, 'GET', `/v1/admin/delegations/${id}`, { token: ADMIN_TOKEN });
    expect(res.status).toBe(200);
    return (res.body.history as Array<{ what: string }>).map((e) => e.what);
  };

  it('shows the lines written before a SIGKILL, and continues them', async () => {
    d = await spawnDaemon({ SIDECAR_STORE: store });
    // A long timeout: the future must outlive a restart on a loaded machine.
    const p = await delegate(d.url, hs, 'futures', { timeoutMs: 30_000 });
    await webhookSender(d.url).participantJoined(p.room, p);
    await waitFor('a refresh answered', () => refreshCalls(hs, p.token) >= 1);
    const before = await waitFor('the join and the refresh in the history', async () => {
      const lines = await historyOf(d!.url, p.delegationId);
      return lines.some((l) => l.includes('awaiting_join -> connected')) && lines.some((l) => l.startsWith('refresh answered')) ? lines : null;
    });
    expect(before[0]).toMatch(/^registered/);

    d.kill('SIGKILL');
    await d.exited;
    d = await spawnDaemon({ SIDECAR_STORE: store });
    const after = await historyOf(d.url, p.delegationId);
    expect(after.slice(0, before.length)).toEqual(before);
    // The restarted daemon continues the same history: the participant leaves and the leave is sent.
    await webhookSender(d.url).participantLeft(p.room, p, 'CLIENT_INITIATED');
    const continued = await waitFor('the leave in the history after the restart', async () => {
      const lines = await historyOf(d!.url, p.delegationId);
      return lines.some((l) => l.startsWith('leave') && l.includes('answered')) ? lines : null;
    }, 15_000, 100);
    expect(continued.slice(0, before.length)).toEqual(before);
    expect(continued.length).toBeGreaterThan(before.length);
  }, 180_000);
});
