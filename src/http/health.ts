import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store/store.js';
import { errorResponses } from './responses.js';

const Ok = Type.Object({ status: Type.Literal('ok') });
const Unavailable = Type.Object({ status: Type.Literal('unavailable'), problems: Type.Array(Type.String()) });

/** Probes and the Prometheus scrape; none of them counts against a client address's rate limit. */
export async function healthRoutes(app: FastifyInstance, deps: { store: Store; metrics: Metrics; isShuttingDown: () => boolean; isStarted: () => boolean }): Promise<void> {
  const config = { exemptFromRateLimit: true };
  const routes = app.withTypeProvider<TypeBoxTypeProvider>();
  routes.get('/livez', { config, schema: { response: { 200: Ok } } }, async () => ({ status: 'ok' as const }));

  // lk-jwt-service's probe (and its healthcheck binary): the process answers, empty 200 (facts section 1.6).
  // An empty body has nothing to serialise, so no response schema.
  routes.get('/healthz', { config }, async (_req, reply) => reply.status(200).send());

  routes.get('/readyz', { config, schema: { response: { 200: Ok, 503: Unavailable, ...errorResponses } } }, async (_req, reply) => {
    const problems: string[] = [];
    if (deps.isShuttingDown()) problems.push('shutting down');
    if (!deps.isStarted()) problems.push('starting');
    try {
      await deps.store.ping();
    } catch {
      problems.push('store unreachable');
    }
    if (problems.length) return reply.status(503).send({ status: 'unavailable', problems });
    return { status: 'ok' as const };
  });

  // The Prometheus text exposition: not JSON, so no response schema.
  routes.get('/metrics', { config }, async (_req, reply) => {
    const body = await deps.metrics.registry.metrics();
    return reply.header('content-type', deps.metrics.registry.contentType).send(body);
  });
}
