import { describe, expect, it } from 'vitest';
import type { Delegation } from '../../src/delegations/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { tempDbPath } from '../helpers/daemon.js';
import { aDelegation } from '../helpers/delegation.js';

const RETENTION_MS = 60_000;

function delegation(id: string): Delegation {
  return aDelegation(
    { id, dialect: 'delayed_events', identity: id, timeoutMs: 60_000, source: 'api', createdAt: 1_000 },
    { ctx: { now: 1_000, settings: { reconnectGraceMs: 1_000, joinTimeoutMs: 60_000, refreshAt: 0.5, refreshMarginMs: null }, random: () => 0.5 } },
  );
}

// The SQLite file kept every delegation that ever ended; like the Redis store it now deletes one the retention after
// it ended, a few at each later end, so the file stays bounded by the recent traffic.
describe('SqliteStore deletes ended delegations after the retention', () => {
  it('keeps an ended delegation within the retention, deletes it (and its token key) with a later end past it, and never an open one', async () => {
    const store = new SqliteStore(tempDbPath('prune-ended'), { retentionMs: RETENTION_MS });
    const [early, late, open, last] = ['dg_early', 'dg_late', 'dg_open', 'dg_last'].map(delegation) as [Delegation, Delegation, Delegation, Delegation];
    for (const d of [early, late, open, last]) await store.insertDelegation(d, { token: `t-${d.id}`, accessToken: null }, `k-${d.id}`);
    await store.appendHistory([{ id: early.id, entry: { at: 2_000, what: 'registered', state: 'awaiting_join' } }], 50);

    await store.saveDelegation({ ...early, state: 'fired', updatedAt: 2_000, outcome: 'sent' });
    await store.saveDelegation({ ...late, state: 'revoked', updatedAt: 2_000 + RETENTION_MS });
    // Within the retention (by the later end's clock, exactly at it) the first is still read and listed.
    expect((await store.getDelegation(early.id))?.state).toBe('fired');
    expect((await store.listDelegations({ limit: 10 })).items.map((d) => d.id)).toContain(early.id);

    await store.saveDelegation({ ...last, state: 'expired', updatedAt: 2_001 + RETENTION_MS });
    // The end's own history line, as the engine writes one, expires the older lines.
    await store.appendHistory([{ id: last.id, entry: { at: 2_001 + RETENTION_MS, what: 'expired', state: 'expired' } }], 50);
    expect(await store.getDelegation(early.id)).toBeUndefined();
    expect(await store.findByTokenKey(`k-${early.id}`)).toBeUndefined();
    expect(await store.historyOf(early.id)).toEqual([]);
    expect((await store.listDelegations({ limit: 10 })).items.map((d) => d.id).sort()).toEqual([last.id, late.id, open.id].sort());
    // An open delegation is never deleted, however old its last change.
    expect((await store.loadOpen()).map((d) => d.id)).toEqual([open.id]);
    await store.close();
  });
});
