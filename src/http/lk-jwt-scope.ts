/**
 * What every POST route of lk-jwt-service's surface shares (facts section 1.1): the body is decoded whatever its
 * Content-Type says, every answer (errors, 405 and OPTIONS included) carries the same CORS headers so that Element
 * Call's cross-origin probe can read it, and errors are `{errcode, error}`. Applied to an encapsulated scope, so
 * neither the app's JSON parser nor its error mapping is involved.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { toMatrixError } from './errors.js';

export const LK_JWT_CORS_HEADERS = {
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
  scope.setErrorHandler((err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
    const m = toMatrixError(err);
    if (m.status >= 500 && m.status !== 503) req.log.error({ err }, 'request failed');
    void reply.status(m.status).send(m.toJSON());
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
