/**
 * Application-service mode (contract section 8, facts sections 6.2-6.5): the routes the homeserver proxies to us
 * under MSC4512, at MSC4195's unstable and `v1` paths. The homeserver authenticates the user and tells us who it is
 * (`X-Matrix-User-Identifier`, or `X-Matrix-Origin` for a server); we accept that only with its hs_token, checked
 * in constant time on every route. Checks run in lk-jwt-service's order with its error texts.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { Type } from 'typebox';
import type { AppserviceHomeserver } from '../appservice/homeserver-api.js';
import type { MembershipMonitor } from '../appservice/membership.js';
import { liveKitRoomName, msc4195Identity } from '../compat/livekit-names.js';
import { CREATE_ROOM_OPTIONS, mintLiveKitToken, type RoomCreator } from '../compat/livekit-token.js';
import type { MatrixResolver } from '../compat/matrix-resolver.js';
import { usableCsApi } from '../compat/matrix-user.js';
import type { Config } from '../config.js';
import type { DelegationEngine } from '../delegations/engine.js';
import { MatrixError, badJson, forbidden, invalidParam, matrixError, missingToken, unavailable, unknownToken } from '../errors.js';
import type { AppserviceSettings } from '../lk-jwt-env.js';
import type { Metrics } from '../metrics.js';
import { bearerToken, isAdminToken as isSameSecret } from './auth.js';
import type { LimitParticipant } from './rate-limits.js';
import { errorResponses } from './responses.js';

const CS_PREFIXES = ['/_matrix/client/unstable/io.element.msc4195/rtc/livekit', '/_matrix/client/v1/rtc/livekit'];
const SS_PREFIXES = ['/_matrix/federation/unstable/io.element.msc4195/rtc/livekit', '/_matrix/federation/v1/rtc/livekit'];
/** Where a remote server's S-S `get_token` is (lk-jwt-service relays to the unstable one; servers serve both here). */
const REMOTE_GET_TOKEN_PATH = '/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token';
const PING_PATH = '/_matrix/app/v1/ping';
/**
 * Synapse pushes every event of the users in the registration's namespace to a registration with a `url` (which
 * its ping needs): each transaction is acknowledged and dropped, or Synapse retries it with backoff for ever.
 */
const TRANSACTIONS_PATH = '/_matrix/app/v1/transactions/:txnId';
/** A transaction holds up to 100 events plus EDUs; only the homeserver (its hs_token checked first) gets this far. */
const TRANSACTION_BODY_LIMIT = 32 * 1024 * 1024;

export interface AppserviceDeps {
  config: Config;
  appservice: AppserviceSettings;
  api: AppserviceHomeserver;
  engine: DelegationEngine;
  resolver: MatrixResolver;
  rooms: RoomCreator;
  metrics: Metrics;
  logger: Logger;
  limitParticipant: LimitParticipant;
  isShuttingDown: () => boolean;
  /** Whose Matrix membership decides each participant's place in the call. */
  membership: Pick<MembershipMonitor, 'track'>;
}

const Str = Type.String();
/**
 * The membership a C-S request is for: MSC4195's `member_id` (lk-jwt-service main), or matrix-js-sdk 43's
 * `member: {id, claimed_device_id?}` (its LivekitRtcMember; the SDK sends no `member_id`). One of them is required.
 */
const MemberOf = { member_id: Type.Optional(Str), member: Type.Optional(Type.Object({ id: Str, claimed_device_id: Type.Optional(Str) })) };
const CsGetTokenBody = Type.Object({ room_id: Str, slot_id: Str, url: Str, ...MemberOf, server_name: Type.Optional(Str) });
const SsGetTokenBody = Type.Object({ user_id: Str, room_id: Str, slot_id: Str, url: Str, member_id: Str });
const DelegateBody = Type.Object({ url: Str, room_id: Str, slot_id: Str, ...MemberOf, delay_id: Str });
const tokenResponses = { 200: Type.Object({ jwt: Type.String() }), ...errorResponses };

/** `@localpart:server`, as lk-jwt-service checks it. */
const MXID = /^@[^:]+:(.+)$/;
const serverOf = (mxid: string): string | null => MXID.exec(mxid)?.[1]?.toLowerCase() ?? null;
const URL_MISMATCH = "The request `url` does not match this service's LiveKit URL";
const NOT_A_MEMBER = 'The requesting user is not a member of the room';

/** Who the homeserver says is asking, set by the hooks before the body is read. */
const callers = new WeakMap<FastifyRequest, string>();

export async function appserviceRoutes(plain: FastifyInstance, deps: AppserviceDeps): Promise<void> {
  const scope = plain.withTypeProvider<TypeBoxTypeProvider>();
  const { config, appservice, api } = deps;
  const log = deps.logger.child({ component: 'appservice' });
  const own = appservice.serverName;

  // Bodies are JSON whatever the Content-Type says (the homeserver forwards the client's); decoded after the token.
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  scope.addHook('preValidation', async (req) => {
    if (req.method !== 'POST') return;
    try {
      req.body = JSON.parse(Buffer.isBuffer(req.body) ? req.body.toString('utf8') : '');
    } catch {
      throw matrixError('M_NOT_JSON', 'Error reading request');
    }
  });
  // Every route: the homeserver's token first. The homeserver already limits its users (or is told not to, with
  // `rate_limited: false`), and every request comes from its address: no per-address limit here.
  scope.addHook('onRequest', async (req) => {
    const presented = bearerToken(req);
    if (!presented) throw missingToken('Missing homeserver access token');
    if (!isSameSecret(presented, appservice.hsToken)) throw unknownToken('Unrecognised homeserver access token');
  });
  const userHeader = async (req: FastifyRequest) => {
    const user = headerOf(req, 'x-matrix-user-identifier');
    if (!user) throw new MatrixError(401, 'M_UNAUTHORIZED', 'Missing request authorization');
    callers.set(req, user);
  };
  const originHeader = async (req: FastifyRequest) => {
    const origin = headerOf(req, 'x-matrix-origin');
    if (!origin) throw new MatrixError(401, 'M_UNAUTHORIZED', 'Missing request origin');
    callers.set(req, origin.toLowerCase());
  };
  const exempt = { exemptFromRateLimit: true };

  scope.all(PING_PATH, { config: exempt }, async () => ({}));
  scope.put(TRANSACTIONS_PATH, { config: exempt, bodyLimit: TRANSACTION_BODY_LIMIT }, async () => ({}));

  const csApi = async () => {
    const base = await usableCsApi(deps.resolver, own, config, log);
    if (!base) throw badJson('Unable to resolve client-server API');
    return base.url;
  };
  const joined = async (base: string, roomId: string, who: { mxid: string } | { serverName: string }): Promise<boolean> => {
    try {
      return await api.isJoined(base, roomId, who);
    } catch (err) {
      log.warn({ reason: (err as Error).message }, 'membership lookup failed');
      throw new MatrixError(502, 'M_UNKNOWN', 'Unable to verify room membership');
    }
  };
  const issue = async (identity: string, room: string, canPublish: boolean): Promise<{ jwt: string }> => {
    const jwt = await mintLiveKitToken(config.livekitSigningKey, config.livekitKeys.get(config.livekitSigningKey)!, { identity, room, canPublish, canUpdateOwnMetadata: config.canUpdateOwnMetadata });
    try {
      await deps.rooms.createRoom({ name: room, ...CREATE_ROOM_OPTIONS });
    } catch (err) {
      const { status, code } = err as { status?: number; code?: string };
      log.warn({ status, code }, 'CreateRoom failed');
      throw new MatrixError(500, 'M_UNKNOWN', 'Unable to create room on SFU');
    }
    return { jwt };
  };
  const required = (fields: Record<string, string>) => {
    const empty = Object.entries(fields).filter(([, v]) => v === '').map(([k]) => `\`${k}\``);
    if (empty.length) throw badJson(`The request body has an empty ${empty.join(', ')}`);
  };
  const memberIdOf = (b: { member_id?: string; member?: { id: string } }): string => {
    if (b.member_id === undefined && b.member === undefined) throw badJson('The request body needs `member_id` (or `member.id`)');
    if (b.member_id !== undefined && b.member !== undefined && b.member_id !== b.member.id) throw badJson('`member_id` and `member.id` differ');
    return b.member_id ?? b.member!.id;
  };

  for (const prefix of CS_PREFIXES) {
    scope.post(`${prefix}/get_token`, { config: exempt, onRequest: userHeader, schema: { body: CsGetTokenBody, response: tokenResponses } }, async (req) => {
      const user = callers.get(req)!;
      const b = req.body;
      const memberId = memberIdOf(b);
      required({ room_id: b.room_id, slot_id: b.slot_id, url: b.url, member_id: memberId });
      const target = (b.server_name ?? '').toLowerCase();
      const local = target === '' || target === own;
      if (local && b.url !== config.livekitUrl) throw invalidParam(URL_MISMATCH);
      if (serverOf(user) === null) throw invalidParam('Malformed user identifier');
      const base = await csApi();
      if (!(await joined(base, b.room_id, { mxid: user }))) throw forbidden(NOT_A_MEMBER);
      if (local) {
        const [identity, room] = [msc4195Identity(user, memberId), liveKitRoomName(b.room_id, b.slot_id)];
        const answer = await issue(identity, room, true);
        deps.membership.track(room, identity, b.room_id, user);
        deps.metrics.tokensIssued.inc({ route: 'appservice', outcome: 'full_access' });
        return answer;
      }
      if (!(await joined(base, b.room_id, { serverName: target }))) throw forbidden('The target server is not joined to the room');
      return relay(base, target, { user_id: user, url: b.url, room_id: b.room_id, slot_id: b.slot_id, member_id: memberId });
    });

    scope.post(`${prefix}/delegate_delayed_leave`, { config: exempt, onRequest: userHeader, schema: { body: DelegateBody, response: { 200: Type.Object({}), ...errorResponses } } }, async (req) => {
      const user = callers.get(req)!;
      const b = req.body;
      const memberId = memberIdOf(b);
      required({ url: b.url, room_id: b.room_id, slot_id: b.slot_id, member_id: memberId, delay_id: b.delay_id });
      if (b.url !== config.livekitUrl) throw invalidParam(URL_MISMATCH);
      if (serverOf(user) !== own) throw invalidParam('Malformed user identifier');
      const room = liveKitRoomName(b.room_id, b.slot_id);
      const identity = msc4195Identity(user, memberId);
      await deps.limitParticipant(req, identity, room);
      const base = await csApi();
      const found = await api.lookupDelay(base, user, b.delay_id);
      if (found.kind === 'error') {
        log.warn({ status: found.status }, 'delayed event lookup failed');
        throw unavailable('Unable to look up the delayed event');
      }
      if (found.kind === 'unknown' || found.event.roomId !== b.room_id) throw invalidParam('Unknown `delay_id`');
      const { delayMs } = found.event;
      if (delayMs < config.minTimeoutMs || delayMs > config.maxTimeoutMs) throw invalidParam(`The delayed event's delay must be between ${config.minTimeoutMs} and ${config.maxTimeoutMs} ms`);
      if (deps.isShuttingDown()) throw unavailable('Service is shutting down');
      const { delegation, created } = await deps.engine.register({
        dialect: 'delayed_events',
        homeserver: base,
        token: b.delay_id,
        accessToken: null,
        owner: user,
        timeoutMs: delayMs,
        actions: { leave: 'leave', connection_lost: 'connection_lost' },
        room,
        identity,
        source: 'appservice',
        replaceSameParticipant: true,
        client: null,
      });
      deps.membership.track(room, identity, b.room_id, user);
      log.debug({ delegation_id: delegation.id, created }, 'delegation accepted through the homeserver');
      return {};
    });
  }

  for (const prefix of SS_PREFIXES) {
    scope.post(`${prefix}/get_token`, { config: exempt, onRequest: originHeader, schema: { body: SsGetTokenBody, response: tokenResponses } }, async (req) => {
      const origin = callers.get(req)!;
      const b = req.body;
      required({ user_id: b.user_id, room_id: b.room_id, slot_id: b.slot_id, url: b.url, member_id: b.member_id });
      const userServer = serverOf(b.user_id);
      if (userServer === null) throw invalidParam('Malformed user identifier');
      if (userServer !== origin) throw forbidden('The user_id does not belong to the origin server');
      const base = await csApi();
      if (!(await joined(base, b.room_id, { serverName: own }))) throw forbidden('This server is not joined to the room');
      if (!(await joined(base, b.room_id, { mxid: b.user_id }))) throw forbidden(NOT_A_MEMBER);
      if (b.url !== config.livekitUrl) throw invalidParam(URL_MISMATCH);
      const [identity, room] = [msc4195Identity(b.user_id, b.member_id), liveKitRoomName(b.room_id, b.slot_id)];
      const answer = await issue(identity, room, config.restrictedUsersCanPublish);
      deps.membership.track(room, identity, b.room_id, b.user_id);
      deps.metrics.tokensIssued.inc({ route: 'appservice', outcome: 'restricted' });
      return answer;
    });
  }

  /** A remote user's token comes from the SFU of its room's server: asked through the homeserver's fed_proxy. */
  async function relay(base: string, destination: string, body: Record<string, string>): Promise<{ jwt: string }> {
    let answer;
    try {
      answer = await api.fedProxy(base, { destination, path: REMOTE_GET_TOKEN_PATH, body });
    } catch (err) {
      log.warn({ destination, reason: (err as Error).message }, 'fed_proxy failed');
      throw new MatrixError(502, 'M_UNKNOWN', 'Unable to reach the specified homeserver');
    }
    const jwt = answer.json?.jwt;
    if (answer.status === 200 && typeof jwt === 'string') return { jwt };
    if (answer.status === 403 && answer.json?.errcode === 'M_FORBIDDEN') throw forbidden('The specified homeserver refused the request');
    if (answer.status === 400 && answer.json?.errcode === 'M_INVALID_PARAM') throw invalidParam('The specified homeserver rejected a request parameter');
    log.info({ destination, status: answer.status }, 'remote get_token failed');
    throw new MatrixError(502, 'M_UNKNOWN', 'Unable to reach the specified homeserver');
  }
}

function headerOf(req: FastifyRequest, name: string): string {
  const v = req.headers[name];
  return (Array.isArray(v) ? v[0] : v)?.trim() ?? '';
}
