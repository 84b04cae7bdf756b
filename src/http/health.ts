import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store/store.js';

/** Probes and the Prometheus scrape; none of them counts against a client address's rate limit. */
export async function healthRoutes(app: FastifyInstance, deps: { store: Store; metrics: Metrics; isShuttingDown: () => boolean; isStarted: () => boolean }): Promise<void> {
  const config = { exemptFromRateLimit: true };
  app.get('/livez', { config }, async () => ({ status: 'ok' }));

  // lk-jwt-service's probe (and its healthcheck binary): the process answers, empty 200 (facts section 1.6).
  app.get('/healthz', { config }, async (_req, reply) => reply.status(200).send());

  app.get('/readyz', { config }, async (_req, reply) => {
    const problems: string[] = [];
    if (deps.isShuttingDown()) problems.push('shutting down');
    if (!deps.isStarted()) problems.push('starting');
    try {
      await deps.store.ping();
    } catch {
      problems.push('store unreachable');
    }
    if (problems.length) return reply.status(503).send({ status: 'unavailable', problems });
    return { status: 'ok' };
  });

  app.get('/metrics', { config }, async (_req, reply) => {
    const body = await deps.metrics.registry.metrics();
    return reply.header('content-type', deps.metrics.registry.contentType).send(body);
  });
}
