/**
 * Found by the soak (seed 1, `npm run soak -- --short --loss 0 --dup 0 --reorder 0`): a grace that runs out while the
 * daemon is down fires connection_lost at start-up, before LiveKit's retry of the rejoin webhook (or a first
 * reconciliation) can cancel it. No webhook is lost here: the participant reconnects within the grace while the
 * daemon is down, and LiveKit delivers that participant_joined on its next retry, a few seconds after the restart.
 * `npx tsx test/soak/repro/grace-across-restart.ts` exits 1 while the bug is there.
 */
import { startFakeHomeserver } from '../../fakes/homeserver.js';
import { freePort, sleep, spawnDaemon, tempDbPath, waitFor } from '../../helpers/daemon.js';
import { actionsFired, delegate, delegationState, webhookSender } from '../../helpers/scenario.js';

const hs = await startFakeHomeserver();
const env = { SIDECAR_STORE: `sqlite:${tempDbPath('grace-restart')}`, SIDECAR_RECONNECT_GRACE_MS: '3000', LIVEKIT_URL: 'http://127.0.0.1:1', LOG_LEVEL: 'warn' };
const port = await freePort();
let daemon = await spawnDaemon(env, port);
const lk = webhookSender(daemon.url);
const p = await delegate(daemon.url, hs, 'futures', { timeoutMs: 60_000 });
await lk.participantJoined(p.room, p);
await waitFor('connected', async () => (await delegationState(daemon.url, p)).state === 'connected');
await lk.participantLeft(p.room, p, 'CONNECTION_TIMEOUT');
await waitFor('grace', async () => (await delegationState(daemon.url, p)).state === 'grace');
daemon.kill('SIGKILL');
await daemon.exited;
const rejoin = { ...p, sid: `${p.sid}-2` };
await sleep(500);
// The participant is back 0.5 s into a 3 s grace; LiveKit cannot deliver that while the daemon is down and retries.
const firstTry = await lk.participantJoined(p.room, rejoin).then((r) => r.status, () => 'connection refused');
console.log(`participant_joined for the new session while the daemon is down: ${firstTry} (LiveKit retries after 1, 2, 4, 8 s)`);
await sleep(3_500);
daemon = await spawnDaemon(env, port);
const retried = await webhookSender(daemon.url).participantJoined(p.room, rejoin);
console.log(`LiveKit's retry after the restart: ${retried.status}`);
await sleep(1_000);
const fired = actionsFired(hs, p.token);
console.log(`actions fired for a participant that came back within the grace: ${JSON.stringify(fired)}`);
daemon.kill('SIGKILL');
await hs.close();
const bug = fired.length > 0;
console.log(bug ? 'BUG: connection_lost fired at start-up for a participant that rejoined within the grace' : 'correct: nothing fired');
process.exit(bug ? 1 : 0);
