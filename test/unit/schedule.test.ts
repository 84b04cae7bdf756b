import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { OriginLimiter } from '../../src/homeserver/limiter.js';
import { Schedule } from '../../src/delegations/schedule.js';

describe('Schedule', () => {
  it('fires each id once at its latest due time, in order', () => {
    const clock = new ManualClock(0);
    const fired: Array<[string, number]> = [];
    const s = new Schedule(clock, (id) => fired.push([id, clock.now()]));
    s.set('a', 300);
    s.set('b', 100);
    s.set('c', 200);
    s.set('a', 150);
    s.set('c', null);
    clock.advance(1000);
    expect(fired).toEqual([
      ['b', 100],
      ['a', 150],
    ]);
    expect(s.size).toBe(0);
  });

  it('uses one clock timer however many ids are scheduled', () => {
    const clock = new ManualClock(0);
    let armed = 0;
    const counting = { ...clock, now: () => clock.now(), setTimeout: (fn: () => void, ms: number) => (armed++, clock.setTimeout(fn, ms)), clearTimeout: (h: never) => clock.clearTimeout(h) };
    const s = new Schedule(counting, () => {});
    for (let i = 0; i < 1000; i++) s.set(`id${i}`, 10_000 + i);
    expect(armed).toBe(1);
  });

  it('clamps timers beyond 2^31-1 ms', () => {
    const clock = new ManualClock(0);
    const fired: string[] = [];
    const s = new Schedule(clock, (id) => fired.push(id));
    s.set('far', 3 * 2 ** 31);
    clock.advance(2 ** 31);
    expect(fired).toEqual([]);
    clock.advance(3 * 2 ** 31);
    expect(fired).toEqual(['far']);
  });
});

describe('OriginLimiter', () => {
  it('lets a burst of 5x the rate through, then one call per 1/rate seconds', async () => {
    const clock = new ManualClock(0);
    const l = new OriginLimiter(1, clock);
    let started = 0;
    for (let i = 0; i < 8; i++) void l.acquire({ rank: 1, deadline: i }).then(() => started++);
    await Promise.resolve();
    expect(started).toBe(5);
    expect(l.backlog).toBe(3);
    clock.advance(1000);
    await Promise.resolve();
    expect(started).toBe(6);
    clock.advance(2000);
    await Promise.resolve();
    expect(started).toBe(8);
  });

  it('releases actions before refreshes and refreshes by earliest expiry', async () => {
    const clock = new ManualClock(0);
    const l = new OriginLimiter(1, clock);
    for (let i = 0; i < 5; i++) void l.acquire({ rank: 1, deadline: 0 });
    const order: string[] = [];
    void l.acquire({ rank: 1, deadline: 500 }).then(() => order.push('refresh-late'));
    void l.acquire({ rank: 1, deadline: 100 }).then(() => order.push('refresh-soon'));
    void l.acquire({ rank: 0, deadline: 900 }).then(() => order.push('action'));
    for (let i = 0; i < 3; i++) {
      clock.advance(1000);
      await Promise.resolve();
    }
    expect(order).toEqual(['action', 'refresh-soon', 'refresh-late']);
  });

  it('halves its rate on a 429 and recovers after quiet minutes', () => {
    const clock = new ManualClock(0);
    const l = new OriginLimiter(4, clock);
    l.throttle();
    expect(l.currentRate).toBe(2);
    clock.advance(1000);
    l.throttle();
    expect(l.currentRate).toBe(1);
    clock.advance(61_000);
    void l.acquire({ rank: 1, deadline: 0 });
    expect(l.currentRate).toBe(2);
    clock.advance(61_000);
    void l.acquire({ rank: 1, deadline: 0 });
    expect(l.currentRate).toBe(4);
  });
});

describe('OriginLimiter under a burst of 429s', () => {
  // Found by the soak: every 429 answered to calls already in flight halved the rate again, down to 1/64.
  it('halves once for a burst of 429s answered together, not once per answer', () => {
    const clock = new ManualClock(0);
    const l = new OriginLimiter(100, clock);
    for (let i = 0; i < 40; i++) l.throttle();
    expect(l.currentRate).toBe(50);
  });
});

describe('OriginLimiter.close', () => {
  it('releases every waiting call so that nothing waits forever after a shutdown', async () => {
    const clock = new ManualClock(0);
    const l = new OriginLimiter(1, clock);
    let started = 0;
    const all = Array.from({ length: 9 }, () => l.acquire({ rank: 1, deadline: 0 }).then(() => started++));
    await Promise.resolve();
    expect(started).toBe(5);
    l.close();
    await Promise.all(all);
    expect(started).toBe(9);
  });
});

describe('Schedule under churn', () => {
  it('fires every id once at its last due time, in due order, however often ids are rescheduled', () => {
    const clock = new ManualClock(0);
    const fired: Array<[string, number]> = [];
    const s = new Schedule(clock, (id) => fired.push([id, clock.now()]));
    const expected = new Map<string, number>();
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 500; i++) {
        const id = `d${i}`;
        const at = 1000 + Math.floor(rnd() * 100_000);
        s.set(id, at);
        expected.set(id, at);
      }
    }
    for (let i = 0; i < 500; i += 7) {
      s.set(`d${i}`, null);
      expected.delete(`d${i}`);
    }
    clock.advance(200_000);
    expect(fired.length).toBe(expected.size);
    for (const [id, at] of fired) expect(at).toBe(expected.get(id));
    for (let i = 1; i < fired.length; i++) expect(fired[i]![1]).toBeGreaterThanOrEqual(fired[i - 1]![1]);
    expect(s.size).toBe(0);
  });
});
