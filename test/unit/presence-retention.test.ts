import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { DelegationEngine, presenceRetentionMs } from '../../src/delegations/engine.js';
import type { HomeserverClient } from '../../src/homeserver/client.js';
import { Metrics } from '../../src/metrics.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { WebhookRecord } from '../../src/store/store.js';

const SETTINGS = { reconnectGraceMs: 5_000, joinTimeoutMs: 300_000, refreshAt: 0.5, refreshMarginMs: null };
const LIMITS = { maxPerIdentity: 3, maxPerRoom: 8, homeserverRate: 1_000 };
const PARTICIPANTS = 200_000;
/** Clock time between one participant's join and the next one's. */
const STEP_MS = 100;

const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-presence-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function webhook(event: 'participant_joined' | 'participant_left', n: number, at: number): WebhookRecord {
  return { id: `${event}-${n}`, event, room: `room-${n % 500}`, identity: `@user${n}:example.org`, sid: `PA_${n}`, reason: event === 'participant_left' ? 'CLIENT_INITIATED' : null, joinedAt: at, createdAt: at, receivedAt: at };
}

/** Heap in use; after a full collection when the process runs with --expose-gc (NODE_OPTIONS=--expose-gc). */
const heapMiB = (): number => {
  (globalThis as { gc?: () => void }).gc?.();
  return Math.round((process.memoryUsage().heapUsed / 2 ** 20) * 10) / 10;
};

describe('presence retention', () => {
  it('forgets participants that left more than the retention ago, so 200,000 joining and leaving stay bounded', async () => {
    const clock = new ManualClock();
    const store = new SqliteStore(join(dir, 'presence.db'));
    const homeservers = { call: () => Promise.reject(new Error('no delegations, so no calls')), limiterBacklog: () => 0, close: async () => {} } as unknown as HomeserverClient;
    const engine = new DelegationEngine({ store, homeservers, clock, logger: pino({ level: 'silent' }), metrics: new Metrics(), settings: SETTINGS, limits: LIMITS });
    await engine.start();
    const retention = presenceRetentionMs(SETTINGS);
    expect(retention).toBeGreaterThanOrEqual(SETTINGS.joinTimeoutMs);
    // Everyone who left within one retention, plus the one present at a time.
    const bound = Math.ceil(retention / STEP_MS) + 2;
    const heapBefore = heapMiB();
    let largest = 0;

    for (let n = 0; n < PARTICIPANTS; n++) {
      await engine.processWebhook(webhook('participant_joined', n, clock.now()));
      clock.advance(STEP_MS / 2);
      await engine.processWebhook(webhook('participant_left', n, clock.now()));
      clock.advance(STEP_MS / 2);
      largest = Math.max(largest, engine.presence.size);
    }

    // A late join of a session that ended within the retention is still known to be stale.
    const last = PARTICIPANTS - 1;
    expect(engine.presence.joined(`room-${last % 500}`, `@user${last}:example.org`, `PA_${last}`)).toBe('stale');
    expect(largest).toBeGreaterThan(bound / 2);
    expect(largest).toBeLessThanOrEqual(bound);
    // Nobody has left for longer than the retention: the next event finds nothing else worth keeping.
    clock.advance(retention + 1);
    await engine.processWebhook(webhook('participant_joined', PARTICIPANTS, clock.now()));
    expect(engine.presence.size).toBe(1);
    const heapAfter = heapMiB();
    console.log(`presence: ${PARTICIPANTS} participants joined and left; largest tracked set ${largest} (bound ${bound}); heap ${heapBefore} MiB before, ${heapAfter} MiB after`);
    await engine.drain(clock.now());
    await store.close();
  });
});
