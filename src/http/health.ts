import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store/store.js';

export function healthRoutes(app: FastifyInstance, deps: { store: Store; metrics: Metrics; isShuttingDown: () => boolean; isStarted: () => boolean }): void {
  app.get('/livez', async () => ({ status: 'ok' }));

  // lk-jwt-service's probe (and its healthcheck binary): the process answers, empty 200 (facts section 1.6).
  app.get('/healthz', async (_req, reply) => reply.status(200).send());

  app.get('/readyz', async (_req, reply) => {
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

  app.get('/metrics', async (_req, reply) => {
    const body = await deps.metrics.registry.metrics();
    return reply.header('content-type', deps.metrics.registry.contentType).send(body);
  });
}
