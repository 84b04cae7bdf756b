import fastifyRateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { limitExceeded } from '../errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * Not limited per client address: LiveKit's webhooks all come from one address and must never be throttled, and
     * probes and scrapes are not API calls.
     */
    exemptFromRateLimit?: boolean;
  }
}

/** How a route asks for the per-participant limit once it knows who the participant is. */
export type LimitParticipant = (req: FastifyRequest, identity: string, room: string) => Promise<void>;

const participantKeys = new WeakMap<FastifyRequest, string>();

/**
 * Per client address on every route that does not say `config: { exemptFromRateLimit: true }`; returns the
 * per-participant limit for the routes that register delegations.
 */
export async function installRateLimits(app: FastifyInstance, limits: { perIpPerMinute: number; perParticipantPerMinute: number }): Promise<LimitParticipant> {
  await app.register(fastifyRateLimit, { global: false });
  const perIp = app.createRateLimit({ max: limits.perIpPerMinute, timeWindow: 60_000 });
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.config.exemptFromRateLimit) return;
    const verdict = await perIp(req);
    if (!verdict.isAllowed && verdict.isExceeded) throw limitExceeded('Too many requests from this address', verdict.ttl);
  });
  const perParticipant = app.createRateLimit({ max: limits.perParticipantPerMinute, timeWindow: 60_000, keyGenerator: (req) => participantKeys.get(req) ?? req.ip });
  return async (req, identity, room) => {
    participantKeys.set(req, `${room}\u0000${identity}`);
    const verdict = await perParticipant(req);
    if (!verdict.isAllowed && verdict.isExceeded) throw limitExceeded('Too many delegation requests for this participant', verdict.ttl);
  };
}
