import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { membershipGone, membershipsHeld, recordFigure, restartsAt, sendsOf } from './judge.js';
import { peersTestsEnabled } from './peers.js';
import { startRig, type Rig } from './rig.js';

// Scenario 9 of contract section 9: 33 participants on one Synapse left at its default rc_delayed_event_mgmt
// (1/s, burst 5, per IP for the daemon's unauthenticated restarts) and the daemon at its default homeserver rate.
const enabled = peersTestsEnabled('real servers: 33 participants at Synapse default rate limits');
const CALLS = 3;
const PER_CALL = 11; // one participant process per call hosts its 11 participants (rtc-node sessions)
// The daemon admits a delegation only while its projected restarts fit its homeserver rate (1/s) with headroom: at a
// 75 s delay it refused the 28th participant (429 M_LIMIT_EXCEEDED). At 120 s, 33 participants need about 0.6/s.
const DELAY_MS = 120_000;

describe.runIf(enabled).sequential('real servers: 33 participants at Synapse default rate limits', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await startRig({ defaultDelayedEventLimit: true, daemonEnv: { SIDECAR_HOMESERVER_RATE: '1', SIDECAR_RECONNECT_GRACE_MS: '3000' } });
  }, 180_000);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(rig.diagnostics());
  });
  afterAll(async () => {
    await rig?.stop();
  }, 60_000);

  it('9: the limiter holds, no delayed event expires, and the 429s Synapse sends are counted', async () => {
    const started = Date.now();
    const calls = await Promise.all(Array.from({ length: CALLS }, () => rig.startCall(PER_CALL, { delayMs: DELAY_MS, delegate: 'v1' })));
    const joined = Date.now();
    // Longer than a delay: every event must have been restarted by the daemon to still be pending.
    await Promise.all(calls.map((c) => membershipsHeld(rig, c, c.members, 1.25 * DELAY_MS, 'under the default rate limit')));
    for (const c of calls) for (const m of c.members) expect(restartsAt(rig, m.delayId).filter((t) => t > joined).length).toBeGreaterThanOrEqual(2);
    const closing = Date.now();
    for (const c of calls) c.participants.send({ cmd: 'close' });
    const gone = await Promise.all(calls.flatMap((c) => c.members.map((m) => membershipGone(rig, c, m, 120_000))));
    const mgmt = rig.synapse.accessLog().filter((r) => r.path.includes('/delayed_events'));
    const limited = mgmt.filter((r) => r.status === 429).length;
    await recordFigure({
      figure: 'rate_limit',
      participants: CALLS * PER_CALL,
      delay_ms: DELAY_MS,
      join_ms: joined - started,
      delayed_event_calls: mgmt.length,
      status_429: limited,
      last_leave_after_close_ms: Math.max(...gone) - closing,
    });
    for (const c of calls) for (const m of c.members) expect(await sendsOf(rig, m.delayId)).toEqual([null]); // the daemon sent them
    // Synapse answered 429s at most now and then: the daemon paces itself to the homeserver's rate.
    expect(limited).toBeLessThanOrEqual(mgmt.length * 0.05);
  }, 900_000);
});
