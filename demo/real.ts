/**
 * `npm run demo -- --real`: the demo's story on the real servers installed by `npm run peers:install`: Synapse,
 * LiveKit and MatrixRTC participants (matrix-js-sdk + @livekit/rtc-node on Node 22), with the daemon as its own
 * process. Three people join one call and delegate their delayed leave: Alice leaves on purpose, Bob's app is killed,
 * Carol stays through several delays and then leaves. Every line of the verdict is read from Synapse's room state.
 */
import { membershipGone, membershipsHeld, sendsOf, webhookFor } from '../test/real/judge.js';
import { missingPeers } from '../test/real/peers.js';
import { startRig } from '../test/real/rig.js';

const DELAY_MS = 10_000;
const GRACE_MS = 3_000;

export async function runRealDemo(write: (line: string) => void): Promise<number> {
  const missing = missingPeers();
  if (missing.length) {
    write(`the real peers are not installed (run npm run peers:install): missing ${missing.join(', ')}`);
    return 1;
  }
  const t0 = Date.now();
  const at = () => `${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s`;
  write(`${at()}  starting Synapse, LiveKit and the daemon`);
  const rig = await startRig({ daemonEnv: { SIDECAR_RECONNECT_GRACE_MS: String(GRACE_MS) } });
  const checks: Array<[string, boolean]> = [];
  try {
    const [alice, bob, carol] = await Promise.all([0, 1, 2].map(() => rig.startCall(1, { delayMs: DELAY_MS, delegate: 'v1' })));
    const [a, b, c] = [alice!.members[0]!, bob!.members[0]!, carol!.members[0]!];
    write(`${at()}  three participants joined their calls through MatrixRTC (delayed leave of ${DELAY_MS / 1000} s on Synapse), connected with rtc-node and delegated`);

    const asked = Date.now();
    alice!.participants.send({ cmd: 'close' });
    const aGone = await membershipGone(rig, alice!, a, 30_000);
    const aLeft = await webhookFor(rig, a, ['participant_left'], asked);
    write(`${at()}  Alice left on purpose: membership emptied in Synapse ${aGone - aLeft.at} ms after LiveKit's participant_left`);
    checks.push(['Alice: leave sent by the daemon within 2 s of participant_left', aGone - aLeft.at < 2_000 && (await sendsOf(rig, a.delayId)).every((u) => u === null)]);

    const killed = Date.now();
    bob!.participants.proc.kill('SIGKILL');
    write(`${at()}  Bob's app was killed; LiveKit takes about 20 s to notice, then the daemon waits ${GRACE_MS / 1000} s for a reconnect`);
    const held = membershipsHeld(rig, carol!, [c], 3 * DELAY_MS, '(Carol)').then(
      () => true,
      () => false,
    );
    const bGone = await membershipGone(rig, bob!, b, 90_000);
    const bLost = await webhookFor(rig, b, ['participant_left', 'participant_connection_aborted'], killed);
    write(`${at()}  Bob: LiveKit reported ${bLost.reason ?? 'UNKNOWN_REASON'} ${((bLost.at - killed) / 1000).toFixed(1)} s after the kill; membership emptied ${bGone - bLost.at} ms later`);
    checks.push(['Bob: leave sent after the grace, not before', bGone - bLost.at >= GRACE_MS - 100]);

    const carolHeld = await held;
    write(`${at()}  Carol stayed ${(3 * DELAY_MS) / 1000} s, three delays: her membership ${carolHeld ? 'held throughout' : 'was emptied early'}`);
    checks.push(['Carol: membership held for three delays while connected', carolHeld]);
    carol!.participants.send({ cmd: 'close' });
    await membershipGone(rig, carol!, c, 30_000);
    write(`${at()}  Carol left; membership emptied`);
  } finally {
    await rig.stop();
  }
  write('\nChecks (from Synapse)');
  for (const [what, ok] of checks) write(`  ${ok ? 'ok  ' : 'FAIL'}  ${what}`);
  const failed = checks.filter(([, ok]) => !ok).length;
  write(failed === 0 ? '\nreal demo passed.' : `\nreal demo FAILED: ${failed} check(s) did not hold.`);
  return failed === 0 ? 0 : 1;
}
