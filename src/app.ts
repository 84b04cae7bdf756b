import fastifyWebsocket from '@fastify/websocket';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { DelegationEngine } from './delegations/engine.js';
import { HomeserverClient } from './homeserver/client.js';
import { compatRoutes } from './http/compat.js';
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
import { RedisKeys } from './store/redis-keys.js';
import { RedisStore } from './store/redis.js';
import { SecretBox } from './store/secret-box.js';
import { SqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';
import { RedisReplicas } from './topology/redis-replicas.js';
import { SingleNode } from './topology/single-node.js';
import type { Topology } from './topology/topology.js';

const API_BODY_LIMIT = 64 * 1024;

export interface AppDeps {
  clock?: Clock;
  logger?: Logger;
  random?: () => number;
  watchMaxBufferedBytes?: number;
  /** LiveKit's RoomService; by default livekit-server-sdk's client for LIVEKIT_URL. */
  rooms?: RoomLister;
}

export interface Daemon {
  app: FastifyInstance;
  engine: DelegationEngine;
  store: Store;
  metrics: Metrics;
  logger: Logger;
  watch: WatchHub;
  reconciler: Reconciler;
  /** Loads state and starts the scheduler; call before listening. */
  start(): Promise<void>;
  /** Graceful stop: refuse new work, let in-flight calls finish until the deadline, close the store. */
  shutdown(): Promise<void>;
}

/**
 * The store the configuration names and the topology that goes with it, chosen once: SQLite is a single node that
 * owns everything; Redis is shared by replicas that split the shards.
 */
async function openDeployment(config: Config, clock: Clock, logger: Logger): Promise<{ store: Store; topology: Topology }> {
  const box = new SecretBox(config.tokenKey, config.tokenOldKeys);
  if (config.store.kind === 'sqlite') {
    const store = new SqliteStore(config.store.path, { synchronous: config.sqliteSynchronous, secretBox: box });
    return { store, topology: new SingleNode(store, logger) };
  }
  const store = new RedisStore(config.store.url, { keys: new RedisKeys(config.redisPrefix), secretBox: box, logger: logger.child({ component: 'redis' }) });
  await store.connect();
  const topology = new RedisReplicas({ store, clock, logger, leaseMs: config.redisLeaseMs, backlogMs: Math.max(config.joinTimeoutMs, DEDUPE_WINDOW_MS) });
  return { store, topology };
}

/** Builds the whole daemon; never listens (tests build it too, and `main.ts` listens). */
export async function buildApp(config: Config, deps: AppDeps = {}): Promise<Daemon> {
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ?? createLogger({ level: config.logLevel, pretty: config.dev && process.stdout.isTTY === true });
  const metrics = new Metrics();
  const { store, topology } = await openDeployment(config, clock, logger);
  // Client-server API URLs the operator set for Element Call's route are trusted like explicitly listed origins.
  const overrideOrigins = [...config.csApiUrlOverrides.values()].map((u) => new URL(u).origin);
  const policy = {
    allow: { ...config.homeservers, origins: new Set([...config.homeservers.origins, ...overrideOrigins]) },
    allowPrivateAddresses: config.allowPrivateAddresses,
    allowHttp: config.allowHttp,
  };
  const homeservers = new HomeserverClient({ rate: config.homeserverRate, clock, metrics, policy });
  const engine: DelegationEngine = new DelegationEngine({
    store,
    homeservers,
    clock,
    logger,
    metrics,
    settings: { reconnectGraceMs: config.reconnectGraceMs, joinTimeoutMs: config.joinTimeoutMs, refreshAt: config.refreshAt },
    limits: { maxPerIdentity: config.maxDelegationsPerIdentity, maxPerRoom: config.maxDelegationsPerRoom, homeserverRate: config.homeserverRate },
    ...(deps.random ? { random: deps.random } : {}),
    ownership: topology,
  });
  const intake = new WebhookIntake({ store, engine, clock, logger, applied: topology.applied });
  const auth = new LiveKitAuth(config.livekitKeys);
  const watch = new WatchHub(deps.watchMaxBufferedBytes);
  const [apiKey, apiSecret] = [...config.livekitKeys][0]!;
  const reconciler = new Reconciler({
    engine,
    rooms: deps.rooms ?? new RoomServiceClient(config.livekitUrl, apiKey, apiSecret, { requestTimeout: 10 }),
    clock,
    logger: logger.child({ component: 'reconcile' }),
    intervalMs: config.reconcileIntervalMs,
  });
  engine.onLifecycle((e) => watch.broadcast(e));
  let closing = false;
  let started = false;

  const app = Fastify({
    // Per-request lines only in --dev: in production a webhook burst would flood the log.
    loggerInstance: logger.child({ component: 'http' }, { level: config.dev ? logger.level : 'warn' }) as FastifyBaseLogger,
    bodyLimit: API_BODY_LIMIT,
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
    await app.register(adminRoutes, { adminToken, engine, store });
    await app.register(watchRoutes, { adminToken, hub: watch });
  }
  await app.register(webhookRoutes, { auth, intake, metrics, clock, isShuttingDown });
  await app.register(compatRoutes, { config, engine, logger, clock, isShuttingDown });

  return {
    app,
    engine,
    store,
    metrics,
    logger,
    watch,
    reconciler,
    async start() {
      await topology.start({ engine, intake });
      reconciler.start();
      started = true;
    },
    async shutdown() {
      if (closing) return;
      closing = true;
      const deadline = clock.now() + config.shutdownTimeoutMs;
      logger.info({ deadline_ms: config.shutdownTimeoutMs }, 'shutting down: refusing new work, finishing calls in flight');
      await reconciler.stop();
      await app.close();
      intake.stop();
      await intake.idle();
      await engine.drain(deadline);
      // Hand the work over at once (replicas: instead of letting their leases run out).
      await topology.stop();
      await homeservers.close().catch((err) => logger.warn({ err }, 'closing homeserver connections failed'));
      await store.close();
      logger.info('stopped');
    },
  };
}
