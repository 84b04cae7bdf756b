import { Type, type Static } from 'typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { matrixError, missingToken, notFound } from '../errors.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { DELEGATION_STATES } from '../delegations/model.js';
import type { Store } from '../store/store.js';
import { bearerToken, isAdminToken } from './auth.js';
import { publicView } from './delegations.js';

const ListQuery = Type.Object(
  {
    room: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
    identity: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
    state: Type.Optional(Type.Union(DELEGATION_STATES.map((s) => Type.Literal(s)))),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  },
  { additionalProperties: false },
);
const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, { additionalProperties: false });

function requireAdmin(req: FastifyRequest, adminToken: string): void {
  const presented = bearerToken(req);
  if (!presented) throw missingToken('The admin token is required as a Bearer token');
  if (!isAdminToken(presented, adminToken)) throw matrixError('M_FORBIDDEN', 'Not the admin token');
}

/** The admin API; registered only when SIDECAR_ADMIN_TOKEN is set. */
export async function adminRoutes(
  app: FastifyInstance,
  deps: { adminToken: string; engine: DelegationEngine; store: Store; /** `standalone`, or the homeserver we are the application service of. */ mode: { kind: 'standalone' } | { kind: 'appservice'; server_name: string } },
): Promise<void> {
  app.addHook('onRequest', async (req) => requireAdmin(req, deps.adminToken));

  app.get<{ Querystring: Static<typeof ListQuery> }>('/v1/admin/delegations', { schema: { querystring: ListQuery } }, async (req) => {
    const q = req.query;
    const limit = q.limit === undefined ? 100 : Number(q.limit);
    if (limit < 1 || limit > 1000) throw matrixError('M_INVALID_PARAM', 'limit must be between 1 and 1000');
    const page = await deps.store.listDelegations({
      limit,
      ...(q.room !== undefined ? { room: q.room } : {}),
      ...(q.identity !== undefined ? { identity: q.identity } : {}),
      ...(q.state !== undefined ? { state: q.state } : {}),
      ...(q.cursor !== undefined ? { cursor: q.cursor } : {}),
    });
    // Open delegations change faster than their stored rows; show the live version.
    const items = page.items.map((d) => publicView(deps.engine.getOpen(d.id) ?? d));
    return { delegations: items, next_cursor: page.nextCursor };
  });

  app.get('/v1/admin/stats', async () => ({ ...deps.engine.stats(), mode: deps.mode }));

  app.get<{ Params: Static<typeof IdParams> }>('/v1/admin/delegations/:id', { schema: { params: IdParams } }, async (req) => {
    const d = await deps.engine.get(req.params.id);
    if (!d) throw notFound();
    return { ...publicView(d), history: await deps.engine.history(d.id) };
  });

  app.delete<{ Params: Static<typeof IdParams> }>('/v1/admin/delegations/:id', { schema: { params: IdParams } }, async (req) => {
    const d = await deps.engine.revoke(req.params.id);
    if (!d) throw notFound();
    return publicView(d);
  });
}
