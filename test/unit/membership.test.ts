import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { MembershipMonitor } from '../../src/appservice/membership.js';
import { ManualClock } from '../../src/clock.js';
import { Metrics } from '../../src/metrics.js';

function monitor(opts: { joined: (room: string, user: string) => Promise<boolean>; present?: Set<string> }) {
  const clock = new ManualClock();
  const removedFromLiveKit: string[] = [];
  const left: string[] = [];
  const present = opts.present ?? new Set<string>();
  const m = new MembershipMonitor({
    isJoined: opts.joined,
    remover: { removeParticipant: async (room, identity) => removedFromLiveKit.push(`${room}/${identity}`) },
    removed: async (room, identity) => {
      left.push(`${room}/${identity}`);
    },
    presence: { activeSid: (room, identity) => (present.has(`${room}/${identity}`) ? 'PA_x' : null) },
    clock,
    logger: pino({ level: 'silent' }),
    metrics: new Metrics(),
    intervalMs: 0,
  });
  return { m, clock, removedFromLiveKit, left, present };
}

describe('MembershipMonitor', () => {
  it('sweeps only participants in the call, removes those no longer joined, and leaves the rest when the homeserver errs', async () => {
    const joined = new Map([['@a:hs', true], ['@b:hs', false], ['@c:hs', false]]);
    const w = monitor({
      joined: async (_room, user) => {
        if (user === '@err:hs') throw new Error('500');
        return joined.get(user) ?? false;
      },
      present: new Set(['r/a', 'r/b', 'r/err']),
    });
    for (const u of ['a', 'b', 'c', 'err']) w.m.track('r', u, '!room:hs', `@${u}:hs`);
    await w.m.sweep();
    // c is not in the call (no session): not asked, not removed; err could not be answered: left alone.
    expect([w.removedFromLiveKit, w.left]).toEqual([['r/b'], ['r/b']]);
    expect(w.m.trackedCount).toBe(3);
  });

  it('forgets participants that never joined within the token lifetime, even without a sweep', async () => {
    const w = monitor({ joined: async () => true });
    for (let i = 0; i < 4096; i++) w.m.track('r', `old${i}`, '!room:hs', '@a:hs');
    w.clock.advance(61 * 60_000);
    for (let i = 0; i < 4095; i++) w.m.track('r', `new${i}`, '!room:hs', '@a:hs');
    expect(w.m.trackedCount).toBe(8191);
    w.m.track('r', 'last', '!room:hs', '@a:hs');
    expect(w.m.trackedCount).toBe(4096);
  });
});
