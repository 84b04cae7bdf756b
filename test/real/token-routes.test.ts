import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { legacyIdentity, liveKitIdentity } from '../../src/compat/livekit-names.js';
import { membershipGone, membershipsHeld, restartsAt, sendsOf } from './judge.js';
import { peersTestsEnabled } from './peers.js';
import { startRig, type Rig } from './rig.js';

// Issue 15 against the real servers: Element Call with a `livekit_service_url` transport (facts §9.2) asks the
// daemon, configured with lk-jwt-service's environment only, for its LiveKit token with a real OpenID token from
// Synapse, joins the real LiveKit with that token in the room the daemon's CreateRoom made (LiveKit's auto_create is
// off), then asks the same route again with the delay fields to delegate its delayed leave. Verdicts come from
// Synapse's room state and access log.
const enabled = peersTestsEnabled('real servers: /get_token and /sfu/get');
/** Element Call's default `delayed_leave_event_delay_ms`. */
const DELAY_MS = 10_000;

const ROUTES = [
  { route: 'get_token', form: 'hashed identity', identity: (user: string, device: string) => liveKitIdentity(user, device, `${user}:${device}`) },
  { route: 'sfu_get', form: 'legacy <user>:<device> identity', identity: legacyIdentity },
] as const;

describe.runIf(enabled).sequential('real servers: /get_token and /sfu/get', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await startRig({ lkJwtService: true });
  }, 180_000);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(rig.diagnostics());
  });
  afterAll(async () => {
    await rig?.stop();
  }, 60_000);

  for (const { route, form, identity } of ROUTES) {
    it(`${route} (${form}): our token joins the room our CreateRoom made; the delegated leave is restarted while connected and sent on leave`, async () => {
      const call = await rig.startCall(1, { delayMs: DELAY_MS, delegate: route });
      const m = call.members[0]!;

      const token = call.participants.events.find((e) => e.ev === 'token' && e.i === 0);
      expect(token?.status).toBe(200);
      expect(token?.url).toBe(rig.livekit.wsUrl);
      // The rig joined with the identity the daemon's token carries (startCall compares it with LiveKit's).
      expect(m.identity).toBe(identity(m.userId, m.deviceId));
      // The room is the daemon's: lk-jwt-service's CreateRoom parameters, nothing the rig made.
      const rooms = await rig.livekit.rooms.listRooms([call.livekitRoom]);
      expect(rooms.map((r) => [r.emptyTimeout, r.departureTimeout])).toEqual([[300, 20]]);
      expect(await rig.livekitLists(call, m)).toBe(true);

      // The participant's SDK does not restart (the rig's one divergence): only the daemon keeps the event alive,
      // through three delays.
      const from = Date.now();
      await membershipsHeld(rig, call, [m], 3 * DELAY_MS, `(${route})`);
      const restarts = restartsAt(rig, m.delayId, 'daemon').filter((t) => t >= from);
      expect(restarts.length).toBeGreaterThanOrEqual(3);

      call.participants.send({ cmd: 'close' });
      await membershipGone(rig, call, m, 30_000);
      // Sent by the daemon (no access token), not by the participant's own SDK.
      expect(await sendsOf(rig, m.delayId)).toEqual([null]);
    }, 240_000);
  }
});
