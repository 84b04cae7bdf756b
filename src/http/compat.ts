import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import { legacyIdentity, legacyRoomName, liveKitIdentity, liveKitRoomName } from '../compat/livekit-names.js';
import { MatrixLookupError, MatrixResolver, parseServerName, type CsApiBase } from '../compat/matrix-resolver.js';
import { decodeDelayedLeaveRequest } from '../compat/request.js';
import type { Config } from '../config.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { forbidden, matrixError, shuttingDown } from '../errors.js';
import { checkHomeserverUrl, type GuardPolicy } from '../homeserver/address-guard.js';

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

const unauthorized = (message = 'The OpenID token could not be verified') => matrixError('M_UNAUTHORIZED', message);

/** Is this Matrix server one we serve (`SIDECAR_HOMESERVERS`: a listed server name, or `*`)? Decided without I/O. */
export function isServerNameAllowed(serverName: string, config: Pick<Config, 'homeservers'>): boolean {
  if (!parseServerName(serverName)) return false;
  return config.homeservers.any || config.homeservers.serverNames.has(serverName);
}

/**
 * May delayed-event calls for a compat delegation go to this client-server API base URL? An operator's override is
 * trusted as an explicitly listed origin is (http and private addresses allowed): the operator chose it. A URL
 * discovered through `.well-known/matrix/client` comes from the homeserver's own web server, so it gets what `*`
 * gets: https only (whatever --dev allows for listed origins), and a public address unless private ones are allowed.
 * Host names are checked again at every connection by the homeserver client's guarded lookup.
 */
export function csApiUrlRefusal(base: CsApiBase, config: Pick<Config, 'allowPrivateAddresses'>): string | null {
  let origin: string;
  try {
    origin = new URL(base.url).origin;
  } catch {
    return 'not a URL';
  }
  const policy: GuardPolicy =
    base.how === 'override'
      ? { allow: { any: false, origins: new Set([origin]), serverNames: new Set() }, allowPrivateAddresses: config.allowPrivateAddresses, allowHttp: true }
      : { allow: { any: true, origins: new Set(), serverNames: new Set() }, allowPrivateAddresses: config.allowPrivateAddresses, allowHttp: false };
  return checkHomeserverUrl(base.url, policy);
}

/**
 * Element Call's drop-in: `POST /delegate_delayed_leave` as lk-jwt-service (MSC4195) answers it, with its error
 * codes and CORS; its own body parser (lk-jwt-service decodes whatever the Content-Type says).
 */
export async function compatRoutes(scope: FastifyInstance, deps: CompatDeps): Promise<void> {
  const { config, engine } = deps;
  const log = deps.logger.child({ component: 'compat' });
  const resolver =
    deps.resolver ??
    new MatrixResolver({
      federationOverrides: config.federationUrlOverrides,
      csApiOverrides: config.csApiUrlOverrides,
      allowPrivateAddresses: config.allowPrivateAddresses,
      ...(deps.clock ? { clock: deps.clock } : {}),
    });
  if (!deps.resolver) scope.addHook('onClose', async () => resolver.close());

  // lk-jwt-service decodes whatever the Content-Type says; an empty or non-JSON body is M_NOT_JSON.
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  // onSend also runs for the app-wide 503 sent from its onRequest hook while shutting down.
  scope.addHook('onSend', async (_req, reply) => {
    reply.header('access-control-allow-origin', '*');
  });

  scope.options(DELEGATE_DELAYED_LEAVE_PATH, async (_req, reply) => {
    return reply
      .status(200)
      .header('access-control-allow-methods', 'POST, OPTIONS')
      .header('access-control-allow-headers', 'Content-Type, Authorization')
      .send();
  });

  scope.route({
    method: ['GET', 'PUT', 'DELETE', 'PATCH'],
    url: DELEGATE_DELAYED_LEAVE_PATH,
    handler: async (req, reply) =>
      reply.status(405).header('allow', 'POST, OPTIONS').send({ errcode: 'M_UNRECOGNIZED', error: `Method ${req.method} is not allowed here` }),
  });

  scope.post(DELEGATE_DELAYED_LEAVE_PATH, async (req, reply) => {
    if (deps.isShuttingDown()) throw shuttingDown();
    const body = decodeDelayedLeaveRequest(req.body);
    if (body.delay_timeout < config.minTimeoutMs || body.delay_timeout > config.maxTimeoutMs) {
      throw matrixError('M_BAD_JSON', `delay_timeout must be between ${config.minTimeoutMs} and ${config.maxTimeoutMs} ms`);
    }
    const serverName = body.openid_token.matrix_server_name;
    if (!isServerNameAllowed(serverName, config)) throw forbidden('This Matrix server is not served here');

    let sub: string;
    try {
      sub = await resolver.verifyOpenId(serverName, body.openid_token.access_token);
    } catch (err) {
      if (!(err instanceof MatrixLookupError)) throw err;
      log.info({ server_name: serverName, reason: err.reason }, 'OpenID token not verified');
      throw unauthorized();
    }
    if (sub !== body.member.claimed_user_id) {
      log.info({ server_name: serverName }, 'OpenID token belongs to another user than member.claimed_user_id');
      throw unauthorized('The OpenID token does not belong to member.claimed_user_id');
    }

    let csApi: CsApiBase;
    try {
      csApi = await resolver.csApiBaseUrl(serverName);
    } catch (err) {
      if (!(err instanceof MatrixLookupError)) throw err;
      log.info({ server_name: serverName, reason: err.reason }, 'client-server API URL not resolved');
      throw matrixError('M_BAD_JSON', 'Could not resolve the client-server API URL of this Matrix server');
    }
    const refused = csApiUrlRefusal(csApi, config);
    if (refused) {
      log.info({ server_name: serverName, reason: refused }, 'client-server API URL refused');
      throw matrixError('M_BAD_JSON', 'The client-server API URL of this Matrix server is not usable');
    }

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
    });
    log.debug({ delegation_id: delegation.id, created }, 'compat delegation accepted');
    return reply.status(200).send({});
  });
}
