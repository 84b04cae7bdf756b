import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Config } from '../config.js';
import { normaliseBaseUrl } from '../config.js';
import { badJson, forbidden, invalidParam, missingToken, notFound, unknownToken } from '../errors.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { DELEGATION_STATES, SOURCE_ROUTES, type Delegation, type DelegationState } from '../delegations/model.js';
import { checkHomeserverUrl } from '../homeserver/address-guard.js';
import { LiveKitAuthError, type LiveKitAuth, type Participant } from '../livekit/auth.js';
import { bearerToken, isAdminToken } from './auth.js';
import { Nullable, errorResponses } from './responses.js';

const ActionName = Type.String({ minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9._~:-]+$' });

const DelegationBody = Type.Object(
  {
    homeserver: Type.String({ minLength: 1, maxLength: 2048 }),
    dialect: Type.Union([Type.Literal('futures'), Type.Literal('delayed_events')]),
    token: Type.String({ minLength: 1, maxLength: 4096 }),
    timeout_ms: Type.Integer(),
    actions: Type.Optional(Type.Object({ leave: Type.Optional(ActionName), connection_lost: Type.Optional(ActionName) }, { additionalProperties: false })),
    access_token: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
  },
  { additionalProperties: false },
);

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, { additionalProperties: false });

const State = Type.Unsafe<DelegationState>({ type: 'string', enum: [...DELEGATION_STATES] });

/** What a participant or an admin sees of a delegation: never its token. */
export const DelegationView = Type.Object({
  delegation_id: Type.String(),
  state: State,
  dialect: Type.Union([Type.Literal('futures'), Type.Literal('delayed_events')]),
  /** The route the delegation arrived through (e.g. `/get_token`). */
  route: Type.String(),
  timeout_ms: Type.Integer(),
  room: Type.String(),
  identity: Type.String(),
  created_at: Type.Number(),
  expires_at: Type.Number(),
  next_refresh_at: Nullable(Type.Number()),
  pending_action: Nullable(Type.Union([Type.Literal('leave'), Type.Literal('connection_lost')])),
  outcome: Nullable(Type.String()),
});

const Registered = Type.Object({
  delegation_id: Type.String(),
  state: State,
  room: Type.String(),
  identity: Type.String(),
  expires_at: Type.Number(),
});

export function publicView(d: Delegation): Static<typeof DelegationView> {
  return {
    delegation_id: d.id,
    state: d.state,
    dialect: d.dialect,
    route: SOURCE_ROUTES[d.source] ?? d.source,
    timeout_ms: d.timeoutMs,
    room: d.room,
    identity: d.identity,
    created_at: d.createdAt,
    expires_at: d.expiresAt,
    next_refresh_at: d.nextRefreshAt,
    pending_action: d.pendingAction,
    outcome: d.outcome,
  };
}

export async function delegationRoutes(
  app: FastifyInstance,
  deps: { config: Config; engine: DelegationEngine; auth: LiveKitAuth; limitParticipant: (req: FastifyRequest, identity: string, room: string) => Promise<void> },
): Promise<void> {
  // Only JSON bodies reach the API; without this Fastify would hand text/plain bodies to the schema as strings.
  app.removeContentTypeParser('text/plain');
  const { config, engine, auth } = deps;

  const participantOf = async (req: FastifyRequest): Promise<Participant> => {
    const jwt = bearerToken(req);
    if (!jwt) throw missingToken('A LiveKit access token is required as a Bearer token');
    try {
      return await auth.verifyParticipant(jwt);
    } catch (err) {
      if (err instanceof LiveKitAuthError) throw unknownToken(err.message);
      throw err;
    }
  };

  /** The delegation if the caller is its participant or the admin; otherwise 404 (its existence is not revealed). */
  const authorisedDelegation = async (req: FastifyRequest, id: string): Promise<Delegation> => {
    const presented = bearerToken(req);
    if (!presented) throw missingToken();
    const admin = isAdminToken(presented, config.adminToken);
    const participant = admin ? null : await participantOf(req);
    const d = await engine.get(id);
    if (!d) throw notFound();
    if (!admin && (d.identity !== participant!.identity || d.room !== participant!.room)) throw notFound();
    return d;
  };

  const routes = app.withTypeProvider<TypeBoxTypeProvider>();

  routes.post('/v1/delegations', { schema: { body: DelegationBody, response: { 200: Registered, 201: Registered, ...errorResponses } } }, async (req, reply) => {
    const participant = await participantOf(req);
    await deps.limitParticipant(req, participant.identity, participant.room);
    const body = req.body;
    if (body.dialect === 'delayed_events' && body.actions !== undefined) throw badJson('actions are only for the futures dialect');
    if (body.dialect === 'futures' && body.access_token !== undefined) throw badJson('access_token is only for the delayed_events dialect');
    if (body.timeout_ms < config.minTimeoutMs || body.timeout_ms > config.maxTimeoutMs) {
      throw invalidParam(`timeout_ms must be between ${config.minTimeoutMs} and ${config.maxTimeoutMs}`);
    }
    const homeserver = normaliseBaseUrl(body.homeserver);
    if (!homeserver) throw invalidParam('homeserver must be an http(s) URL without credentials, query or fragment');
    const refused = checkHomeserverUrl(homeserver, { allow: config.homeservers, allowPrivateAddresses: config.allowPrivateAddresses, allowHttp: config.allowHttp });
    if (refused) throw forbidden(`homeserver refused: ${refused}`);
    const { delegation, created } = await engine.register({
      dialect: body.dialect,
      homeserver,
      token: body.token,
      accessToken: body.access_token ?? null,
      timeoutMs: body.timeout_ms,
      actions: { leave: body.actions?.leave ?? 'leave', connection_lost: body.actions?.connection_lost ?? 'connection_lost' },
      room: participant.room,
      identity: participant.identity,
      source: 'api',
      client: req.ip,
    });
    const view = publicView(delegation);
    return reply.status(created ? 201 : 200).send({ delegation_id: view.delegation_id, state: view.state, room: view.room, identity: view.identity, expires_at: view.expires_at });
  });

  routes.get('/v1/delegations/:id', { schema: { params: IdParams, response: { 200: DelegationView, ...errorResponses } } }, async (req) => {
    return publicView(await authorisedDelegation(req, req.params.id));
  });

  routes.delete('/v1/delegations/:id', { schema: { params: IdParams, response: { 200: DelegationView, ...errorResponses } } }, async (req) => {
    const d = await authorisedDelegation(req, req.params.id);
    const after = (await engine.revoke(d.id)) ?? d;
    return publicView(after);
  });
}
