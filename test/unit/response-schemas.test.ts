import { readFileSync } from 'node:fs';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import type { DelegationEngine } from '../../src/delegations/engine.js';
import type { Delegation } from '../../src/delegations/model.js';
import { adminRoutes } from '../../src/http/admin.js';
import { healthRoutes } from '../../src/http/health.js';
import type { Metrics } from '../../src/metrics.js';
import type { Store } from '../../src/store/store.js';
import { aDelegation } from '../helpers/delegation.js';

const ADMIN = 'admin-token-for-response-schemas';
const auth = { authorization: `Bearer ${ADMIN}` };

const delegation: Delegation = aDelegation({ id: 'd-1', dialect: 'delayed_events', room: 'room-1', identity: 'user-1', timeoutMs: 10_000 }, { sid: 'PA_1' });

/**
 * An engine whose answers carry fields the API never declared (as a careless change inside the engine would add
 * them): the response schemas must keep them off the wire.
 */
const leakyEngine = {
  stats: () => ({ open: 1, by_state: { connected: 1 }, refreshes_last_minute: 2, actions_last_minute: 3, smallest_expiry_margin_seconds: null, delay_id: 'syt_secret' }),
  get: async () => delegation,
  getOpen: () => delegation,
  history: async () => [{ at: 5, what: 'registered', state: 'connected', token: 'syt_secret' }],
  revoke: async () => delegation,
} as unknown as DelegationEngine;

let app: FastifyInstance | null = null;
afterEach(async () => {
  await app?.close();
  app = null;
});

async function adminApp(): Promise<FastifyInstance> {
  app = Fastify();
  await app.register(adminRoutes, { adminToken: ADMIN, engine: leakyEngine, store: {} as Store, mode: { kind: 'appservice', server_name: 'hs.example' } });
  return app;
}

/** The fields `public/console/console.js` reads from an object it names `name` (e.g. `stats.open`). */
function consoleReads(name: string): string[] {
  const source = readFileSync(new URL('../../public/console/console.js', import.meta.url), 'utf8');
  return [...new Set([...source.matchAll(new RegExp(`\\b${name}\\??\\.([a-z_]+)`, 'g'))].map((m) => m[1]!))];
}

describe('response schemas', () => {
  it('keeps a field the engine adds to the admin stats off the wire, and every field the console reads on it', async () => {
    const res = await (await adminApp()).inject({ method: 'GET', url: '/v1/admin/stats', headers: auth });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(res.body).not.toContain('syt_secret');
    expect(body).not.toHaveProperty('delay_id');
    const reads = consoleReads('stats');
    expect(reads).toEqual(expect.arrayContaining(['open', 'by_state', 'mode', 'smallest_expiry_margin_seconds']));
    for (const field of reads) expect(body, `console reads stats.${field}`).toHaveProperty(field);
    expect(body.mode).toEqual({ kind: 'appservice', server_name: 'hs.example' });
    expect(body.by_state).toEqual({ connected: 1 });
  });

  it('answers a delegation with its history lines as the console reads them, and nothing else', async () => {
    const res = await (await adminApp()).inject({ method: 'GET', url: '/v1/admin/delegations/d-1', headers: auth });
    expect(res.statusCode).toBe(200);
    expect(res.body).not.toContain('syt_secret');
    const body = res.json();
    expect(body.history).toEqual([{ at: 5, what: 'registered', state: 'connected' }]);
    for (const field of consoleReads('h').filter((f) => ['at', 'what', 'state'].includes(f))) expect(body.history[0]).toHaveProperty(field);
    // What a client of the delegation API reads (client/sidecar.ts and the console's table).
    expect(Object.keys(body).sort()).toEqual(
      ['created_at', 'delegation_id', 'dialect', 'expires_at', 'history', 'identity', 'next_refresh_at', 'outcome', 'pending_action', 'room', 'route', 'state', 'timeout_ms'].sort(),
    );
  });

  it('answers /readyz 503 with its problems through the declared schema', async () => {
    app = Fastify();
    const store = { ping: async () => { throw new Error('down'); } } as unknown as Store;
    await app.register(healthRoutes, { store, metrics: {} as Metrics, isShuttingDown: () => true, isStarted: () => true });
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(503);
    expect(res.json()).toEqual({ status: 'unavailable', problems: ['shutting down', 'store unreachable'] });
  });
});
