import fastifyWebsocket from '@fastify/websocket';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { DelegationEngine } from './delegations/engine.js';
import { DEFAULT_HISTORY_LIMITS, HistoryStore } from './delegations/history.js';
import type { AddressResolver } from './homeserver/address-guard.js';
import { HomeserverClient } from './homeserver/client.js';
import { compatRoutes } from './http/compat.js';
import { tokenRoutes } from './http/token.js';
import { appserviceRoutes } from './http/appservice.js';
import { AppserviceHomeserver } from './appservice/homeserver-api.js';
import { MembershipMonitor, type ParticipantRemover } from './appservice/membership.js';
import { recoverMemberships } from './appservice/recover-memberships.js';
import { matrixResolverFor, usableCsApi } from './compat/matrix-user.js';
import type { MatrixResolver } from './compat/matrix-resolver.js';
import type { RoomCreator } from './compat/livekit-token.js';
import { consoleRoutes } from './http/console.js';
import { delegationRoutes } from './http/delegations.js';
import { installErrorHandlers } from './http/errors.js';
import { adminRoutes } from './http/admin.js';
import { healthRoutes } from './http/health.js';
import { WatchHub, watchRoutes } from './http/watch.js';
import { webhookRoutes } from './http/webhook.js';
import { RoomServiceClient } from 'livekit-server-sdk';
import { LiveKitAuth } from './livekit/auth.js';
import { Reconciler, type RoomLister } from './livekit/reconciler.js';
import { DEDUPE_WINDOW_MS, WebhookIntake } from './livekit/webhook-intake.js';
import { shuttingDown } from './errors.js';
import { installRateLimits } from './http/rate-limits.js';
import { createLogger } from './log.js';
import { Metrics } from './metrics.js';
import { SecretBox } from './store/secret-box.js';
import { SqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';
import { SingleNode } from './topology/single-node.js';
import type { Topology } from './topology/topology.js';

const API_BODY_LIMIT = 64 * 1024;
/** Headers must be complete within this (or the request timeout, if shorter). */
const HEADERS_TIMEOUT_MS = 10_000;

export interface AppDeps {
  clock?: Clock;
  logger?: Logger;
  random?: () => number;
  watchMaxBufferedBytes?: number;
  /** LiveKit's RoomService; by default livekit-server-sdk's client for LIVEKIT_URL. */
  rooms?: RoomLister;
  /** Matrix discovery for lk-jwt-service's routes; by default built from the config (tests point it at fakes). */
  resolver?: MatrixResolver;
  /** RoomService `CreateRoom` for the token routes; by default the same SDK client. */
  roomCreator?: RoomCreator;
  /** Address lookups of homeserver host names (dns.lookup by default); tests answer them without DNS. */
  resolveAddress?: AddressResolver;
  /** RoomService `RemoveParticipant` for membership checks; by default the same SDK client. */
  participantRemover?: ParticipantRemover;
}

export interface Daemon {
  app: FastifyInstance;
  engine: DelegationEngine;
  store: Store;
  metrics: Metrics;
  logger: Logger;
  watch: WatchHub;
  reconciler: Reconciler;
  /** Application-service mode's membership checks, or null when standalone. */
  membership: MembershipMonitor | null;
  /** Loads state and starts the scheduler; call before listening. */
  start(): Promise<void>;
  /** Graceful stop: refuse new work, let in-flight calls finish until the deadline, close the store. */
  shutdown(): Promise<void>;
}

/** What the request log shows of a request: never its query string. */
function requestLogView(req: { method: string; url: string; ip?: string; socket?: { remotePort?: number } }) {
  const q = req.url.indexOf('?');
  return { method: req.method, url: q < 0 ? req.url : `${req.url.slice(0, q)}?[redacted]`, remoteAddress: req.ip, remotePort: req.socket?.remotePort };
}

/**
 * The store the configuration names and the topology that goes with it, chosen once: SQLite is a single node that
 * owns everything; Redis is shared by replicas that split the shards.
 */
async function openDeployment(config: Config, clock: Clock, logger: Logger, metrics: Metrics): Promise<{ store: Store; topology: Topology }> {
  const box = new SecretBox(config.tokenKey, config.tokenOldKeys);
  if (config.store.kind === 'sqlite') {
    const store = new SqliteStore(config.store.path, { synchronous: config.sqliteSynchronous, secretBox: box });
    return { store, topology: new SingleNode(store, logger) };
  }
  // Loaded only here: ioredis and the Redis modules are about 10 MiB of a SQLite daemon's resident memory otherwise.
  const [{ RedisStore }, { RedisKeys }, { RedisReplicas }] = await Promise.all([import('./store/redis.js'), import('./store/redis-keys.js'), import('./topology/redis-replicas.js')]);
  const store = new RedisStore(config.store.url, { keys: new RedisKeys(config.redisPrefix), secretBox: box, logger: logger.child({ component: 'redis' }) });
  await store.connect();
  const topology = new RedisReplicas({ store, clock, logger, leaseMs: config.redisLeaseMs, ignoreLeaseLoss: config.redisIgnoreLeaseLoss, backlogMs: Math.max(config.joinTimeoutMs, DEDUPE_WINDOW_MS), metrics });
  return { store, topology };
}

/** Builds the whole daemon; never listens (tests build it too, and `main.ts` listens). */
export async function buildApp(config: Config, deps: AppDeps = {}): Promise<Daemon> {
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ?? createLogger({ level: config.logLevel, pretty: config.dev && process.stdout.isTTY === true });
  const metrics = new Metrics();
  const { store, topology } = await openDeployment(config, clock, logger, metrics);
  // Client-server API URLs the operator set for Element Call's route are trusted like explicitly listed origins.
  const overrideOrigins = [...config.csApiUrlOverrides.values()].map((u) => new URL(u).origin);
  const policy = {
    allow: { ...config.homeservers, origins: new Set([...config.homeservers.origins, ...overrideOrigins]) },
    allowPrivateAddresses: config.allowPrivateAddresses,
    allowHttp: config.allowHttp,
  };
  // Application-service mode: what we ask our homeserver as the service, and how calls made as a user look.
  const asApi = config.appservice ? new AppserviceHomeserver({ asToken: config.appservice.asToken, clock, policy, ...(deps.resolveAddress ? { resolve: deps.resolveAddress } : {}) }) : null;
  const homeservers = new HomeserverClient({
    rate: config.homeserverRate,
    clock,
    metrics,
    policy,
    ...(deps.resolveAddress ? { resolve: deps.resolveAddress } : {}),
    ...(asApi && config.appservice ? { asUser: { asToken: config.appservice.asToken, api: asApi } } : {}),
  });
  const engine: DelegationEngine = new DelegationEngine({
    store,
    homeservers,
    clock,
    logger,
    metrics,
    settings: { reconnectGraceMs: config.reconnectGraceMs, joinTimeoutMs: config.joinTimeoutMs, refreshAt: config.refreshAt, refreshMarginMs: config.refreshMarginMs },
    limits: { maxPerIdentity: config.maxDelegationsPerIdentity, maxPerRoom: config.maxDelegationsPerRoom, homeserverRate: config.homeserverRate, maxHomeserverOrigins: config.maxHomeserverOrigins },
    history: new HistoryStore({ ...DEFAULT_HISTORY_LIMITS, bytes: config.historyMaxBytes }),
    ...(deps.random ? { random: deps.random } : {}),
    ownership: topology,
    clusterLoad: topology.clusterLoad,
  });
  const intake = new WebhookIntake({ store, engine, clock, logger, applied: topology.applied });
  const auth = new LiveKitAuth(config.livekitKeys);
  const watch = new WatchHub(deps.watchMaxBufferedBytes);
  // The SDK turns a ws(s) LIVEKIT_URL (lk-jwt-service's form, handed to clients) into its http(s) form.
  const roomService = new RoomServiceClient(config.livekitUrl, config.livekitSigningKey, config.livekitKeys.get(config.livekitSigningKey)!, { requestTimeout: 10 });
  const reconciler = new Reconciler({
    engine,
    rooms: deps.rooms ?? roomService,
    clock,
    logger: logger.child({ component: 'reconcile' }),
    intervalMs: config.reconcileIntervalMs,
  });
  engine.onLifecycle((e) => watch.broadcast(e));
  let closing = false;
  let started = false;

  const app = Fastify({
    // Per-request lines only in --dev: in production a webhook burst would flood the log. Query strings are never
    // logged: a token pasted into one would otherwise be.
    loggerInstance: logger.child({ component: 'http' }, { level: config.dev ? logger.level : 'warn', serializers: { req: requestLogView } }) as FastifyBaseLogger,
    bodyLimit: API_BODY_LIMIT,
    // Fastify's default is no request timeout at all: a client that sends headers and never the body would hold its
    // connection (and a slot of the per-IP limit's patience) for as long as it likes. Node checks every
    // `connectionsCheckingInterval`, so that is kept well below the timeout.
    requestTimeout: config.requestTimeoutMs,
    http: {
      requestTimeout: config.requestTimeoutMs,
      headersTimeout: Math.min(HEADERS_TIMEOUT_MS, config.requestTimeoutMs),
      connectionsCheckingInterval: Math.min(1_000, Math.max(100, Math.floor(config.requestTimeoutMs / 4))),
    },
    trustProxy: config.trustProxy,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
  });
  const routes = new Map<string, Set<string>>();
  app.addHook('onRoute', (r) => {
    const methods = routes.get(r.url) ?? new Set<string>();
    for (const m of Array.isArray(r.method) ? r.method : [r.method]) if (m !== 'HEAD') methods.add(m);
    routes.set(r.url, methods);
  });
  installErrorHandlers(app, () => routes);
  app.addHook('onRequest', async (req) => {
    if (closing && req.method !== 'GET' && req.method !== 'HEAD' && req.method !== 'OPTIONS') {
      throw shuttingDown();
    }
  });

  const limitParticipant = await installRateLimits(app, { perIpPerMinute: config.rateLimitPerMinute, perParticipantPerMinute: config.rateLimitPerIdentityPerMinute });

  // Every route group is an encapsulated plugin: its parsers, hooks and schemas stay inside it.
  const isShuttingDown = (): boolean => closing;
  await app.register(healthRoutes, { store, metrics, isShuttingDown, isStarted: () => started });
  await app.register(consoleRoutes);
  await app.register(delegationRoutes, { config, engine, auth, limitParticipant });
  if (config.adminToken) {
    const adminToken = config.adminToken;
    await app.register(fastifyWebsocket, { options: { maxPayload: 4096 } });
    const mode = config.appservice ? { kind: 'appservice' as const, server_name: config.appservice.serverName } : { kind: 'standalone' as const };
    await app.register(adminRoutes, { adminToken, engine, store, mode });
    await app.register(watchRoutes, { adminToken, hub: watch });
  }
  await app.register(webhookRoutes, { auth, intake, metrics, clock, isShuttingDown });
  const resolver = deps.resolver ?? matrixResolverFor(config, clock);
  if (!deps.resolver) app.addHook('onClose', async () => resolver.close());
  await app.register(compatRoutes, { config, engine, logger, resolver, isShuttingDown });
  await app.register(tokenRoutes, { config, engine, resolver, rooms: deps.roomCreator ?? roomService, metrics, logger, isShuttingDown });
  let membership: MembershipMonitor | null = null;
  if (config.appservice && asApi) {
    const own = config.appservice.serverName;
    const monitorLog = logger.child({ component: 'membership' });
    const monitor = new MembershipMonitor({
      isJoined: async (matrixRoom, user) => {
        const base = await usableCsApi(resolver, own, config, monitorLog);
        if (!base) throw new Error('client-server API not resolved');
        return asApi.isJoined(base.url, matrixRoom, { mxid: user });
      },
      remover: deps.participantRemover ?? roomService,
      removed: (room, identity, cause) => engine.removedFromCall(room, identity, cause),
      presence: engine.presence,
      clock,
      logger: monitorLog,
      metrics,
      intervalMs: config.appservice.membershipCheckIntervalMs,
      recover: () =>
        recoverMemberships({
          open: () => engine.openRooms().flatMap((room) => engine.delegationsInRoom(room)),
          delayIdOf: async (id) => (await store.getSecrets(id))?.token,
          lookup: async (user, delayId) => {
            const base = await usableCsApi(resolver, own, config, monitorLog);
            return base ? asApi.lookupDelay(base.url, user, delayId) : { kind: 'error', status: null };
          },
        }),
    });
    engine.onParticipantJoined((room, identity) => monitor.onJoined(room, identity));
    membership = monitor;
    await app.register(appserviceRoutes, { config, appservice: config.appservice, api: asApi, engine, resolver, rooms: deps.roomCreator ?? roomService, metrics, logger, limitParticipant, isShuttingDown, membership: monitor });
  }

  return {
    app,
    engine,
    store,
    metrics,
    logger,
    watch,
    reconciler,
    membership,
    async start() {
      await topology.start({ engine, intake });
      reconciler.start();
      membership?.start();
      started = true;
    },
    async shutdown() {
      if (closing) return;
      closing = true;
      const deadline = clock.now() + config.shutdownTimeoutMs;
      logger.info({ deadline_ms: config.shutdownTimeoutMs }, 'shutting down: refusing new work, finishing calls in flight');
      await reconciler.stop();
      await membership?.stop();
      await app.close();
      intake.stop();
      await intake.idle();
      await engine.drain(deadline);
      // Hand the work over at once (replicas: instead of letting their leases run out).
      await topology.stop();
      await homeservers.close().catch((err) => logger.warn({ err }, 'closing homeserver connections failed'));
      await asApi?.close().catch((err) => logger.warn({ err }, 'closing application-service connections failed'));
      // Kept for a fast next start (only the single-node SQLite store can: a replica holds only its shards).
      if (store.saveOpenSnapshot) {
        await store
          .saveOpenSnapshot(engine.heldDelegations())
          .then((kept) => logger.info({ kept }, kept === null ? 'open delegations not kept for the next start' : 'open delegations kept for the next start'))
          .catch((err) => logger.warn({ err }, 'keeping the open delegations for the next start failed'));
      }
      await store.close();
      logger.info('stopped');
    },
  };
}
