/**
 * Found by the soak (`npm run soak -- --hs-limit 50`: the homeserver allows half of SIDECAR_HOMESERVER_RATE): after
 * the outage, the first burst of retries meets the homeserver's own limit, and every one of the 429s answered to calls
 * that were already in flight halves the origin's rate again. One burst takes the limiter to its floor (1/64 of the
 * setting), and it climbs back one doubling per quiet minute, six minutes in all; meanwhile refreshes queue behind
 * it and futures expire while their participants are connected.
 * `npx tsx test/soak/repro/limiter-collapse.ts` exits 1 while one burst of 429s still divides the rate by 64.
 */
import { ManualClock } from '../../../src/clock.js';
import { OriginLimiter } from '../../../src/homeserver/limiter.js';

const clock = new ManualClock(0);
const limiter = new OriginLimiter(100, clock);
// 40 calls went out together and the homeserver, allowing 50/s, answered 429 to all of them within a few ms.
for (let i = 0; i < 40; i++) limiter.throttle();
const afterBurst = limiter.currentRate;
let recoveredAfterMin = 0;
while (limiter.currentRate < 100 && recoveredAfterMin < 30) {
  clock.advance(60_000);
  void limiter.acquire({ rank: 1, deadline: 0 });
  recoveredAfterMin++;
}
console.log(`configured 100/s; after one burst of 40 concurrent 429s: ${afterBurst}/s; back to 100/s after ${recoveredAfterMin} quiet minutes`);
limiter.close();
const collapsed = afterBurst < 25;
console.log(collapsed ? 'BUG: one burst divided the rate by 64 (one halving per answer, not per burst)' : 'ok: one burst halves the rate about once');
process.exit(collapsed ? 1 : 0);
