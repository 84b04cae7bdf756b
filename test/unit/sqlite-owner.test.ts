import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import type { Delegation } from '../../src/delegations/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { tempDbPath } from '../helpers/daemon.js';
import { aDelegation } from '../helpers/delegation.js';

function delegation(id: string, owner?: string): Delegation {
  return aDelegation(
    { id, dialect: 'delayed_events', identity: id, timeoutMs: 60_000, source: owner ? 'appservice' : 'api', createdAt: 1_000, ...(owner ? { owner } : {}) },
    { ctx: { now: 1_000, settings: { reconnectGraceMs: 1_000, joinTimeoutMs: 60_000, refreshAt: 0.5, refreshMarginMs: null }, random: () => 0.5 } },
  );
}

describe('the SQLite store and delegations made as a user', () => {
  it('keeps the owner across a reopen, and adds the column to a file written before it', async () => {
    const path = tempDbPath('owner');
    let store = new SqliteStore(path);
    await store.insertDelegation(delegation('dg_old'), { token: 't-old', accessToken: null }, 'k-old');
    await store.close();
    // A file from before the owner column.
    const raw = new Database(path);
    raw.exec('ALTER TABLE delegations DROP COLUMN owner');
    raw.close();

    store = new SqliteStore(path);
    await store.insertDelegation(delegation('dg_as', '@alice:hs.example'), { token: 't-as', accessToken: null }, 'k-as');
    await store.close();
    store = new SqliteStore(path);
    const loaded = new Map((await store.loadOpen()).map((d) => [d.id, d]));
    expect(loaded.get('dg_as')?.owner).toBe('@alice:hs.example');
    expect(loaded.get('dg_old')).toBeDefined();
    expect('owner' in loaded.get('dg_old')!).toBe(false);
    expect((await store.getDelegation('dg_as'))?.owner).toBe('@alice:hs.example');
    await store.close();
  });
});
