import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../helpers/daemon.js';
import { membershipGone, membershipsHeld, nextRestart, recordFigure, sendsOf, webhookFor } from './judge.js';
import { peersTestsEnabled } from './peers.js';
import { startRig, type Rig } from './rig.js';

// Scenarios 6, 7 and 8 of contract section 9: the daemon, Synapse and LiveKit each go away mid-call.
const enabled = peersTestsEnabled('real servers: daemon, Synapse and LiveKit outages');
const GRACE_MS = 3_000;

describe.runIf(enabled).sequential('real servers: daemon, Synapse and LiveKit outages', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await startRig({ daemonEnv: { SIDECAR_RECONNECT_GRACE_MS: String(GRACE_MS) } });
  }, 180_000);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(rig.diagnostics());
  });
  afterAll(async () => {
    await rig?.stop();
  }, 60_000);

  it('6: the daemon SIGKILLed mid-call and restarted: restarts continue and a later leave is still sent', async () => {
    const delayMs = 20_000;
    const call = await rig.startCall(1, { delayMs, delegate: 'v1' });
    const m = call.members[0]!;
    const first = await nextRestart(rig, m.delayId, 0);
    const killed = Date.now();
    await rig.restartDaemon('SIGKILL');
    const restarted = Date.now();
    await recordFigure({ figure: 'daemon_restart', down_ms: restarted - killed, remaining_at_kill_ms: first + delayMs - killed });
    expect(restarted - killed).toBeLessThan(first + delayMs - killed); // the premise: back before the event was due
    // Two delays after the crash: only the restarted daemon can have kept the event alive that long.
    await membershipsHeld(rig, call, [m], 2 * delayMs, 'after the daemon restart');
    expect(await nextRestart(rig, m.delayId, restarted)).toBeGreaterThan(first);
    const asked = Date.now();
    call.participants.send({ cmd: 'close' });
    const gone = await membershipGone(rig, call, m, 30_000);
    const left = await webhookFor(rig, m, ['participant_left'], asked);
    expect(gone - left.at).toBeLessThan(2_000);
    expect(await sendsOf(rig, m.delayId)).toEqual([null]); // by the restarted daemon
  }, 180_000);

  it('7: Synapse stopped for less than the remaining delay, then started: nothing lost, nothing sent early', async () => {
    const delayMs = 30_000;
    const call = await rig.startCall(1, { delayMs, delegate: 'v1' });
    const m = call.members[0]!;
    const lastRestart = await nextRestart(rig, m.delayId, 0);
    await rig.synapse.stop('SIGTERM');
    const down = Date.now();
    await sleep(3_000); // the outage itself (the scenario's input, not a wait for a condition)
    await rig.synapse.start();
    const outage = Date.now() - down;
    await recordFigure({ figure: 'synapse_outage', ms: outage, remaining_at_stop_ms: lastRestart + delayMs - down });
    expect(outage).toBeLessThan(lastRestart + delayMs - down); // the premise: shorter than the delay had left
    // Two delays on: the daemon's restarts must have resumed after the outage for the membership to hold.
    await membershipsHeld(rig, call, [m], 2 * delayMs, 'after the Synapse outage');
    expect(await nextRestart(rig, m.delayId, down + outage)).toBeGreaterThan(down);
    call.participants.send({ cmd: 'close' });
    await membershipGone(rig, call, m, 30_000);
    expect(await sendsOf(rig, m.delayId)).toEqual([null]);
  }, 240_000);

  it('8: LiveKit restarted mid-call: recorded outcome, and the membership agrees with what LiveKit lists afterwards', async () => {
    const call = await rig.startCall(1, { delayMs: 10_000, delegate: 'v1' });
    const m = call.members[0]!;
    const before = Date.now();
    await rig.livekit.stop('SIGTERM');
    await rig.livekit.start();
    // As the authorization service would on the next token request, the room exists again on the new server.
    await rig.livekit.rooms.createRoom({ name: call.livekitRoom, emptyTimeout: 600, departureTimeout: 20 });
    const restarted = Date.now();
    // Let the participant's SDK try to get back (a reconnect or a full rejoin) or give up, then compare.
    const settle = await settleOutcome(rig, call, m, restarted);
    const hooks = rig.webhooks.filter((w) => w.identity === m.identity && w.at >= before).map((w) => `${w.event}${w.reason ? `:${w.reason}` : ''}`);
    const sdk = call.participants.events.filter((e) => e.ev === 'livekit').map((e) => String(e.what));
    await recordFigure({ figure: 'livekit_restart', outcome: settle.outcome, webhooks: hooks, sdk, gone_after_restart_ms: settle.goneAt ? settle.goneAt - restarted : null });
    if (settle.outcome === 'rejoined') {
      await membershipsHeld(rig, call, [m], 25_000, 'though the participant is back in LiveKit');
      call.participants.send({ cmd: 'close' });
      await membershipGone(rig, call, m, 30_000);
    } else {
      expect(settle.goneAt! - restarted).toBeGreaterThanOrEqual(0);
    }
  }, 240_000);
});

/**
 * After a LiveKit restart the participant either gets back into the room (listed by LiveKit) or not. Waits until
 * one of: listed and the membership held for two delays; or the membership emptied while LiveKit does not list it.
 */
async function settleOutcome(rig: Rig, call: Parameters<Rig['left']>[0], m: Parameters<Rig['left']>[1], since: number): Promise<{ outcome: 'rejoined' | 'gone'; goneAt?: number }> {
  const deadline = Date.now() + 120_000;
  let listedSince: number | null = null;
  for (;;) {
    const listed = await rig.livekitLists(call, m).catch(() => false);
    const ev = await rig.membership(call, m);
    const left = !ev || Object.keys(ev.content).length === 0;
    if (left && listed) throw new Error('the leave was sent while LiveKit lists the participant again');
    if (left) return { outcome: 'gone', goneAt: ev?.origin_server_ts ?? Date.now() };
    listedSince = listed ? (listedSince ?? Date.now()) : null;
    if (listedSince !== null && Date.now() - listedSince > 5_000) return { outcome: 'rejoined' };
    if (Date.now() > deadline) throw new Error(`neither back in LiveKit nor left ${Date.now() - since} ms after the LiveKit restart`);
    await sleep(200);
  }
}
