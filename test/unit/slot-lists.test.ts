import { describe, expect, it } from 'vitest';
import { SlotLists } from '../../src/delegations/slot-lists.js';

const entries = (l: SlotLists, key: number): number[] => [...l.entries(key)];

describe('SlotLists', () => {
  it('lists own and legacy links of many slots under their keys, newest first, and unlinks from any place', () => {
    const l = new SlotLists();
    // Slot 3000 has only a legacy link: the legacy links grow past slots that never used one.
    for (const slot of [0, 1, 2, 5000]) l.link(7, slot, 0);
    l.link(7, 2, 1);
    l.link(9, 3000, 1);
    l.link(9, 1, 1);
    expect(entries(l, 7)).toEqual([2 * 2 + 1, 5000 * 2, 2 * 2, 1 * 2, 0]);
    expect(entries(l, 9)).toEqual([1 * 2 + 1, 3000 * 2 + 1]);
    expect(l.count(7)).toBe(5);
    l.unlink(7, 2, 0); // middle
    l.unlink(7, 2, 1); // head
    l.unlink(7, 0, 0); // tail
    expect(entries(l, 7)).toEqual([5000 * 2, 1 * 2]);
    l.unlink(9, 3000, 1);
    expect(entries(l, 9)).toEqual([1 * 2 + 1]);
    expect(l.count(7)).toBe(2);
    expect(l.count(9)).toBe(1);
    expect(entries(l, 100)).toEqual([]);
    expect(l.count(100)).toBe(0);
  });

  it('clear empties every list for relinking', () => {
    const l = new SlotLists();
    l.link(1, 4, 0);
    l.link(1, 4, 1);
    l.clear(16);
    expect(entries(l, 1)).toEqual([]);
    l.link(1, 4, 1);
    expect(entries(l, 1)).toEqual([9]);
  });
});
