import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { HISTORY_RETENTION_MS } from '../../src/store/store.js';

describe('SQLite history lines (issue 18)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-history-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps each delegation to its last lines, drops lines past the retention, and survives reopening', async () => {
    const path = join(dir, 'h.db');
    let store = new SqliteStore(path);
    const t0 = 1_000_000_000_000;
    await store.appendHistory([{ id: 'dg_old', entry: { at: t0, what: 'long ago', state: 'connected' } }], 5);
    const lines = Array.from({ length: 8 }, (_, i) => ({ id: i % 2 ? 'dg_b' : 'dg_a', entry: { at: t0 + HISTORY_RETENTION_MS + i, what: `line ${i}`, state: 'connected' as const } }));
    await store.appendHistory(lines.slice(0, 3), 3);
    await store.appendHistory(lines.slice(3), 3);
    expect((await store.historyOf('dg_a')).map((e) => e.what)).toEqual(['line 2', 'line 4', 'line 6']);
    expect((await store.historyOf('dg_b')).map((e) => e.what)).toEqual(['line 3', 'line 5', 'line 7']);
    expect(await store.historyOf('dg_old')).toEqual([]);
    await store.close();
    store = new SqliteStore(path);
    expect(await store.historyOf('dg_a')).toEqual([2, 4, 6].map((i) => ({ at: t0 + HISTORY_RETENTION_MS + i, what: `line ${i}`, state: 'connected' })));
    await store.close();
  });
});
