import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { matrixError, missingToken, notFound } from '../errors.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { DELEGATION_STATES } from '../delegations/model.js';
import type { Store } from '../store/store.js';
import { bearerToken, isAdminToken } from './auth.js';
import { DelegationView, publicView } from './delegations.js';
import { Nullable, errorResponses } from './responses.js';

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

const DelegationPage = Type.Object({ delegations: Type.Array(DelegationView), next_cursor: Nullable(Type.String()) });
const Mode = Type.Union([
  Type.Object({ kind: Type.Literal('standalone') }),
  Type.Object({ kind: Type.Literal('appservice'), server_name: Type.String() }),
]);
/** What the console's totals panel reads (`public/console/console.js` renderStats). */
const Stats = Type.Object({
  open: Type.Integer(),
  /** Open delegations per state; a state with none is absent. */
  by_state: Type.Record(Type.String(), Type.Integer()),
  refreshes_last_minute: Type.Integer(),
  actions_last_minute: Type.Integer(),
  smallest_expiry_margin_seconds: Nullable(Type.Number()),
  mode: Mode,
});
const HistoryLine = Type.Object({ at: Type.Number(), what: Type.String(), state: Type.String() });
const DelegationDetail = Type.Object({ ...DelegationView.properties, history: Type.Array(HistoryLine) });

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
  const routes = app.withTypeProvider<TypeBoxTypeProvider>();

  routes.get('/v1/admin/delegations', { schema: { querystring: ListQuery, response: { 200: DelegationPage, ...errorResponses } } }, async (req) => {
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

  routes.get('/v1/admin/stats', { schema: { response: { 200: Stats, ...errorResponses } } }, async () => ({ ...deps.engine.stats(), mode: deps.mode }));

  routes.get('/v1/admin/delegations/:id', { schema: { params: IdParams, response: { 200: DelegationDetail, ...errorResponses } } }, async (req) => {
    const d = await deps.engine.get(req.params.id);
    if (!d) throw notFound();
    return { ...publicView(d), history: await deps.engine.history(d.id) };
  });

  routes.delete('/v1/admin/delegations/:id', { schema: { params: IdParams, response: { 200: DelegationView, ...errorResponses } } }, async (req) => {
    const d = await deps.engine.revoke(req.params.id);
    if (!d) throw notFound();
    return publicView(d);
  });
}
