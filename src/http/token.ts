/**
 * lk-jwt-service's token routes, as Element Call calls them today (contract section 7, facts sections 1.2, 1.3, 2,
 * 3): `POST /get_token` (subscribers; hashed identity) and the legacy `POST /sfu/get` (publishers; raw
 * `<user>:<device>` identity). Both verify the OpenID token, mint a LiveKit token, create the room for full-access
 * users, and delegate the participant's delayed leave when the delay fields are present, through the same engine
 * path as `/delegate_delayed_leave`. Checks run in lk-jwt-service's order with its error texts.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { Type } from 'typebox';
import { LEGACY_SLOT_ID, legacyIdentity, legacyRoomName, liveKitIdentity, liveKitRoomName } from '../compat/livekit-names.js';
import { CREATE_ROOM_OPTIONS, mintLiveKitToken, type RoomCreator } from '../compat/livekit-token.js';
import type { MatrixResolver } from '../compat/matrix-resolver.js';
import { isServerNameAllowed, openIdUser, usableCsApi } from '../compat/matrix-user.js';
import { GET_TOKEN_REQUEST, SFU_GET_REQUEST, decodeLkJwtBody, type FieldType, type GetTokenRequest, type SfuGetRequest } from '../compat/request.js';
import type { Config } from '../config.js';
import type { DelegationEngine } from '../delegations/engine.js';
import type { DelegationSource } from '../delegations/model.js';
import { MatrixError, badJson } from '../errors.js';
import { liveKitFailure } from '../livekit/failure.js';
import type { Metrics } from '../metrics.js';
import { lkJwtMethods, lkJwtScope } from './lk-jwt-scope.js';
import { errorResponses } from './responses.js';

const GET_TOKEN_PATH = '/get_token';
const SFU_GET_PATH = '/sfu/get';

/** `route` label of `tokens_issued_total`. */
type TokenRoute = 'get_token' | 'sfu_get';
/**
 * `outcome` label of `tokens_issued_total`. `delegation_refused`: the delegation the request carried was refused
 * (admission control, or a delay already delegated by another participant): `/get_token` issued the token anyway,
 * `/sfu/get` answered 400 so that Element Call asks again without the delay fields.
 */
type TokenOutcome = 'full_access' | 'restricted' | 'delegation_refused' | 'refused' | 'failed';

export interface TokenDeps {
  config: Config;
  engine: DelegationEngine;
  resolver: MatrixResolver;
  rooms: RoomCreator;
  metrics: Metrics;
  logger: Logger;
  isShuttingDown: () => boolean;
}

const OpenIdToken = Type.Object(
  { access_token: Type.String(), token_type: Type.String(), matrix_server_name: Type.String(), expires_in: Type.Integer() },
  { additionalProperties: false },
);
const DelayFields = { delay_id: Type.String(), delay_timeout: Type.Integer(), delay_cs_api_url: Type.String() };
/** What the handler receives: the body as lk-jwt-service decodes it, absent and null values made zero values. */
const GetTokenBody = Type.Object(
  {
    room_id: Type.String(),
    slot_id: Type.String(),
    openid_token: OpenIdToken,
    member: Type.Object({ id: Type.String(), claimed_user_id: Type.String(), claimed_device_id: Type.String() }, { additionalProperties: false }),
    ...DelayFields,
  },
  { additionalProperties: false },
);
const SfuGetBody = Type.Object({ room: Type.String(), openid_token: OpenIdToken, device_id: Type.String(), ...DelayFields }, { additionalProperties: false });
const TokenAnswer = Type.Object({ url: Type.String(), jwt: Type.String() });
const responses = { 200: TokenAnswer, ...errorResponses };

const NOT_JSON = 'Error reading request';
const PARTIAL_DELAY = 'The request body is missing `delay_id` or `delay_timeout`';
const DELEGATION_REFUSED =
  'The delayed leave event was not delegated (ask again without delay_id, delay_timeout and delay_cs_api_url for a token, and keep the delayed event alive yourself)';
const unauthorised = () => new MatrixError(401, 'M_UNAUTHORIZED', 'The request could not be authorised.');

/** What the two routes differ in, once their bodies are checked. */
interface TokenRequest {
  /** Also the delegation's `source`. */
  route: TokenRoute & DelegationSource;
  serverName: string;
  accessToken: string;
  /** The user the token must belong to (`/get_token`), or null (`/sfu/get` does not compare). */
  claimedUserId: string | null;
  delayId: string;
  delayTimeout: number;
  names(sub: string): { room: string; identity: string; altRoom: string | null; altIdentity: string | null };
}

/**
 * Step 1, before schema validation: the raw body decoded as lk-jwt-service decodes it, so the schema sees (and the
 * handler's types describe) a complete body with zero values for what was absent.
 */
function decodedAs<T>(fields: Record<string, FieldType>) {
  return async (req: FastifyRequest): Promise<void> => {
    req.body = decodeLkJwtBody<T>(req.body, fields, NOT_JSON);
  };
}

/** Step 5 of both routes: the delay fields come both or neither. */
function checkDelayPair(delayId: string, delayTimeout: number): void {
  if ((delayId !== '') !== (delayTimeout > 0)) throw badJson(PARTIAL_DELAY);
}

export async function tokenRoutes(plain: FastifyInstance, deps: TokenDeps): Promise<void> {
  const scope = plain.withTypeProvider<TypeBoxTypeProvider>();
  const { config } = deps;
  const log = deps.logger.child({ component: 'token' });
  lkJwtScope(scope);
  lkJwtMethods(scope, GET_TOKEN_PATH);
  lkJwtMethods(scope, SFU_GET_PATH);

  scope.addHook('onResponse', async (req: FastifyRequest, reply: FastifyReply) => {
    if (req.method !== 'POST') return;
    const route: TokenRoute = req.routeOptions.url === SFU_GET_PATH ? 'sfu_get' : 'get_token';
    const issued = (req as { tokenOutcome?: TokenOutcome }).tokenOutcome;
    const outcome: TokenOutcome = issued === 'delegation_refused' || (reply.statusCode === 200 && issued) ? issued : reply.statusCode >= 500 ? 'failed' : 'refused';
    deps.metrics.tokensIssued.inc({ route, outcome });
  });

  scope.post(
    GET_TOKEN_PATH,
    {
      schema: { body: GetTokenBody, response: responses },
      preValidation: decodedAs<GetTokenRequest>(GET_TOKEN_REQUEST),
    },
    async (req) => {
      const b = req.body;
      if (!b.room_id || !b.slot_id) throw badJson('The request body is missing `room_id` or `slot_id`');
      if (!b.member.id || !b.member.claimed_user_id || !b.member.claimed_device_id) {
        throw badJson('The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`');
      }
      if (!b.openid_token.access_token || !b.openid_token.matrix_server_name) {
        throw badJson('The request body `openid_token` is missing a `access_token` or `matrix_server_name`');
      }
      checkDelayPair(b.delay_id, b.delay_timeout);
      return issue(req, {
        route: 'get_token',
        serverName: b.openid_token.matrix_server_name,
        accessToken: b.openid_token.access_token,
        claimedUserId: b.member.claimed_user_id,
        delayId: b.delay_id,
        delayTimeout: b.delay_timeout,
        names: (sub) => ({
          room: liveKitRoomName(b.room_id, b.slot_id),
          identity: liveKitIdentity(sub, b.member.claimed_device_id, b.member.id),
          // Element Call's Compatibility mode joins with the raw identity in the legacy room.
          altRoom: legacyRoomName(b.room_id),
          altIdentity: legacyIdentity(sub, b.member.claimed_device_id),
        }),
      });
    },
  );

  scope.post(
    SFU_GET_PATH,
    {
      schema: { body: SfuGetBody, response: responses },
      preValidation: decodedAs<SfuGetRequest>(SFU_GET_REQUEST),
    },
    async (req) => {
      const b = req.body;
      if (!b.room) throw badJson('Missing room parameter');
      if (!b.openid_token.access_token || !b.openid_token.matrix_server_name) throw badJson('Missing OpenID token parameters');
      checkDelayPair(b.delay_id, b.delay_timeout);
      return issue(req, {
        route: 'sfu_get',
        serverName: b.openid_token.matrix_server_name,
        accessToken: b.openid_token.access_token,
        claimedUserId: null,
        delayId: b.delay_id,
        delayTimeout: b.delay_timeout,
        // lk-jwt-service does not check device_id here: an empty one yields an identity ending in ':'.
        names: (sub) => ({ room: liveKitRoomName(b.room, LEGACY_SLOT_ID), identity: legacyIdentity(sub, b.device_id), altRoom: null, altIdentity: null }),
      });
    },
  );

  /** Steps 6-10 of facts section 1.2, shared by both routes. */
  async function issue(req: FastifyRequest, r: TokenRequest): Promise<{ url: string; jwt: string }> {
    // Ours (contract section 6): the accepted delay range, checked before any outgoing call. Outside it the
    // delegation is refused like any other: `/sfu/get` says so at once (Element Call retries without the delay),
    // `/get_token` still issues the token once the OpenID check passed and leaves the delayed leave to the client.
    const outOfRange = r.delayId !== '' && (r.delayTimeout < config.minTimeoutMs || r.delayTimeout > config.maxTimeoutMs);
    const rangeRefusal = outOfRange ? badJson(`delay_timeout must be between ${config.minTimeoutMs} and ${config.maxTimeoutMs} ms`) : null;
    if (rangeRefusal && r.route === 'sfu_get') throw rangeRefusal;
    const delegate = r.delayId !== '' && !outOfRange;
    const sub = await openIdUser(deps.resolver, r.serverName, r.accessToken, log);
    if (sub === null) throw unauthorised();
    if (r.claimedUserId !== null && sub !== r.claimedUserId) {
      log.info({ server_name: r.serverName }, 'OpenID token belongs to another user than member.claimed_user_id');
      throw unauthorised();
    }
    const fullAccess = isServerNameAllowed(r.serverName, config);
    if (r.delayId !== '' && !fullAccess) throw badJson('Delegation of delayed events is only supported for full access users');

    const names = r.names(sub);
    const [apiKey, apiSecret] = [config.livekitSigningKey, config.livekitKeys.get(config.livekitSigningKey)!];
    let jwt: string;
    try {
      jwt = await mintLiveKitToken(apiKey, apiSecret, {
        identity: names.identity,
        room: names.room,
        canPublish: fullAccess || config.restrictedUsersCanPublish,
        canUpdateOwnMetadata: config.canUpdateOwnMetadata,
      });
    } catch (err) {
      log.error({ err }, 'minting a LiveKit token failed');
      throw new MatrixError(500, 'M_UNKNOWN', 'Internal Server Error');
    }

    if (fullAccess) {
      // The client-server API is resolved before the room is created, so a refused delegation leaves no room.
      const csApi = delegate ? await usableCsApi(deps.resolver, r.serverName, config, log) : null;
      if (delegate && !csApi) throw badJson('Unable to resolve client-server API');
      try {
        await deps.rooms.createRoom({ name: names.room, ...CREATE_ROOM_OPTIONS });
      } catch (err) {
        log.warn(liveKitFailure(err), 'CreateRoom failed');
        throw new MatrixError(500, 'M_UNKNOWN', 'Unable to create room on SFU');
      }
      if (csApi) {
        if (deps.isShuttingDown()) throw new MatrixError(503, 'M_UNKNOWN', 'Service is shutting down');
        try {
          const { delegation, created } = await deps.engine.register({
            dialect: 'delayed_events',
            homeserver: csApi.url,
            token: r.delayId,
            accessToken: null,
            timeoutMs: r.delayTimeout,
            actions: { leave: 'leave', connection_lost: 'connection_lost' },
            ...names,
            source: r.route,
            replaceSameParticipant: true,
            client: req.ip,
          });
          log.debug({ delegation_id: delegation.id, created, route: r.route }, 'delegation accepted with a token request');
        } catch (err) {
          if (!isDelegationRefusal(err)) throw err;
          return delegationRefused(req, r, err, { url: config.livekitUrl, jwt });
        }
      }
    }
    if (rangeRefusal && fullAccess) return delegationRefused(req, r, rangeRefusal, { url: config.livekitUrl, jwt });
    (req as { tokenOutcome?: TokenOutcome }).tokenOutcome = fullAccess ? 'full_access' : 'restricted';
    return { url: config.livekitUrl, jwt };
  }

  /**
   * A delegation refused must not cost the participant the call (migrating-from-lk-jwt-service.md, "A refused
   * delegation"): Element Call does not retry `/get_token` on an error, so it gets its token and the refusal is
   * counted and logged; it retries `/sfu/get` once without the delay fields after a 400 `M_BAD_JSON`, which also
   * tells it the delayed leave stays its own to keep alive. The engine stored nothing for a refused delegation.
   */
  function delegationRefused(req: FastifyRequest, r: TokenRequest, err: MatrixError, token: { url: string; jwt: string }): { url: string; jwt: string } {
    (req as { tokenOutcome?: TokenOutcome }).tokenOutcome = 'delegation_refused';
    log.warn({ route: r.route, errcode: err.errcode, reason: err.message }, 'delegation carried by a token request refused; the participant keeps its own delayed leave');
    if (r.route === 'get_token') return token;
    throw badJson(`${DELEGATION_REFUSED}: ${err.message}`);
  }
}

/** Refusals of the delegation itself, as opposed to failures: admission control's 429 and the engine's 403s. */
function isDelegationRefusal(err: unknown): err is MatrixError {
  return err instanceof MatrixError && (err.errcode === 'M_LIMIT_EXCEEDED' || err.errcode === 'M_FORBIDDEN');
}
