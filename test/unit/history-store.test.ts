import { describe, expect, it } from 'vitest';
import { HistoryStore } from '../../src/delegations/history.js';

describe('HistoryStore bounds', () => {
  it('forgets the delegations whose history began first, across many evictions, and keeps the newest lines of each', () => {
    const h = new HistoryStore({ perDelegation: 2, delegations: 3, bytes: 1 << 20 });
    // Far more delegations than it keeps, so its bookkeeping of the order is compacted several times.
    for (let i = 0; i < 5_000; i++) {
      h.add(`dg_${i}`, i, `line ${i}`, 'connected');
      // The oldest kept delegation gets a line too: it stays the oldest (order is by first line), and is the next
      // to go.
      if (i >= 2) h.add(`dg_${i - 2}`, i, `late ${i}`, 'grace');
    }
    expect(h.size).toBe(3);
    expect(h.get('dg_4996')).toEqual([]);
    expect(h.get('dg_4997').map((e) => e.what)).toEqual(['line 4997', 'late 4999']);
    expect(h.get('dg_4998').map((e) => e.what)).toEqual(['line 4998']);
    expect(h.get('dg_4999').map((e) => e.what)).toEqual(['line 4999']);
    // A forgotten delegation that comes back starts afresh, as the newest.
    h.add('dg_0', 6_000, 'back', 'connected');
    expect(h.get('dg_0').map((e) => e.what)).toEqual(['back']);
    expect(h.get('dg_4997')).toEqual([]);
    expect(h.size).toBe(3);
  });

  it('forgets the oldest delegations when the bytes run out, never the one being written', () => {
    const h = new HistoryStore({ perDelegation: 50, delegations: 1_000, bytes: 2_000 });
    for (let i = 0; i < 100; i++) h.add(`dg_${i}`, i, 'x'.repeat(100), 'connected');
    expect(h.bytes).toBeLessThanOrEqual(2_000);
    expect(h.get('dg_99')).toHaveLength(1);
    expect(h.get('dg_0')).toEqual([]);
    // One delegation alone over the budget is kept (its own lines are bounded by perDelegation).
    for (let i = 0; i < 50; i++) h.add('dg_big', i, 'y'.repeat(200), 'connected');
    expect(h.size).toBe(1);
    expect(h.get('dg_big')).toHaveLength(50);
  });
});
