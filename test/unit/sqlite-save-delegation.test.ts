import { describe, expect, it } from 'vitest';
import type { Delegation } from '../../src/delegations/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { tempDbPath } from '../helpers/daemon.js';
import { aDelegation } from '../helpers/delegation.js';

function delegation(id: string): Delegation {
  return aDelegation(
    { id, dialect: 'delayed_events', identity: id, timeoutMs: 60_000, source: 'api', createdAt: 1_000 },
    { ctx: { now: 1_000, settings: { reconnectGraceMs: 1_000, joinTimeoutMs: 60_000, refreshAt: 0.5, refreshMarginMs: null }, random: () => 0.5 } },
  );
}

const openIds = async (store: SqliteStore): Promise<string[]> => (await store.loadOpen()).map((d) => d.id).sort();

// saveDelegation takes a shorter statement while a delegation stays open (it leaves the open index alone); every
// column must still be written, and the open set must follow the state whichever statement ran.
describe('SqliteStore.saveDelegation', () => {
  it('writes every mutable column of a delegation that stays open, and drops it from the open set when it ends', async () => {
    const path = tempDbPath('save-delegation');
    let store = new SqliteStore(path);
    const a = delegation('dg_a');
    const b = delegation('dg_b');
    await store.insertDelegation(a, { token: 't-a', accessToken: null }, 'k-a');
    await store.insertDelegation(b, { token: 't-b', accessToken: null }, 'k-b');

    const grace: Delegation = { ...a, sid: 'PA_1', state: 'grace', updatedAt: 2_000, expiresAt: 61_000, lastRefreshAt: 1_500, nextRefreshAt: 30_000, refreshFailures: 2, joinDeadline: null, graceDeadline: 3_000, disconnectedAt: 2_000, pendingAction: 'connection_lost', nextActionAt: 3_000, actionFailures: 1, outcome: null };
    await store.saveDelegation(grace);
    expect(await store.getDelegation('dg_a')).toEqual(grace);
    expect(await openIds(store)).toEqual(['dg_a', 'dg_b']);

    const fired: Delegation = { ...grace, state: 'fired', updatedAt: 4_000, pendingAction: null, nextActionAt: null, outcome: 'sent' };
    await store.saveDelegation(fired);
    expect(await store.getDelegation('dg_a')).toEqual(fired);
    expect(await openIds(store)).toEqual(['dg_b']);
    await store.close();

    // The same after a reopen: what a restart reloads.
    store = new SqliteStore(path);
    expect(await openIds(store)).toEqual(['dg_b']);
    // A save of an open state onto a closed row is written in full, open flag included, as before.
    await store.saveDelegation({ ...fired, state: 'connected', outcome: null });
    expect(await openIds(store)).toEqual(['dg_a', 'dg_b']);
    expect((await store.getDelegation('dg_a'))?.state).toBe('connected');
    // A delegation the store does not hold stays absent.
    await store.saveDelegation(delegation('dg_missing'));
    expect(await store.getDelegation('dg_missing')).toBeUndefined();
    await store.close();
  });
});
