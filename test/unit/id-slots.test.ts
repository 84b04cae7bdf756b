import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { IdSlots, mixIdWords } from '../../src/delegations/id-slots.js';
import { ShortStrings } from '../../src/delegations/short-strings.js';

const ourId = (): string => `dg_${randomBytes(12).toString('base64url')}`;

/** Sets ids at slots 0.. and returns them. */
function fill(t: IdSlots, n: number, capacity = n): string[] {
  t.grow(capacity);
  const ids = Array.from({ length: n }, ourId);
  ids.forEach((id, slot) => t.set(id, slot));
  return ids;
}

describe('IdSlots', () => {
  it('finds our ids by their bytes and gives them back as the same text', () => {
    const t = new IdSlots();
    const ids = fill(t, 100);
    expect(t.size).toBe(100);
    ids.forEach((id, slot) => {
      expect(t.slotOf(id)).toBe(slot);
      expect(t.idAt(slot)).toBe(id);
    });
    expect(t.slotOf(ourId())).toBeUndefined();
    expect(t.idAt(100)).toBeUndefined();
  });

  it('keeps ids of any other shape aside, alongside packed ones', () => {
    const t = new IdSlots();
    t.grow(16);
    const foreign = ['dg_1', 'dg_many_0001', '', `dg_${'A'.repeat(15)}+`, 'dg_ééééééééééééééééé', `dg_${'A'.repeat(17)}`, `DG_${'A'.repeat(16)}`];
    foreign.forEach((id, slot) => t.set(id, slot));
    const packed = ourId();
    t.set(packed, 9);
    foreign.forEach((id, slot) => {
      expect(t.slotOf(id)).toBe(slot);
      expect(t.idAt(slot)).toBe(id);
    });
    expect(t.slotOf(packed)).toBe(9);
    expect(t.size).toBe(foreign.length + 1);
    t.delete(0);
    expect(t.slotOf('dg_1')).toBeUndefined();
    expect(t.has(0)).toBe(false);
    expect(t.size).toBe(foreign.length);
  });

  it('finds every id when all of them hash to one place, before and after deletions', () => {
    const t = new IdSlots(() => 7);
    const ids = fill(t, 60);
    for (let slot = 0; slot < 60; slot += 2) t.delete(slot);
    ids.forEach((id, slot) => expect(t.slotOf(id)).toBe(slot % 2 === 0 ? undefined : slot));
    // The freed slots take new ids that collide with every remaining one.
    const again = Array.from({ length: 30 }, ourId);
    again.forEach((id, i) => t.set(id, i * 2));
    again.forEach((id, i) => expect(t.slotOf(id)).toBe(i * 2));
    ids.forEach((id, slot) => slot % 2 === 1 && expect(t.slotOf(id)).toBe(slot));
  });

  it('shifts entries back across the end of the table when one is deleted', () => {
    // Homes at the last two places of the 1,024-entry table: the run wraps round to the start.
    const t = new IdSlots((a) => 1022 + (a & 1));
    const ids = fill(t, 40);
    for (const slot of [0, 1, 5, 17, 39]) t.delete(slot);
    ids.forEach((id, slot) => expect(t.slotOf(id)).toBe([0, 1, 5, 17, 39].includes(slot) ? undefined : slot));
  });

  it('grows its table and keeps every id findable', () => {
    const t = new IdSlots();
    const ids = fill(t, 20_000);
    ids.forEach((id, slot) => expect(t.slotOf(id)).toBe(slot));
  });

  it('agrees with a Map over random inserts and deletes with many collisions', () => {
    // A hash of 6 bits: long probe runs, so a wrong backward shift loses or misplaces entries.
    const t = new IdSlots((a, b, c) => mixIdWords(a, b, c) & 63);
    const capacity = 3_000;
    t.grow(capacity);
    const model = new Map<number, string>();
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    for (let step = 0; step < 30_000; step++) {
      const slot = rnd(capacity);
      if (model.has(slot)) {
        t.delete(slot);
        model.delete(slot);
      } else {
        const id = ourId();
        t.set(id, slot);
        model.set(slot, id);
      }
      if (step % 5_000 === 4_999) for (const [s, id] of model) expect(t.slotOf(id)).toBe(s);
    }
    expect(t.size).toBe(model.size);
    for (let s = 0; s < capacity; s++) expect(t.idAt(s)).toBe(model.get(s));
  });
});

describe('ShortStrings', () => {
  it('keeps null, short Latin-1 strings inline and anything else aside', () => {
    const s = new ShortStrings();
    s.grow(4);
    const values = [null, '', 'PA_AbCdEfGh2345', 'PA_AbCdEfGh23456', 'PA_ü€'];
    for (const v of values) {
      s.set(2, v);
      expect(s.get(2)).toBe(v);
      expect(s.equals(2, v)).toBe(true);
      for (const other of values) if (other !== v) expect(s.equals(2, other)).toBe(false);
    }
    expect(s.get(3)).toBeNull();
  });

  it('replacing an aside value drops it', () => {
    const s = new ShortStrings();
    s.grow(1);
    s.set(0, 'x'.repeat(40));
    s.set(0, 'PA_short');
    expect(s.get(0)).toBe('PA_short');
    expect((s as unknown as { aside: Map<number, string> }).aside.size).toBe(0);
  });

  it('keeps its values when it grows', () => {
    const s = new ShortStrings();
    s.grow(2);
    s.set(1, 'PA_kept');
    s.grow(4096);
    expect(s.get(1)).toBe('PA_kept');
  });
});

describe('ShortStrings of another width', () => {
  it('holds identities up to one character less than its width inline, longer ones aside', () => {
    const s = new ShortStrings(48);
    s.grow(3);
    const hashed = 'n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg';
    const legacy = '@a-rather-long-user-name:matrix.example.org:DEV';
    const longer = `${legacy}X`;
    [hashed, legacy, longer].forEach((v, slot) => s.set(slot, v));
    [hashed, legacy, longer].forEach((v, slot) => {
      expect(s.get(slot)).toBe(v);
      expect(s.equals(slot, v)).toBe(true);
    });
    expect(legacy).toHaveLength(47);
    expect((s as unknown as { aside: Map<number, string> }).aside.size).toBe(1);
    expect(s.equals(1, longer)).toBe(false);
  });
});
