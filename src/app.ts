import fastifyRateLimit from '@fastify/rate-limit';
import fastifyWebsocket from '@fastify/websocket';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { DelegationEngine, type Coordination } from './delegations/engine.js';
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
import { limitExceeded } from './errors.js';
import { createLogger } from './log.js';
import { Metrics } from './metrics.js';
import { SecretBox } from './store/secret-box.js';
import { RedisStore } from './store/redis.js';
import { ShardLeases } from './store/shard-leases.js';
import { SqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';

const API_BODY_LIMIT = 64 * 1024;
const RATE_LIMIT_EXEMPT = new Set(['/livekit/webhook', '/sfu_webhook', '/livez', '/readyz', '/metrics']);

export interface AppDeps {
  clock?: Clock;
  logger?: Logger;
  store?: Store;
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

async function openStore(config: Config, logger: Logger): Promise<Store> {
  const box = new SecretBox(config.tokenKey, config.tokenOldKeys);
  if (config.store.kind === 'sqlite') return new SqliteStore(config.store.path, { synchronous: config.sqliteSynchronous, secretBox: box });
  const store = new RedisStore(config.store.url, { prefix: config.redisPrefix, secretBox: box, logger: logger.child({ component: 'redis' }) });
  await store.connect();
  return store;
}

/** Builds the whole daemon; never listens (tests build it too, and `main.ts` listens). */
export async function buildApp(config: Config, deps: AppDeps = {}): Promise<Daemon> {
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ?? createLogger({ level: config.logLevel, pretty: config.dev && process.stdout.isTTY === true });
  const metrics = new Metrics();
  const store = deps.store ?? (await openStore(config, logger));
  // With Redis, replicas split the delegations by shard leases; the engine learns of gains and losses from them.
  let leases: ShardLeases | null = null;
  const coordination: Coordination | undefined =
    store instanceof RedisStore
      ? {
          ownership: (leases = new ShardLeases({
            redis: store.redis,
            prefix: config.redisPrefix,
            clock,
            logger: logger.child({ component: 'leases' }),
            leaseMs: config.redisLeaseMs,
            onGain: (shard): Promise<void> => engine.gainShard(shard),
            onLose: (shard) => engine.loseShard(shard),
          })),
          announce: (m: Parameters<RedisStore['announce']>[0]) => store.announce(m),
        }
      : undefined;
  if (store instanceof RedisStore && leases) store.useOwnership(leases);
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
    ...(coordination ? { coordination } : {}),
  });
  const intake = new WebhookIntake({ store, engine, clock, logger, appliesLocally: !(store instanceof RedisStore) });
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
  let shuttingDown = false;
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
  // Only JSON bodies reach the API; without this Fastify would hand text/plain bodies to the schema as strings.
  app.removeContentTypeParser('text/plain');
  app.addHook('onRequest', async (req, reply) => {
    if (shuttingDown && req.method !== 'GET' && req.method !== 'HEAD' && req.method !== 'OPTIONS') {
      return reply.status(503).header('retry-after', '5').send({ errcode: 'M_UNKNOWN', error: 'The service is shutting down' });
    }
  });

  // Per client IP on every API route. LiveKit's webhooks all come from one address and must never be throttled;
  // probes and scrapes are exempt too.
  await app.register(fastifyRateLimit, { global: false });
  const perIp = app.createRateLimit({ max: config.rateLimitPerMinute, timeWindow: 60_000 });
  app.addHook('onRequest', async (req) => {
    const path = req.url.split('?')[0]!;
    if (RATE_LIMIT_EXEMPT.has(path)) return;
    const verdict = await perIp(req);
    if (!verdict.isAllowed && verdict.isExceeded) throw limitExceeded('Too many requests from this address', verdict.ttl);
  });
  const perIdentity = app.createRateLimit({ max: config.rateLimitPerIdentityPerMinute, timeWindow: 60_000, keyGenerator: (req) => (req as { participantKey?: string }).participantKey ?? req.ip });

  healthRoutes(app, { store, metrics, isShuttingDown: () => shuttingDown, isStarted: () => started });
  consoleRoutes(app);
  delegationRoutes(app, {
    config,
    engine,
    auth,
    async limitParticipant(req, identity, room) {
      (req as { participantKey?: string }).participantKey = `${room}\u0000${identity}`;
      const verdict = await perIdentity(req);
      if (!verdict.isAllowed && verdict.isExceeded) throw limitExceeded('Too many delegation requests for this participant', verdict.ttl);
    },
  });
  if (config.adminToken) {
    const adminToken = config.adminToken;
    await app.register(fastifyWebsocket, { options: { maxPayload: 4096 } });
    await app.register(async (scope) => adminRoutes(scope, { adminToken, engine, store }));
    await app.register(async (scope) => watchRoutes(scope, { adminToken, hub: watch }));
  }
  await app.register(async (scope) => webhookRoutes(scope, { auth, intake, metrics, clock, isShuttingDown: () => shuttingDown }));
  await compatRoutes(app, { config, engine, logger, clock, isShuttingDown: () => shuttingDown });

  return {
    app,
    engine,
    store,
    metrics,
    logger,
    watch,
    reconciler,
    async start() {
      if (store instanceof RedisStore && leases) {
        // Presence first (recent events of every room), then shards: a delegation taken over is caught up from it.
        await store.feed(clock.now() - Math.max(config.joinTimeoutMs, DEDUPE_WINDOW_MS), (m) => intake.enqueueFeed(m));
        await leases.start();
      } else {
        await engine.start();
        const replayed = await intake.recover();
        if (replayed) logger.info({ replayed }, 'applied webhooks recorded before the last stop');
      }
      reconciler.start();
      started = true;
    },
    async shutdown() {
      if (shuttingDown) return;
      shuttingDown = true;
      const deadline = clock.now() + config.shutdownTimeoutMs;
      logger.info({ deadline_ms: config.shutdownTimeoutMs }, 'shutting down: refusing new work, finishing calls in flight');
      await reconciler.stop();
      await app.close();
      intake.stop();
      await intake.idle();
      await engine.drain(deadline);
      // Hand the shards over at once instead of letting their leases run out.
      await leases?.stop();
      await homeservers.close().catch((err) => logger.warn({ err }, 'closing homeserver connections failed'));
      await store.close();
      logger.info('stopped');
    },
  };
}
