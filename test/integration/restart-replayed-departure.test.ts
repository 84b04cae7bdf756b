import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { spawnDaemon, tempDbPath, waitFor, type ChildDaemon } from '../helpers/daemon.js';
import { actionsFired, delegate, delegationState, webhookSender, type Participant } from '../helpers/scenario.js';

/** What the daemon gives a departure it replays after a restart before it acts on it (engine SETTLE_AFTER_START_MS). */
const SETTLE_MS = 15_000;
const GRACE_MS = 2_000;

/**
 * A departure recorded and acknowledged by a process that died before applying it (the journal an older version
 * left, or a crash between its two commits), replayed by the next process: its grace counts from its receive time,
 * long over by then, yet the participant may have rejoined while no process was running. The replay gives it the
 * settling time a delegation loaded in grace gets, so LiveKit's retried rejoin still counts, and connection_lost
 * still fires when none comes. The crash between record and apply is made deterministic by writing the record
 * into the stopped daemon's file, as that process would have left it.
 */
describe('a departure replayed after a restart', () => {
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

  function leftUnapplied(path: string, p: Participant, id: string, receivedAt: number): void {
    const db = new Database(path);
    db.prepare(
      "INSERT INTO webhooks (id, event, room, identity, sid, reason, joined_at, created_at, received_at, processed) VALUES (?, 'participant_left', ?, ?, ?, 'SIGNAL_CLOSE', NULL, ?, ?, 0)",
    ).run(id, p.room, p.identity, p.sid, receivedAt, receivedAt);
    db.close();
  }

  it('waits the settling time from the replay, so a rejoin LiveKit delivers after the restart cancels it, and fires connection_lost without one', async () => {
    const path = tempDbPath('replayed-departure');
    const env = { SIDECAR_STORE: `sqlite:${path}`, SIDECAR_RECONNECT_GRACE_MS: String(GRACE_MS) };
    const first = await spawn(env);
    const lk = webhookSender(first.url);
    const rejoins = await delegate(first.url, hs, 'futures', { timeoutMs: 120_000 });
    const staysAway = await delegate(first.url, hs, 'futures', { timeoutMs: 120_000 });
    for (const p of [rejoins, staysAway]) await lk.participantJoined(p.room, p);
    await waitFor('both connected', async () => (await delegationState(first.url, rejoins)).state === 'connected' && (await delegationState(first.url, staysAway)).state === 'connected');
    first.kill('SIGKILL');
    await first.exited;

    // Received a minute ago: its grace ran out long before this restart.
    const receivedAt = Date.now() - 60_000;
    leftUnapplied(path, rejoins, 'EV_replayed_rejoins', receivedAt);
    leftUnapplied(path, staysAway, 'EV_replayed_stays_away', receivedAt);
    const restartedAt = Date.now();
    const second = await spawn(env);

    // Applied at the start, waiting in grace instead of firing at once.
    expect((await delegationState(second.url, rejoins)).state).toBe('grace');
    expect((await delegationState(second.url, staysAway)).state).toBe('grace');

    // The rejoin LiveKit retries after our restart: a new session of the same identity.
    const lk2 = webhookSender(second.url);
    await lk2.participantJoined(rejoins.room, { ...rejoins, sid: `${rejoins.sid}_2` });
    await waitFor('rejoined', async () => (await delegationState(second.url, rejoins)).state === 'connected');

    await waitFor('connection_lost for the one who stayed away', () => actionsFired(hs, staysAway.token).length === 1, SETTLE_MS + 30_000);
    expect(actionsFired(hs, staysAway.token)).toEqual(['connection_lost']);
    const firedAt = hs.sent.find((e) => e.handle === staysAway.token && e.cause === 'action')!.at;
    // Not before the settling time counted from the replay (which came after `restartedAt`).
    expect(firedAt).toBeGreaterThanOrEqual(restartedAt + SETTLE_MS);
    expect(actionsFired(hs, rejoins.token)).toEqual([]);
    second.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  }, 90_000);
});
