import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { MatrixError, matrixError } from '../errors.js';

/** Keywords that mean "a value out of range" (M_INVALID_PARAM); every other schema failure is a malformed body (M_BAD_JSON). */
const RANGE_KEYWORDS = new Set(['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minLength', 'maxLength']);

/** Maps everything Fastify or our handlers throw to Matrix-style `{errcode, error}` JSON; hides 5xx details. */
function toMatrixError(err: FastifyError | MatrixError | Error): MatrixError {
  if (err instanceof MatrixError) return err;
  const e = err as FastifyError & { retryAfterMs?: number };
  if (e.validation) {
    const first = e.validation[0];
    const where = `${e.validationContext ?? 'body'}${first?.instancePath ?? ''}`;
    if (first && RANGE_KEYWORDS.has(first.keyword)) return matrixError('M_INVALID_PARAM', `${where} ${first.message ?? 'is out of range'}`);
    if (first?.keyword === 'additionalProperties') {
      const extra = (first.params as { additionalProperty?: string }).additionalProperty;
      return matrixError('M_BAD_JSON', `${where} has an unknown field ${JSON.stringify(extra)}`);
    }
    return matrixError('M_BAD_JSON', `${where} ${first?.message ?? 'is malformed'}`);
  }
  switch (e.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new MatrixError(415, 'M_NOT_JSON', 'Content-Type must be application/json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return matrixError('M_TOO_LARGE', 'Request body too large');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return matrixError('M_NOT_JSON', 'Request body is not valid JSON');
  }
  const status = e.statusCode ?? 500;
  if (status === 429) return matrixError('M_LIMIT_EXCEEDED', 'Too many requests', { retry_after_ms: e.retryAfterMs ?? 1000 });
  if (status === 400 && err instanceof SyntaxError) return matrixError('M_NOT_JSON', 'Request body is not valid JSON');
  if (status >= 400 && status < 500) return new MatrixError(status, status === 404 ? 'M_NOT_FOUND' : 'M_UNKNOWN', e.message);
  return matrixError('M_UNKNOWN', 'Internal server error');
}

/** The one error handler (every route plugin inherits it) and the 404/405 answers. */
export function installErrorHandlers(app: FastifyInstance, routes: () => Map<string, Set<string>>): void {
  app.setErrorHandler((err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
    const m = toMatrixError(err);
    // A 503 is a decision (shutting down, store unreachable), logged where it is made.
    if (m.status >= 500 && m.status !== 503) req.log.error({ err }, 'request failed');
    void reply.status(m.status).headers(m.headers).send(m.toJSON());
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    const methods = matchRoute(routes(), path);
    if (methods) {
      void reply.status(405).header('allow', [...methods].join(', ')).send({ errcode: 'M_UNRECOGNIZED', error: `Method ${req.method} is not allowed here` });
      return;
    }
    void reply.status(404).send({ errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' });
  });
}

/** Which methods a registered route pattern (with `:param` segments) serves for this concrete path. */
function matchRoute(routes: Map<string, Set<string>>, path: string): Set<string> | null {
  const segs = path.split('/');
  for (const [pattern, methods] of routes) {
    const p = pattern.split('/');
    if (p.length !== segs.length) continue;
    if (p.every((s, i) => s.startsWith(':') ? segs[i] !== '' : s === segs[i])) return methods;
  }
  return null;
}
