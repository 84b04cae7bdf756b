import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { membershipGone, membershipsHeld, recordFigure, webhookFor } from './judge.js';
import { createNetns, netnsAvailable, type Netns } from '../helpers/netns.js';
import { peersTestsEnabled } from './peers.js';
import { startRig, type Call, type Rig } from './rig.js';
import { waitFor } from '../helpers/daemon.js';

// Scenarios 3 and 4 of contract section 9: the participant's network cut inside a network namespace (no TCP reset).
let enabled = peersTestsEnabled('real servers: network cut');
if (enabled && !netnsAvailable()) {
  if (process.env.SIDECAR_TEST_REQUIRE_PEERS === '1') throw new Error('real servers: network cut needs root and iproute2 (ip netns) with SIDECAR_TEST_REQUIRE_PEERS=1');
  console.warn('\n!!! real servers: network cut: SKIPPED — needs root and iproute2 (ip netns) !!!\n');
  enabled = false;
}
// Long enough to cover LiveKit noticing the cut and the client getting back (scenario 4).
const GRACE_MS = 30_000;

describe.runIf(enabled).sequential('real servers: network cut', () => {
  let rig: Rig;
  let ns: Netns;
  let homeserverUrl: string;
  let daemonUrl: string;
  beforeAll(async () => {
    ns = createNetns();
    rig = await startRig({ livekitIp: ns.hostIp, daemonEnv: { SIDECAR_RECONNECT_GRACE_MS: String(GRACE_MS) } });
    homeserverUrl = (await ns.forward(rig.synapse.port)).url;
    daemonUrl = (await ns.forward(Number(new URL(rig.daemonUrl).port))).url;
  }, 180_000);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(rig.diagnostics());
  });
  afterAll(async () => {
    await rig?.stop();
    ns?.remove();
  }, 60_000);

  const start = (): Promise<Call> => rig.startCall(1, { delayMs: 10_000, delegate: 'v1', wrap: ns.wrap, homeserverUrl, daemonUrl });

  it('3: network cut for good: LiveKit notices, the leave is sent after the grace, never while LiveKit lists the participant', async () => {
    const call = await start();
    const m = call.members[0]!;
    const cut = Date.now();
    ns.cut();
    try {
      let leftWhileListed = false;
      const gone = await membershipGone(rig, call, m, 120_000 + GRACE_MS, (listed, left) => {
        if (listed && left) leftWhileListed = true;
      });
      expect(leftWhileListed).toBe(false);
      const lost = await webhookFor(rig, m, ['participant_left', 'participant_connection_aborted'], cut);
      await recordFigure({ figure: 'webhook_to_gone', kind: 'network_cut', reason: lost.reason ?? 'UNKNOWN_REASON', event: lost.event, ms: gone - lost.at, cut_to_webhook_ms: lost.at - cut });
      expect(gone - lost.at).toBeGreaterThanOrEqual(GRACE_MS - 100);
    } finally {
      ns.restore();
      call.participants.proc.kill('SIGKILL');
    }
  }, 300_000);

  it('4: network restored within the grace: nothing is sent', async () => {
    const call = await start();
    const m = call.members[0]!;
    const cut = Date.now();
    ns.cut();
    // Keep the cable out until LiveKit has dropped the participant, then plug it back in within the grace.
    await waitFor('LiveKit to drop the cut participant', async () => !(await rig.livekitLists(call, m)), 90_000, 250);
    const dropped = Date.now();
    ns.restore();
    const back = await waitFor('the participant to be back in LiveKit', async () => ((await rig.livekitLists(call, m)) ? Date.now() : null), GRACE_MS - 2_000, 250);
    await recordFigure({ figure: 'network_restore', cut_to_drop_ms: dropped - cut, drop_to_back_ms: back - dropped, sdk: call.participants.events.filter((e) => e.ev === 'livekit').map((e) => String(e.what)), webhooks: rig.webhooks.filter((w) => w.identity === m.identity && w.at >= cut).map((w) => `${w.event}:${w.reason ?? ''}`) });
    // Past the end of the grace and two delays more: the delegation is still kept alive.
    await membershipsHeld(rig, call, [m], GRACE_MS + 20_000, 'though the participant came back within the grace');
    call.participants.send({ cmd: 'close' });
    await membershipGone(rig, call, m, 30_000);
  }, 300_000);
});
