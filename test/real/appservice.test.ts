import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/daemon.js';
import { membershipGone, recordFigure } from './judge.js';
import { peersTestsEnabled } from './peers.js';
import { startRig, type Call, type Member, type Rig } from './rig.js';

/**
 * Application-service mode (contract section 8) on the real Synapse: Synapse loads the registration the daemon's
 * `registration` command printed and proxies MSC4195's C-S routes to it (MSC4512), the daemon asks Synapse about
 * memberships with MSC4502 and manages delayed events as the user (as_token + `user_id=`). Verdicts come from
 * Synapse's access log and room state, and from LiveKit's RoomService.
 */
const enabled = peersTestsEnabled('real servers: application-service mode');
const CS = '/_matrix/client/unstable/io.element.msc4195/rtc/livekit';
// Short enough that the daemon restarts it during the test, so a restart as the user shows in Synapse's log.
const DELAY_MS = 20_000;

describe.runIf(enabled).sequential('real servers: application-service mode', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await startRig({ appservice: true, daemonEnv: { SIDECAR_RECONNECT_GRACE_MS: '3000', LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS: '2' } });
  }, 180_000);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(rig.diagnostics());
  });
  afterAll(async () => {
    await rig?.stop();
  }, 60_000);

  /** Synapse's log lines for this member's calls to the delayed event, made as the user by the service. */
  const asUserCalls = (m: Member, action: 'restart' | 'send') =>
    rig.synapse
      .accessLog()
      .filter((r) => r.method === 'POST' && r.path.includes(`/delayed_events/${encodeURIComponent(m.delayId)}/${action}?`))
      .filter((r) => r.user === m.userId && new URL(r.path, 'http://x').searchParams.get('user_id') === m.userId);

  it('a participant gets its token and delegates through Synapse, is restarted and left as the user when it leaves LiveKit', async () => {
    const call = await rig.startCall(1, { delayMs: DELAY_MS, delegate: 'appservice' });
    const m = call.members[0]!;
    // Both requests went to Synapse, authenticated as the participant, and Synapse proxied them to the daemon.
    const proxied = rig.synapse.accessLog().filter((r) => r.user === m.userId && r.path.startsWith(CS));
    expect(proxied.map((r) => [r.method, r.path, r.status])).toEqual([
      ['POST', `${CS}/get_token`, 200],
      ['POST', `${CS}/delegate_delayed_leave`, 200],
    ]);
    // The rig checked that the participant joined LiveKit as MSC4195's identity, with the token Synapse relayed.
    expect(await rig.livekitLists(call, m)).toBe(true);
    await waitFor('a restart of the delayed leave as the user', () => asUserCalls(m, 'restart').some((r) => r.status === 200), 60_000, 200);
    expect(await rig.left(call, m)).toBe(false);

    call.participants.send({ cmd: 'close' });
    await membershipGone(rig, call, m, 30_000);
    await waitFor('the send in Synapse log', () => asUserCalls(m, 'send').length > 0, 10_000, 100);
    // Every send of this delayed event was the service's, as the user: none unauthenticated, none by the SDK.
    const sends = rig.synapse.accessLog().filter((r) => r.path.includes(encodeURIComponent(m.delayId)) && /\/send(\?|$)/.test(r.path));
    expect(sends.map((r) => [r.user, r.status])).toEqual([[m.userId, 200]]);
    expect(asUserCalls(m, 'send')).toHaveLength(1);
  }, 180_000);

  it('a user kicked from the Matrix room is removed from LiveKit (RemoveParticipant) and its leave is attempted as the user', async () => {
    const call: Call = await rig.startCall(1, { delayMs: DELAY_MS, delegate: 'appservice' });
    const m = call.members[0]!;
    expect(await rig.livekitLists(call, m)).toBe(true);
    const kicked = Date.now();
    await rig.synapse.call(rig.observer, 'POST', `/_matrix/client/v3/rooms/${encodeURIComponent(call.roomId)}/kick`, { user_id: m.userId, reason: 'rig' });
    await waitFor('LiveKit to drop the kicked participant', async () => !(await rig.livekitLists(call, m)), 60_000, 200);
    const removed = Date.now();
    // PARTICIPANT_REMOVED (4): RoomService removed it; the participant did not leave by itself.
    const gone = await call.participants.waitEvent((e) => e.ev === 'livekit' && e.what === 'disconnected', 'the participant to be disconnected', 30_000);
    expect(gone.reason).toBe(4);
    // The sweep (every 2 s) asked Synapse with MSC4502, as the service itself.
    const asked = rig.synapse.accessLog().filter((r) => r.path.includes('/io.element.msc4502/rooms/') && r.path.includes(encodeURIComponent(m.userId)) && r.ts >= kicked - 1_000);
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((r) => r.user === `@_futures_sidecar:${rig.synapse.serverName}` && r.status === 200)).toBe(true);
    await recordFigure({ figure: 'kick_to_livekit_removed', ms: removed - kicked, check_interval_ms: 2_000 });
    // The leave goes out as the user. Synapse cannot send it any more: the running SDK cancels its own delayed leave
    // when it sees the kick (404 for us), and a user who is not joined may not send state (403) (docs/interop.md).
    await waitFor('the leave attempted as the user', () => asUserCalls(m, 'send').length > 0, 30_000, 100);
    expect(asUserCalls(m, 'send').map((r) => r.status)).toEqual([expect.toSatisfy((s: number) => s === 403 || s === 404)]);
    // What clients see: the call membership of a user who is not joined is ignored (matrix-js-sdk isValidMembership).
    const member = await rig.synapse.state(rig.observer, call.roomId, 'm.room.member', m.userId);
    expect(member?.content.membership).toBe('leave');
  }, 180_000);

  it('a user who is not joined to the room gets 403 M_FORBIDDEN through Synapse, and nothing reaches the daemon without a user', async () => {
    const call = await rig.startCall(1, { delayMs: DELAY_MS, delegate: 'appservice' });
    const stranger = await rig.synapse.register(`stranger${Date.now() % 100000}`);
    const body = { room_id: call.roomId, slot_id: 'm.call#ROOM', url: rig.livekit.wsUrl, member: { id: `${stranger.userId}:X`, claimed_device_id: 'X' } };
    const refused = await rig.synapse.call(stranger, 'POST', `${CS}/get_token`, body).catch((err: Error & { status?: number }) => err);
    expect((refused as { status?: number }).status).toBe(403);
    expect((refused as Error).message).toContain('M_FORBIDDEN');
    const anonymous = await rig.synapse.call(null, 'POST', `${CS}/get_token`, body).catch((err: Error & { status?: number }) => err);
    expect((anonymous as { status?: number }).status).toBe(401);
    call.participants.send({ cmd: 'exit' });
  }, 180_000);
});
