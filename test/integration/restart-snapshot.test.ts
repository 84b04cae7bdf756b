import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { DelegationEngine } from '../../src/delegations/engine.js';
import { transition, type MachineContext } from '../../src/delegations/machine.js';
import type { Delegation } from '../../src/delegations/model.js';
import type { HomeserverClient } from '../../src/homeserver/client.js';
import { Metrics } from '../../src/metrics.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { ReloadSource } from '../../src/store/store.js';
import { aDelegation } from '../helpers/delegation.js';

const NOW = 1_700_000_000_000;
const SETTINGS = { reconnectGraceMs: 10_000, joinTimeoutMs: 300_000, refreshAt: 0.5, refreshMarginMs: null };
const LIMITS = { maxPerIdentity: 10, maxPerRoom: 100_000, homeserverRate: 1_000_000 };
/** Enough rows that the snapshot file spans several of its 4 MiB read chunks. */
const BULK = 30_000;

const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-restart-snapshot-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// The clock never advances: nothing the engines hold falls due, so no homeserver call is made.
const homeservers = { call: () => Promise.reject(new Error('no call expected')), limiterBacklog: () => 0, forgetOrigin: () => {}, requiresAuth: () => false, close: async () => {} } as unknown as HomeserverClient;

function engineOn(store: SqliteStore): { engine: DelegationEngine; loaded: () => ReloadSource } {
  const lines: Array<{ from?: ReloadSource['from']; snapshot_refused?: string; msg: string }> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const engine = new DelegationEngine({ store, homeservers, clock: new ManualClock(NOW), logger, metrics: new Metrics(), settings: SETTINGS, limits: LIMITS });
  return {
    engine,
    loaded: () => {
      const line = lines.find((l) => l.msg === 'open delegations loaded')!;
      return { from: line.from!, ...(line.snapshot_refused ? { snapshotRefused: line.snapshot_refused } : {}) };
    },
  };
}

/** Every held delegation with when the engine next looks at it, by id. */
function held(engine: DelegationEngine): Map<string, { d: Delegation; due: number | null }> {
  return new Map([...engine.heldDelegations()].map((d) => [d.id, { d, due: engine.dueAt(d.id) }]));
}

/** One delegation of each shape a reload must carry over, and a bulk of connected ones. */
/**
 * Seeds a store, loads it and stops as a graceful shutdown does: the snapshot is written. Returns its row count and
 * what the engine held.
 */
async function seedWithSnapshot(path: string): Promise<{ count: number | null; held: ReturnType<typeof held> }> {
  seed(path);
  const first = engineOn(new SqliteStore(path));
  await first.engine.start();
  const store = (first.engine as unknown as { deps: { store: SqliteStore } }).deps.store;
  const count = await store.saveOpenSnapshot(first.engine.heldDelegations());
  await store.close();
  return { count, held: held(first.engine) };
}

function seed(path: string): void {
  const store = new SqliteStore(path);
  const ctx = (now: number): MachineContext => ({ now, settings: SETTINGS, random: () => 0.37 });
  const connected = aDelegation({ id: 'dg_connected', identity: '@a:hs', createdAt: NOW - 600_000 }, { sid: 'PA_a', ctx: ctx(NOW - 600_000) });
  const refreshed = transition(transition(connected, { type: 'tick', busy: { refresh: false, action: false } }, ctx(NOW - 200_000)).delegation, { type: 'refresh_result', outcome: { kind: 'ok', sentAt: NOW - 199_000 } }, ctx(NOW - 199_000)).delegation;
  const waiting = aDelegation({ id: 'dg_waiting', identity: '@b:hs', createdAt: NOW - 5_000 }, { ctx: ctx(NOW - 5_000) });
  // Lost its connection 2 s ago: its grace runs out before the settling time after a start.
  const grace = transition(aDelegation({ id: 'dg_grace', identity: '@c:hs', createdAt: NOW - 60_000 }, { sid: 'PA_c', ctx: ctx(NOW - 60_000) }), { type: 'departed', sid: 'PA_c', departure: 'connection_lost', at: NOW - 2_000 }, ctx(NOW - 2_000)).delegation;
  const firing = transition(aDelegation({ id: 'dg_firing', identity: '@d:hs', createdAt: NOW - 60_000 }, { sid: 'PA_d', ctx: ctx(NOW - 60_000) }), { type: 'departed', sid: 'PA_d', departure: 'leave', at: NOW - 1_000 }, ctx(NOW - 1_000)).delegation;
  // Element Call's legacy names, a user's calls (application-service mode), another dialect, and text beyond ASCII.
  const legacy = aDelegation({ id: 'dg_legacy', dialect: 'delayed_events', room: 'räum', identity: '@ü:hs', altRoom: 'legacy-room', altIdentity: '@ü:hs:DEVICE', owner: '@ü:hs', source: 'sfu_get', actions: { leave: '{"m":"leave ⚡"}', connection_lost: '{"m":"lost"}' }, createdAt: NOW - 30_000 }, { sid: 'PA_ü', ctx: ctx(NOW - 30_000) });
  const rows = [refreshed, waiting, grace, firing, legacy];
  for (let i = 0; i < BULK; i++) rows.push(aDelegation({ id: `dg_bulk_${i}`, room: `room-${i % 997}`, identity: `@user${i}:hs`, createdAt: NOW - i * 10 }, { sid: `PA_${i}`, ctx: ctx(NOW - i * 10) }));
  expect(new Set(rows.map((d) => d.state))).toEqual(new Set(['connected', 'awaiting_join', 'grace', 'firing']));
  const db = (store as unknown as { db: { exec(sql: string): void } }).db;
  db.exec('BEGIN');
  for (const d of rows) void store.insertDelegation(d, { token: `token-${d.id}`, accessToken: null }, `key-${d.id}`);
  db.exec('COMMIT');
  void store.close();
}

describe('restart from the snapshot of a graceful shutdown', () => {
  it('yields the same open delegations and schedule as a reload of the rows, and as before the restart', async () => {
    const path = join(dir, 'same.db');
    seed(path);
    const before = engineOn(new SqliteStore(path));
    await before.engine.start();
    expect(before.loaded()).toEqual({ from: 'rows' });
    const expected = held(before.engine);
    expect(expected.size).toBe(BULK + 5);
    // The settling floor moved the grace's deadline, and the firing delegation is due at once.
    expect(expected.get('dg_grace')!.d.graceDeadline).toBe(NOW + 15_000);
    expect(expected.get('dg_firing')!.due).toBeLessThanOrEqual(NOW);

    const store = (before.engine as unknown as { deps: { store: SqliteStore } }).deps.store;
    expect(await store.saveOpenSnapshot(before.engine.heldDelegations())).toBe(BULK + 5);
    await store.close();
    // What a SIGKILL after the same point leaves: the rows, and no snapshot.
    copyFileSync(path, join(dir, 'killed.db'));
    const killed = new SqliteStore(join(dir, 'killed.db'));
    (killed as unknown as { db: { exec(sql: string): void } }).db.exec('DELETE FROM open_snapshot');

    const fromSnapshot = engineOn(new SqliteStore(path));
    await fromSnapshot.engine.start();
    expect(fromSnapshot.loaded()).toEqual({ from: 'snapshot' });
    expect(held(fromSnapshot.engine)).toEqual(expected);
    // Used once: the file is gone, and the next start reads the rows.
    expect(existsSync(`${path}.open-snapshot`)).toBe(false);

    const afterKill = engineOn(killed);
    await afterKill.engine.start();
    expect(afterKill.loaded()).toEqual({ from: 'rows' });
    expect(held(afterKill.engine)).toEqual(expected);
  });

  it('ignores a snapshot the database moved past, and reads the rows', async () => {
    const path = join(dir, 'stale.db');
    expect((await seedWithSnapshot(path)).count).toBe(BULK + 5);

    // Written after the snapshot by something that does not know of it (an older daemon, an operator's tool), and
    // leaving as many delegations open as the snapshot has.
    const other = new SqliteStore(path);
    const moved = (await other.getDelegation('dg_waiting'))!;
    const later = moved.joinDeadline! + 3_600_000;
    await other.saveDelegation({ ...moved, joinDeadline: later, updatedAt: NOW });
    await other.close();

    const next = engineOn(new SqliteStore(path));
    await next.engine.start();
    expect(next.loaded()).toEqual({ from: 'rows' });
    expect(next.engine.getOpen('dg_waiting')!.joinDeadline).toBe(later);
    expect(next.engine.openCount).toBe(BULK + 5);
  });

  it('ignores a snapshot when delegations ended after it', async () => {
    const path = join(dir, 'ended.db');
    await seedWithSnapshot(path);
    const other = new SqliteStore(path);
    const revoked = transition((await other.getDelegation('dg_connected'))!, { type: 'revoke' }, { now: NOW, settings: SETTINGS, random: () => 0.5 }).delegation;
    expect(revoked.state).toBe('revoked');
    await other.saveDelegation(revoked);
    await other.close();

    const next = engineOn(new SqliteStore(path));
    await next.engine.start();
    expect(next.loaded().from).toBe('rows');
    expect(next.engine.getOpen('dg_connected')).toBeUndefined();
    expect(next.engine.openCount).toBe(BULK + 4);
  });

  it('refuses a snapshot file that is not the one its mark names, before handing out any row', async () => {
    const path = join(dir, 'swapped.db');
    const before = await seedWithSnapshot(path);
    // Same shape, another generation: a snapshot of another moment copied over this one.
    const file = `${path}.open-snapshot`;
    const other = readFileSync(file);
    other[8] = other[8]! ^ 0xff;
    writeFileSync(file, other);

    const next = engineOn(new SqliteStore(path));
    await next.engine.start();
    expect(next.loaded()).toEqual({ from: 'rows', snapshotRefused: 'the open-delegation snapshot cannot be used: written for another generation' });
    expect(held(next.engine)).toEqual(before.held);
  });
});
