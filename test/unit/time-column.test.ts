import { describe, expect, it } from 'vitest';
import { TimeColumn } from '../../src/delegations/time-column.js';

const DAY = 86_400_000;
const T = 1_796_000_000_123;
const aside = (c: TimeColumn): Map<number, number> => (c as unknown as { far: Map<number, number> }).far;

describe('TimeColumn', () => {
  it('keeps times exact and inline as they move on for months, past the ±24 days of one base', () => {
    const c = new TimeColumn();
    c.grow(200);
    for (let d = 0; d < 180; d++) c.set(d, T + d * DAY + (d % 7));
    for (let d = 0; d < 180; d++) expect(c.get(d)).toBe(T + d * DAY + (d % 7));
    // The last 12 days are always inline (a new range reaches 12 days ahead and 12.8 back); older ones may be aside.
    for (let d = 168; d < 180; d++) expect(aside(c).has(d)).toBe(false);
    expect(aside(c).size).toBeLessThan(180 - 12);
  });

  it('keeps a value far beyond the range aside without moving the range', () => {
    const c = new TimeColumn();
    c.grow(3);
    c.set(0, T);
    c.set(1, T + 400 * DAY);
    c.set(2, T + 1);
    expect([c.get(0), c.get(1), c.get(2)]).toEqual([T, T + 400 * DAY, T + 1]);
    expect([...aside(c).keys()]).toEqual([1]);
  });

  it('carries no value of a slot set to null into a new range', () => {
    const c = new TimeColumn();
    c.grow(3);
    c.set(0, T);
    c.set(1, T + 1);
    c.set(1, null);
    c.set(2, T + 30 * DAY);
    expect(c.get(1)).toBeNull();
    expect(c.get(0)).toBe(T);
    expect(c.get(2)).toBe(T + 30 * DAY);
    expect([...aside(c).keys()]).toEqual([0]);
  });
});
