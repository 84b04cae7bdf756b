import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { HomeserverLoad, CLIENT_SHARE, IDENTITY_SHARE, PROVISIONAL_LEASE_MS } from '../../src/delegations/homeserver-load.js';
import { HistoryStore } from '../../src/delegations/history.js';
import { InternTable } from '../../src/lib/intern-table.js';

const ORIGIN = 'https://hs.example';

function control(budget = 1, maxOrigins = 10) {
  const clock = new ManualClock();
  const idle: string[] = [];
  const admission = new HomeserverLoad({ budget, maxOrigins, clock, onOriginIdle: (o) => idle.push(o) });
  return { clock, idle, admission };
}

/** What the engine does for a new delegation: check, track, hold. */
function admit(a: HomeserverLoad, id: string, req: { load: number; identity?: string; client?: string | null; origin?: string }) {
  const full = { origin: req.origin ?? ORIGIN, load: req.load, room: 'room', identity: req.identity ?? id, client: req.client ?? null };
  const refusal = a.check(full);
  if (refusal) return refusal;
  a.track(full.origin, full.load, false);
  a.hold(id, full);
  return null;
}

describe('admission control', () => {
  it('holds an unconfirmed delegation for its lease only, then stops counting it', () => {
    const { clock, admission } = control();
    for (const id of ['a', 'b', 'c', 'd']) expect(admit(admission, id, { load: 0.24 })).toBeNull();
    expect(admit(admission, 'e', { load: 0.05 })).toBe('homeserver_full');
    clock.advance(PROVISIONAL_LEASE_MS - 1);
    expect(admission.loadOf(ORIGIN)).toBeCloseTo(0.96);
    clock.advance(1);
    expect(admission.loadOf(ORIGIN)).toBe(0);
    expect(admit(admission, 'e', { load: 0.05 })).toBeNull();
  });

  it('counts a confirmed delegation for good, and undoes a confirmation that was rolled back', () => {
    const { clock, admission } = control();
    admit(admission, 'a', { load: 0.2 });
    admission.confirm('a', ORIGIN, 0.2);
    clock.advance(PROVISIONAL_LEASE_MS * 10);
    expect(admission.loadOf(ORIGIN)).toBeCloseTo(0.2);
    admission.confirm('a', ORIGIN, 0.2, -1);
    expect(admission.loadOf(ORIGIN)).toBeCloseTo(0);
  });

  it('releases a hold at once when the first refresh is not accepted', () => {
    const { admission } = control();
    admit(admission, 'a', { load: 0.2 });
    admission.release('a');
    expect(admission.loadOf(ORIGIN)).toBe(0);
  });

  it('gives one participant and one client address only their share of unconfirmed load; an IPv6 client by /64', () => {
    const { admission } = control(1);
    expect(admit(admission, 'a', { load: IDENTITY_SHARE, identity: 'p' })).toBeNull();
    expect(admit(admission, 'b', { load: 0.01, identity: 'p' })).toBe('identity_share');
    expect(admit(admission, 'c1', { load: CLIENT_SHARE / 2, identity: 'q1', client: '2001:db8:1:2::1' })).toBeNull();
    expect(admit(admission, 'c2', { load: CLIENT_SHARE / 2, identity: 'q2', client: '2001:db8:1:2::2' })).toBeNull();
    expect(admit(admission, 'd', { load: 0.01, identity: 'r', client: '2001:db8:1:2:ffff::9' })).toBe('client_share');
    expect(admit(admission, 'e', { load: 0.01, identity: 'r', client: '2001:db8:1:3::1' })).toBeNull();
    expect(admit(admission, 'f', { load: 0.01, identity: 's', client: '::ffff:192.0.2.1' })).toBeNull();
  });

  it('bounds the origins in use and says when one is no longer used', () => {
    const { admission, idle } = control(1, 2);
    expect(admit(admission, 'a', { load: 0.1, origin: 'https://one.example' })).toBeNull();
    expect(admit(admission, 'b', { load: 0.1, origin: 'https://two.example' })).toBeNull();
    expect(admit(admission, 'c', { load: 0.1, origin: 'https://three.example' })).toBe('too_many_homeservers');
    admission.untrack('a', 'https://one.example', 0.1, false);
    expect(idle).toEqual(['https://one.example']);
    expect(admission.originsInUse).toBe(1);
    expect(admit(admission, 'c', { load: 0.1, origin: 'https://three.example' })).toBeNull();
  });
});

describe('the history store', () => {
  it('stays within its bytes, forgetting the oldest delegations first, and cuts long lines', () => {
    const h = new HistoryStore({ perDelegation: 50, delegations: 20_000, bytes: 64 * 1024 });
    for (let i = 0; i < 1_000; i++) for (let j = 0; j < 5; j++) h.add(`dg_${i}`, i, `line ${j} ${'x'.repeat(200)}`, 'awaiting_join');
    expect(h.bytes).toBeLessThanOrEqual(64 * 1024);
    expect(h.get('dg_0')).toEqual([]);
    expect(h.get('dg_999')).toHaveLength(5);
    h.add('long', 0, 'y'.repeat(10_000), 'connected');
    expect(h.get('long')[0]!.what.length).toBe(515);
  });

  it('keeps the newest lines of one delegation', () => {
    const h = new HistoryStore({ perDelegation: 3, delegations: 10, bytes: 1 << 20 });
    for (let j = 0; j < 5; j++) h.add('a', j, `line ${j}`, 'connected');
    expect(h.get('a').map((e) => e.what)).toEqual(['line 2', 'line 3', 'line 4']);
  });
});

describe('the intern table', () => {
  it('shares one copy of a value and forgets what no live object names after a sweep', () => {
    const t = new InternTable<string>();
    const a = t.get('room-a', (k) => k);
    expect(t.get('room-a', () => 'other')).toBe(a);
    t.get('room-b', (k) => k);
    t.sweep(['room-a', 'room-a']);
    expect(t.size).toBe(1);
    expect(t.get('room-a', () => 'other')).toBe(a);
  });
});
