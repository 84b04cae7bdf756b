import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { DelegationEngine } from '../../src/delegations/engine.js';
import { Reconciler, type RoomLister } from '../../src/livekit/reconciler.js';

/** A LiveKit whose listings answer only when the test says so; counts the ones in flight. */
function heldLister() {
  const waiting: Array<() => void> = [];
  const listed: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const lister: RoomLister = {
    listParticipants: (room) =>
      new Promise((resolve) => {
        listed.push(room);
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        waiting.push(() => {
          inFlight--;
          resolve([]);
        });
      }),
    getParticipant: () => Promise.reject(new Error('not asked here')),
  };
  return { lister, listed, waiting, stats: () => ({ inFlight, maxInFlight }) };
}

const flush = () => new Promise<void>((r) => setImmediate(r));

function reconcilerOver(rooms: string[], clock: ManualClock, lister: RoomLister): Reconciler {
  const engine = { openRooms: () => rooms, delegationsInRoom: () => [], observePresent: async () => {}, getOpen: () => undefined } as unknown as DelegationEngine;
  return new Reconciler({ engine, rooms: lister, clock, logger: pino({ level: 'silent' }), intervalMs: 60_000 });
}

describe('Reconciler cycle', () => {
  it('lists every room once with a bounded number of listings in flight, however many rooms there are', async () => {
    const clock = new ManualClock(0);
    const held = heldLister();
    const rooms = Array.from({ length: 300 }, (_, i) => `room-${i}`);
    const cycle = reconcilerOver(rooms, clock, held.lister).cycle();
    // Enough time for the limiter (50/s) to let every room through if each had its own waiting call.
    for (let i = 0; i < 100; i++) {
      clock.advance(100);
      await flush();
    }
    expect(held.stats().inFlight).toBe(64);
    while (held.waiting.length > 0) {
      held.waiting.shift()!();
      await flush();
      for (let i = 0; i < 3; i++) {
        clock.advance(100);
        await flush();
      }
    }
    await cycle;
    expect(held.stats().maxInFlight).toBe(64);
    expect([...held.listed].sort()).toEqual([...rooms].sort());
  });

  it('takes no more rooms once stopped, and the cycle ends', async () => {
    const clock = new ManualClock(0);
    const held = heldLister();
    const rooms = Array.from({ length: 200 }, (_, i) => `room-${i}`);
    const reconciler = reconcilerOver(rooms, clock, held.lister);
    const cycle = reconciler.cycle();
    for (let i = 0; i < 50; i++) {
      clock.advance(100);
      await flush();
    }
    const before = held.listed.length;
    const stopped = reconciler.stop();
    for (const answer of held.waiting.splice(0)) answer();
    await cycle;
    await stopped;
    expect(held.listed.length).toBe(before);
    expect(before).toBeLessThan(rooms.length);
  });
});
