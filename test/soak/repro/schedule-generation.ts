/**
 * Found by the soak (seed 4, --short): a delegation's timer is lost, so a failed action is never retried.
 * `npx tsx test/soak/repro/schedule-generation.ts` exits 1 while the bug is there.
 *
 * Schedule.set() numbers an id's entries from (current generation ?? 0) + 1, and both set(id, null) and fire() delete
 * the id's generation. Entries left in the heap by earlier set() calls (lazy deletion) then carry generations that
 * the restarted count hands out again, so a stale entry passes the generation check, fires early in place of the
 * current one, and consumes it. The engine does not reschedule after a tick that changes nothing, so the delegation
 * is left without any timer.
 */
import { ManualClock } from '../../../src/clock.js';
import { Schedule } from '../../../src/delegations/schedule.js';

const clock = new ManualClock(0);
const fired: number[] = [];
const schedule = new Schedule(clock, () => fired.push(clock.now()));
schedule.set('d', 1_000); // e.g. grace deadline
schedule.set('d', 2_000); // moved (the 1 000 entry stays in the heap)
schedule.set('d', null); // a call is in flight: nothing due
schedule.set('d', 3_000); // the retry: generation 1 again
schedule.set('d', 3_000); // rescheduled after the call: generation 2 again
clock.advance(10_000);
const ok = fired.length === 1 && fired[0] === 3_000;
console.log(`due at 3000 ms; fired at ${JSON.stringify(fired)}: ${ok ? 'correct' : 'BUG: a stale entry fired early and the real one was lost'}`);
process.exit(ok ? 0 : 1);
