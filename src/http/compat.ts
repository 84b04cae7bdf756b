import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import { legacyIdentity, legacyRoomName, liveKitIdentity, liveKitRoomName } from '../compat/livekit-names.js';
import type { MatrixResolver } from '../compat/matrix-resolver.js';
import { isServerNameAllowed, matrixResolverFor, openIdUser, usableCsApi } from '../compat/matrix-user.js';
import { decodeDelayedLeaveRequest } from '../compat/request.js';
import type { Config } from '../config.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { forbidden, matrixError, shuttingDown } from '../errors.js';
import { lkJwtMethods, lkJwtScope } from './lk-jwt-scope.js';
import { errorResponses } from './responses.js';

const DELEGATE_DELAYED_LEAVE_PATH = '/delegate_delayed_leave';

export interface CompatDeps {
  config: Config;
  engine: DelegationEngine;
  logger: Logger;
  isShuttingDown: () => boolean;
  clock?: Clock;
  /** Tests substitute one with fake discovery; by default built from the config. */
  resolver?: MatrixResolver;
}

/** lk-jwt-service answers an accepted delegation with an empty object. */
const Accepted = Type.Object({}, { additionalProperties: false });

const unauthorized = (message = 'The OpenID token could not be verified') => matrixError('M_UNAUTHORIZED', message);

/**
 * Element Call's drop-in: `POST /delegate_delayed_leave` as lk-jwt-service (MSC4195) answers it, with its error
 * codes and CORS; its own body parser (lk-jwt-service decodes whatever the Content-Type says).
 */
export async function compatRoutes(scope: FastifyInstance, deps: CompatDeps): Promise<void> {
  const { config, engine } = deps;
  const log = deps.logger.child({ component: 'compat' });
  const resolver = deps.resolver ?? matrixResolverFor(config, deps.clock);
  if (!deps.resolver) scope.addHook('onClose', async () => resolver.close());
  lkJwtScope(scope);
  lkJwtMethods(scope, DELEGATE_DELAYED_LEAVE_PATH);

  // The body is decoded by `decodeDelayedLeaveRequest` (lk-jwt-service's rules), so only the responses have schemas.
  const routes = scope.withTypeProvider<TypeBoxTypeProvider>();
  routes.post(DELEGATE_DELAYED_LEAVE_PATH, { schema: { response: { 200: Accepted, ...errorResponses } } }, async (req, reply) => {
    if (deps.isShuttingDown()) throw shuttingDown();
    const body = decodeDelayedLeaveRequest(req.body);
    if (body.delay_timeout < config.minTimeoutMs || body.delay_timeout > config.maxTimeoutMs) {
      throw matrixError('M_BAD_JSON', `delay_timeout must be between ${config.minTimeoutMs} and ${config.maxTimeoutMs} ms`);
    }
    const serverName = body.openid_token.matrix_server_name;
    if (!isServerNameAllowed(serverName, config)) throw forbidden('This Matrix server is not served here');

    const sub = await openIdUser(resolver, serverName, body.openid_token.access_token, log);
    if (sub === null) throw unauthorized();
    if (sub !== body.member.claimed_user_id) {
      log.info({ server_name: serverName }, 'OpenID token belongs to another user than member.claimed_user_id');
      throw unauthorized('The OpenID token does not belong to member.claimed_user_id');
    }

    const csApi = await usableCsApi(resolver, serverName, config, log);
    if (!csApi) throw matrixError('M_BAD_JSON', 'Could not resolve the client-server API URL of this Matrix server');

    if (deps.isShuttingDown()) throw shuttingDown();
    const deviceId = body.member.claimed_device_id;
    const { delegation, created } = await engine.register({
      dialect: 'delayed_events',
      homeserver: csApi.url,
      token: body.delay_id,
      accessToken: null,
      timeoutMs: body.delay_timeout,
      actions: { leave: 'leave', connection_lost: 'connection_lost' },
      room: liveKitRoomName(body.room_id, body.slot_id),
      identity: liveKitIdentity(sub, deviceId, body.member.id),
      altIdentity: legacyIdentity(sub, deviceId),
      altRoom: legacyRoomName(body.room_id),
      source: 'compat',
      replaceSameParticipant: true,
      client: req.ip,
    });
    log.debug({ delegation_id: delegation.id, created }, 'compat delegation accepted');
    return reply.status(200).send({});
  });
}
