import { describe, expect, it } from 'vitest';
import type { Delegation } from '../../src/delegations/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { WebhookRecord } from '../../src/store/store.js';
import { tempDbPath } from '../helpers/daemon.js';
import { aDelegation } from '../helpers/delegation.js';

function delegation(id: string): Delegation {
  return aDelegation(
    { id, dialect: 'delayed_events', identity: id, timeoutMs: 60_000, createdAt: 1_000 },
    { ctx: { now: 1_000, settings: { reconnectGraceMs: 1_000, joinTimeoutMs: 60_000, refreshAt: 0.5, refreshMarginMs: null }, random: () => 0.5 } },
  );
}

function left(id: string, identity: string): WebhookRecord {
  return { id, event: 'participant_left', room: 'room', identity, sid: 'PA_1', reason: 'SIGNAL_CLOSE', joinedAt: null, createdAt: 2_000, receivedAt: 2_000 };
}

async function opened(name: string): Promise<SqliteStore> {
  const store = new SqliteStore(tempDbPath(name));
  for (const id of ['dg_a', 'dg_b']) await store.insertDelegation(delegation(id), { token: `t-${id}`, accessToken: null }, `k-${id}`);
  return store;
}

describe('SqliteStore.recordApplying: a webhook record and the state change it causes in one commit', () => {
  it('applies new records in order, stores their writes with them, settles the writes after the commit and leaves nothing to replay', async () => {
    const store = await opened('applying');
    const applied: string[] = [];
    const saves: Array<Promise<void>> = [];
    let settled = 0;
    const recording = store.recordApplying([left('EV_1', 'dg_a'), left('EV_2', 'dg_b')], (rec) => {
      applied.push(rec.id);
      const d = delegation(rec.identity!);
      const save = store.saveDelegation({ ...d, state: 'grace', graceDeadline: 3_000, updatedAt: 2_000 });
      void save.then(() => settled++);
      saves.push(save);
    });
    expect(settled).toBe(0);
    expect(await recording).toEqual([true, true]);
    await Promise.all(saves);
    expect(settled).toBe(2);
    expect(applied).toEqual(['EV_1', 'EV_2']);
    expect((await store.getDelegation('dg_a'))?.state).toBe('grace');
    expect((await store.getDelegation('dg_b'))?.graceDeadline).toBe(3_000);
    expect(await store.pendingWebhooks()).toEqual([]);

    // A duplicate is answered as one and not applied again.
    applied.length = 0;
    expect(await store.recordApplying([left('EV_1', 'dg_a'), left('EV_3', 'dg_a')], (rec) => applied.push(rec.id))).toEqual([false, true]);
    expect(applied).toEqual(['EV_3']);
    await store.close();
  });

  it('keeps nothing of the batch when one of its writes fails: records and writes go together', async () => {
    const store = await opened('applying-fails');
    const saves: Array<Promise<void>> = [];
    const recording = store.recordApplying([left('EV_1', 'dg_a'), left('EV_2', 'dg_b')], (rec) => {
      const d = delegation(rec.identity!);
      // The second record's write breaks a NOT NULL column.
      const state = rec.id === 'EV_2' ? (null as unknown as Delegation['state']) : 'grace';
      saves.push(store.saveDelegation({ ...d, state, updatedAt: 2_000 }));
    });
    await expect(recording).rejects.toThrow();
    for (const save of saves) await expect(save).rejects.toThrow();
    expect((await store.getDelegation('dg_a'))?.state).toBe('awaiting_join');
    // Neither record was kept: LiveKit's retry of either is new.
    expect(await store.recordWebhooks([left('EV_1', 'dg_a'), left('EV_2', 'dg_b')])).toEqual([true, true]);
    await store.close();
  });
});
