/**
 * Found by the soak (seed 3, --short; no restart needed): LiveKit delivers a room's webhooks in order but late (its
 * queue was stalled, e.g. retrying while the daemon restarted), while reconciliation has already seen the identity's
 * newest session. The late participant_joined of an older session then becomes "current" in the presence tracker and
 * marks the newest session ended; the delegation is rebound to the old session, the old session's
 * DUPLICATE_IDENTITY left puts it back to awaiting_join, and every later sighting of the newest session (its own
 * participant_joined, getParticipant, listParticipants) is ignored as stale, until the join deadline fires
 * connection_lost for a participant that never left.
 * `npx tsx test/soak/repro/late-webhooks-after-reconcile.ts` exits 1 while the bug is there.
 */
import { startFakeHomeserver } from '../../fakes/homeserver.js';
import { startFakeRoomService } from '../../fakes/livekit.js';
import { API_KEY, API_SECRET, sleep, startDaemon, waitFor } from '../../helpers/daemon.js';
import { actionsFired, delegate, delegationState, webhookSender } from '../../helpers/scenario.js';

const hs = await startFakeHomeserver();
const rs = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
const d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '1000', SIDECAR_JOIN_TIMEOUT_MS: '4000', LOG_LEVEL: 'silent' });
const lk = webhookSender(d.url);
const p = await delegate(d.url, hs, 'futures', { timeoutMs: 60_000 });
const [a, b, c] = [p.sid, `${p.sid}-b`, `${p.sid}-c`];
const t = Math.floor(Date.now() / 1000);
rs.join(p.room, { sid: a, identity: p.identity, joinedAt: t });
await lk.participantJoined(p.room, { sid: a, identity: p.identity, joinedAt: t });
await waitFor('connected on A', async () => (await delegationState(d.url, p)).state === 'connected');
// The connection drops and comes back as B, then a new session C replaces B: LiveKit lists C at once, but the four
// webhooks (left A, joined B, left B DUPLICATE_IDENTITY, joined C) sit in the room's queue for a while.
rs.join(p.room, { sid: c, identity: p.identity, joinedAt: t + 2 });
await sleep(3_000);
console.log(`after reconciliation: ${(await delegationState(d.url, p)).state}`);
await lk.participantLeft(p.room, { sid: a, identity: p.identity, joinedAt: t }, 'CONNECTION_TIMEOUT');
await lk.participantJoined(p.room, { sid: b, identity: p.identity, joinedAt: t + 1 });
await lk.participantLeft(p.room, { sid: b, identity: p.identity, joinedAt: t + 1 }, 'DUPLICATE_IDENTITY');
await lk.participantJoined(p.room, { sid: c, identity: p.identity, joinedAt: t + 2 });
await sleep(500);
console.log(`after the late webhooks (C is listed and its own participant_joined arrived): ${(await delegationState(d.url, p)).state}`);
await sleep(6_000);
const fired = actionsFired(hs, p.token);
console.log(`actions fired while LiveKit lists the participant's session C the whole time: ${JSON.stringify(fired)}`);
await d.stop();
await rs.close();
await hs.close();
const bug = fired.length > 0;
console.log(bug ? 'BUG: connection_lost fired for a participant that never left' : 'correct: nothing fired');
process.exit(bug ? 1 : 0);
