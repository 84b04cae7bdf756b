import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { ADMIN_TOKEN, api, sleep, spawnDaemon, tempDbPath, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { actionsFired, delegate, delegationState, refreshCalls, webhookSender, type Participant } from '../helpers/scenario.js';

/** The daemon as a real process: crashes lose nothing, and its own shutdown fires nothing. */
// Each test starts daemons as processes; on a loaded machine that alone takes many seconds.
describe('restarts', { timeout: 180_000 }, () => {
  let hs: FakeHomeserver;
  const children: ChildDaemon[] = [];

  beforeAll(async () => {
    hs = await startFakeHomeserver();
  });
  afterAll(async () => {
    for (const c of children) if (c.proc.exitCode === null) c.kill('SIGKILL');
    await hs.close();
  });

  async function spawn(env: Record<string, string>): Promise<ChildDaemon> {
    const c = await spawnDaemon(env);
    children.push(c);
    return c;
  }

  it('picks up every delegation after SIGKILL: refreshes go on and a later leave fires', async () => {
    const env = { SIDECAR_STORE: `sqlite:${tempDbPath('crash')}` };
    const first = await spawn(env);
    const lk = webhookSender(first.url);
    const ps: Participant[] = [];
    for (const dialect of ['futures', 'delayed_events'] as const) {
      for (let i = 0; i < 3; i++) {
        // Long enough that a restart on a loaded machine still lands before the futures expire.
        const p = await delegate(first.url, hs, dialect, { timeoutMs: 8000 });
        await lk.participantJoined(p.room, p);
        ps.push(p);
      }
    }
    await waitFor('first refreshes', () => ps.every((p) => refreshCalls(hs, p.token) >= 1), 20_000);
    first.kill('SIGKILL');
    await first.exited;
    const refreshedBefore = ps.map((p) => refreshCalls(hs, p.token));

    const second = await spawn(env);
    await waitFor('refreshes after the restart', () => ps.every((p, i) => refreshCalls(hs, p.token) > refreshedBefore[i]!), 20_000);
    await sleep(2500);
    for (const p of ps) expect(hs.status(p.token)).toBe('pending');

    const lk2 = webhookSender(second.url);
    await lk2.participantLeft(ps[0]!.room, ps[0]!, 'CLIENT_INITIATED');
    await lk2.participantLeft(ps[3]!.room, ps[3]!, 'CONNECTION_TIMEOUT');
    await waitFor('leave fired', () => actionsFired(hs, ps[0]!.token).length === 1);
    await waitFor('connection_lost fired', () => actionsFired(hs, ps[3]!.token).length === 1);
    expect(actionsFired(hs, ps[0]!.token)).toEqual(['leave']);
    for (const p of ps.slice(1, 3).concat(ps.slice(4))) expect(actionsFired(hs, p.token)).toEqual([]);
    second.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });

  it('applies a webhook acknowledged just before a SIGKILL after the restart', async () => {
    const env = { SIDECAR_STORE: `sqlite:${tempDbPath('ack')}`, SIDECAR_RECONNECT_GRACE_MS: '60000' };
    const first = await spawn(env);
    const p = await delegate(first.url, hs, 'futures', { timeoutMs: 30_000 });
    const lk = webhookSender(first.url);
    await lk.participantJoined(p.room, p);
    await lk.participantLeft(p.room, p, 'SIGNAL_CLOSE');
    first.kill('SIGKILL');
    await first.exited;
    const second = await spawn(env);
    const res = await fetch(`${second.url}/v1/delegations/${p.delegationId}`, { headers: { authorization: `Bearer ${p.jwt}` } });
    expect(((await res.json()) as { state: string }).state).toBe('grace');
    second.kill('SIGTERM');
    await second.exited;
  });

  it('refuses to start a second process on the same SQLite file', async () => {
    const env = { SIDECAR_STORE: `sqlite:${tempDbPath('locked')}` };
    const first = await spawn(env);
    await expect(spawnDaemon(env)).rejects.toThrow(/in use by another futures-sidecar process/);
    first.kill('SIGTERM');
    expect(await first.exited).toBe(0);
  });

  // Two processes, a drain, and futures that outlive it: more than the default 30 s on a loaded machine.
  it('exits 0 on SIGTERM with a homeserver call in flight, fires nothing, and the next process carries on', async () => {
    const env = { SIDECAR_STORE: `sqlite:${tempDbPath('term')}`, SIDECAR_SHUTDOWN_TIMEOUT_MS: '3000' };
    const first = await spawn(env);
    const lk = webhookSender(first.url);
    const ps: Participant[] = [];
    for (let i = 0; i < 3; i++) {
      // Long enough to outlive the drain and a restart on a loaded machine (a 6 s future once expired meanwhile).
      const p = await delegate(first.url, hs, 'futures', { timeoutMs: 15_000 });
      await lk.participantJoined(p.room, p);
      ps.push(p);
    }
    await waitFor('first refreshes', () => ps.every((p) => refreshCalls(hs, p.token) >= 1));
    hs.setLatency(1500);
    const refreshes = ps.map((p) => refreshCalls(hs, p.token));
    await waitFor('a refresh held in flight by the homeserver', () => hs.inFlight > 0, 20_000, 5);
    const t0 = Date.now();
    first.kill('SIGTERM');
    const code = await first.exited;
    expect(code).toBe(0);
    expect(ps.some((p, i) => refreshCalls(hs, p.token) > refreshes[i]!)).toBe(true);
    // Within the 3 s drain plus room for a loaded machine's process exit.
    expect(Date.now() - t0).toBeLessThan(3000 + 7000);
    const postWhileDown = await fetch(`${first.url}/readyz`).then(() => 'up', () => 'down');
    expect(postWhileDown).toBe('down');
    hs.setLatency(0);
    for (const p of ps) expect(actionsFired(hs, p.token)).toEqual([]);
    expect(first.output.join('\n')).toMatch(/stopped/);

    const second = await spawn(env);
    const before = ps.map((p) => refreshCalls(hs, p.token));
    await waitFor('refreshes resume', () => ps.every((p, i) => refreshCalls(hs, p.token) > before[i]!), 20_000);
    for (const p of ps) expect(hs.status(p.token)).toBe('pending');
    second.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  }, 180_000);

  it('refuses to start with a bad setting, naming it, and exits 2', async () => {
    const { spawnSync } = await import('node:child_process');
    const res = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      env: { ...process.env, LIVEKIT_KEYS: 'k: s', SIDECAR_HOMESERVERS: '*', SIDECAR_REFRESH_AT: '2', SIDECAR_PORT: 'eighty' },
      encoding: 'utf8',
    });
    expect(res.status).toBe(2);
    expect(res.stderr).toMatch(/SIDECAR_REFRESH_AT/);
    expect(res.stderr).toMatch(/SIDECAR_PORT/);
  });

  it('exits at once on a second signal while the first is still draining', async () => {
    const env = { SIDECAR_STORE: `sqlite:${tempDbPath('twice')}`, SIDECAR_SHUTDOWN_TIMEOUT_MS: '30000' };
    const d = await spawn(env);
    const lk = webhookSender(d.url);
    const p = await delegate(d.url, hs, 'futures', { timeoutMs: 4000 });
    await lk.participantJoined(p.room, p);
    await waitFor('first refresh', () => refreshCalls(hs, p.token) >= 1);
    hs.setLatency(20_000);
    await waitFor('a refresh held in flight', () => hs.inFlight > 0, 20_000, 5);
    const t0 = Date.now();
    d.kill('SIGTERM');
    await sleep(300);
    expect(d.proc.exitCode).toBeNull();
    d.kill('SIGTERM');
    await d.exited;
    hs.setLatency(0);
    // Well before the 20 s homeserver call the first signal was draining.
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(actionsFired(hs, p.token)).toEqual([]);
  });

  // Found by the soak: a rejoin within the grace that LiveKit could not deliver while we restarted came too late.
  it('waits for LiveKit to retry webhooks after a restart before a grace that ran out meanwhile fires', async () => {
    // The grace is long enough that the first process cannot run it out before the SIGKILL even on a loaded machine:
    // what is tested is a grace that ran out while no process was running.
    const graceMs = 6000;
    const env = { SIDECAR_STORE: `sqlite:${tempDbPath('grace-restart')}`, SIDECAR_RECONNECT_GRACE_MS: String(graceMs) };
    const first = await spawn(env);
    const lk = webhookSender(first.url);
    const p = await delegate(first.url, hs, 'futures', { timeoutMs: 60_000 });
    await lk.participantJoined(p.room, p);
    await lk.participantLeft(p.room, p, 'CONNECTION_TIMEOUT');
    // The daemon received the departure before it answered, so its grace deadline is at most this far away.
    const graceOverBy = Date.now() + graceMs;
    await waitFor('grace', async () => (await delegationState(first.url, p)).state === 'grace');
    first.kill('SIGKILL');
    await first.exited;
    expect(actionsFired(hs, p.token)).toEqual([]);
    const rejoin = { ...p, sid: `${p.sid}-2` };
    await expect(lk.participantJoined(p.room, rejoin)).rejects.toThrow();
    await waitFor('the grace deadline to pass while no process runs', () => Date.now() > graceOverBy + 200, graceMs + 5_000);
    const second = await spawn(env);
    expect((await webhookSender(second.url).participantJoined(p.room, rejoin)).status).toBe(200);
    await waitFor('the rejoin applied', async () => (await delegationState(second.url, p)).state === 'connected').catch(async (err: Error) => {
      const view = await api(second.url, 'GET', `/v1/admin/delegations/${p.delegationId}`, { token: ADMIN_TOKEN });
      throw new Error(`${err.message}; the delegation: ${JSON.stringify(view.body)}`);
    });
    expect(actionsFired(hs, p.token)).toEqual([]);
    second.kill('SIGTERM');
    await second.exited;
    // Two daemon starts, a 6 s grace run out with no process, and a rejoin: more than 30 s on a loaded machine.
  }, 180_000);
});
