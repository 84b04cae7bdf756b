import { afterEach, describe, expect, it, vi } from 'vitest';
import type { HistoryLine, WebhookRecord } from '../../src/store/store.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { tempDbPath } from '../helpers/daemon.js';

function left(id: string): WebhookRecord {
  return { id, event: 'participant_left', room: 'room', identity: 'who', sid: 'PA_1', reason: 'SIGNAL_CLOSE', joinedAt: null, createdAt: 2_000, receivedAt: 2_000 };
}

const line = (id: string, what: string): HistoryLine => ({ id, entry: { at: Date.now(), what, state: 'grace' } });

/** Resolves to whether `p` has settled (fulfilled or rejected) by the time the microtasks queued now have run. */
async function settledNow(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 5; i++) await Promise.resolve();
  return settled;
}

// SQLite holds history lines back for the next commit, so that a webhook batch's lines cost no commit of their own.
// setTimeout is frozen here: the only ways a line can be written are the batch's commit, a read, or the delay.
describe('SqliteStore history lines ride in the next webhook commit', () => {
  afterEach(() => vi.useRealTimers());

  it('writes waiting lines with the next batch of webhooks, and on their own after the delay when none comes', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const store = new SqliteStore(tempDbPath('history-rides'));
    const first = store.appendHistory([line('dg_a', 'one'), line('dg_b', 'two')], 50);
    // Held back past the turn in which it was asked for (a write of its own would be made there).
    await new Promise((resolve) => setImmediate(resolve));
    expect(await settledNow(first)).toBe(false);
    expect(await store.recordApplying([left('EV_1')], () => undefined)).toEqual([true]);
    expect(await settledNow(first)).toBe(true);
    await first;

    const second = store.appendHistory([line('dg_a', 'three')], 50);
    expect(await settledNow(second)).toBe(false);
    vi.advanceTimersByTime(25);
    await second;
    vi.useRealTimers();
    expect((await store.historyOf('dg_a')).map((e) => e.what)).toEqual(['one', 'three']);
    expect((await store.historyOf('dg_b')).map((e) => e.what)).toEqual(['two']);
    await store.close();
  });

  it('a read writes waiting lines first', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const store = new SqliteStore(tempDbPath('history-read'));
    const written = store.appendHistory([line('dg_a', 'one')], 50);
    expect((await store.historyOf('dg_a')).map((e) => e.what)).toEqual(['one']);
    await written;
    await store.close();
  });

  it('lines that cannot be written fail alone: the webhooks they rode with are recorded and their changes kept', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const store = new SqliteStore(tempDbPath('history-fails'));
    // `what` is NOT NULL in the history table.
    const broken = store.appendHistory([line('dg_a', 'kept?'), { id: 'dg_a', entry: { at: 1, what: null as unknown as string, state: 'grace' } }], 50);
    broken.catch(() => undefined);
    expect(await store.recordApplying([left('EV_1'), left('EV_2')], () => undefined)).toEqual([true, true]);
    await expect(broken).rejects.toThrow();
    // Both records are kept (a retry of either is a duplicate), and none of the broken batch's lines is.
    expect(await store.recordApplying([left('EV_1'), left('EV_2')], () => undefined)).toEqual([false, false]);
    vi.useRealTimers();
    expect(await store.historyOf('dg_a')).toEqual([]);
    await store.close();
  });
});
