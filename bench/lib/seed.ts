import type Database from 'better-sqlite3';
import { tokenKeyOf } from '../../src/delegations/model.js';
import type { Delegation, Dialect } from '../../src/delegations/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { refreshDelay } from '../../src/delegations/machine.js';
import { DEFAULT_REFRESH_MARGIN_MS } from '../../src/config.js';

/** The daemon's defaults: the seeded schedule is the one it would have drawn. */
const DEFAULT_SETTINGS = { reconnectGraceMs: 10_000, joinTimeoutMs: 300_000, refreshAt: 0.5, refreshMarginMs: DEFAULT_REFRESH_MARGIN_MS };

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Random-looking base64url text of `n` characters; not for secrets (seeding a million with node:crypto is slow). */
function fakeRandom(n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += B64URL[(Math.random() * 64) | 0];
  return s;
}

/** Participant `i` of a seeded population: the same names whichever process derives them. */
export interface SeededParticipant {
  room: string;
  identity: string;
  sid: string;
}

/** Element Call sized names: a Matrix room id, `@user:server:DEVICE`, LiveKit's `PA_` sids. */
export function participantAt(i: number, perRoom: number, prefix = ''): SeededParticipant {
  const room = `!${prefix}r${String(Math.floor(i / perRoom)).padStart(8, '0')}AbCdEfGh:matrix.example.org`;
  const n = String(i).padStart(8, '0');
  return { room, identity: `@${prefix}user${n}:matrix.example.org:DEV${n}`, sid: `PA_${prefix}s${n}xYz` };
}

export interface SeedOptions {
  /** How many delegations, all `connected`. */
  count: number;
  /** Participants per room. */
  perRoom: number;
  homeserver: string;
  dialect?: Dialect;
  timeoutMs?: number;
  /** The future token / delay id of delegation `i`; random 32-byte tokens by default. */
  tokenAt?: (i: number) => string;
  /** The clock the seeded times are relative to (ms). */
  now?: number;
  prefix?: string;
}

/**
 * Writes `count` open delegations straight into a SQLite store through `SqliteStore.insertDelegation` (the daemon's
 * own row mapping), in one transaction. Each looks like a participant connected for a while: last refreshed within
 * the last 40 % of its timeout, next refresh drawn as the engine would, so nothing is due when a daemon loads them.
 */
export async function seedDelegations(path: string, opts: SeedOptions): Promise<void> {
  const store = new SqliteStore(path);
  const db = (store as unknown as { db: Database.Database }).db;
  const timeoutMs = opts.timeoutMs ?? 2 * 3600_000;
  const dialect = opts.dialect ?? 'futures';
  const now = opts.now ?? Date.now();
  const tokenAt = opts.tokenAt ?? (() => fakeRandom(43));
  const BATCH = 50_000;
  // Seeding only: a page cache large enough for the indexes' random inserts (the daemon keeps SQLite's default).
  db.pragma('cache_size = -524288');
  db.pragma('synchronous = OFF');
  try {
    for (let start = 0; start < opts.count; start += BATCH) {
      db.exec('BEGIN');
      const writes: Array<Promise<void>> = [];
      for (let i = start; i < Math.min(opts.count, start + BATCH); i++) {
        const p = participantAt(i, opts.perRoom, opts.prefix);
        const token = tokenAt(i);
        const lastRefreshAt = now - Math.floor(Math.random() * 0.4 * timeoutMs);
        const d: Delegation = {
          id: `dg_${fakeRandom(16)}`,
          dialect,
          homeserver: opts.homeserver,
          room: p.room,
          identity: p.identity,
          altIdentity: null,
          altRoom: null,
          sid: p.sid,
          actions: { leave: 'leave', connection_lost: 'connection_lost' },
          timeoutMs,
          state: 'connected',
          source: 'api',
          createdAt: lastRefreshAt - timeoutMs,
          updatedAt: lastRefreshAt,
          expiresAt: lastRefreshAt + timeoutMs,
          lastRefreshAt,
          nextRefreshAt: lastRefreshAt + refreshDelay(timeoutMs, { now, settings: DEFAULT_SETTINGS, random: Math.random }),
          refreshFailures: 0,
          joinDeadline: null,
          graceDeadline: null,
          disconnectedAt: null,
          pendingAction: null,
          nextActionAt: null,
          actionFailures: 0,
          outcome: null,
        };
        // better-sqlite3 is synchronous: the row is written before this returns its promise.
        writes.push(store.insertDelegation(d, { token, accessToken: null }, tokenKeyOf(dialect, opts.homeserver, token)));
      }
      await Promise.all(writes);
      db.exec('COMMIT');
    }
  } finally {
    if (db.inTransaction) db.exec('ROLLBACK');
    await store.close();
  }
}
