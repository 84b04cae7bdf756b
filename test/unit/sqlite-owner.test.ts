import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { registerDelegation } from '../../src/delegations/machine.js';
import type { Delegation } from '../../src/delegations/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { tempDbPath } from '../helpers/daemon.js';

function delegation(id: string, owner?: string): Delegation {
  return registerDelegation(
    {
      id,
      dialect: 'delayed_events',
      homeserver: 'https://hs.example',
      room: 'room',
      identity: id,
      altIdentity: null,
      altRoom: null,
      sid: null,
      actions: { leave: 'leave', connection_lost: 'connection_lost' },
      timeoutMs: 60_000,
      source: owner ? 'appservice' : 'api',
      createdAt: 1_000,
      ...(owner ? { owner } : {}),
    },
    { now: 1_000, settings: { reconnectGraceMs: 1_000, joinTimeoutMs: 60_000, refreshAt: 0.5, refreshMarginMs: null }, random: () => 0.5 },
    null,
  ).delegation;
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
