/**
 * What every POST route of lk-jwt-service's surface shares (facts section 1.1): the body is decoded whatever its
 * Content-Type says, every answer (errors, 405 and OPTIONS included) carries the same CORS headers so that Element
 * Call's cross-origin probe can read it; errors are the app's `{errcode, error}`. Applied to an encapsulated scope, so
 * the app's JSON parser is not involved.
 */
import type { FastifyInstance } from 'fastify';

const LK_JWT_CORS_HEADERS = {
  'content-type': 'application/json',
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'POST',
  'access-control-allow-headers': 'Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token',
} as const;

export function lkJwtScope(scope: FastifyInstance): void {
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  // onSend also runs for the app-wide 503 sent from its onRequest hook while shutting down.
  scope.addHook('onSend', async (_req, reply) => {
    reply.headers(LK_JWT_CORS_HEADERS);
  });
}

/** OPTIONS answers 200 with an empty body; every method but POST and OPTIONS answers 405. */
export function lkJwtMethods(scope: FastifyInstance, path: string): void {
  scope.options(path, async (_req, reply) => reply.status(200).send());
  scope.route({
    method: ['GET', 'PUT', 'DELETE', 'PATCH'],
    url: path,
    handler: async (req, reply) =>
      reply.status(405).header('allow', 'POST, OPTIONS').send({ errcode: 'M_UNRECOGNIZED', error: `Method ${req.method} is not allowed here` }),
  });
}
