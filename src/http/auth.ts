import { timingSafeEqual, createHash } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

export function bearerToken(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (typeof h !== 'string') return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  return m ? m[1]! : null;
}

/** Constant-time comparison of a presented admin token with the configured one. */
export function isAdminToken(presented: string | null, adminToken: string | null): boolean {
  if (!presented || !adminToken) return false;
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(adminToken).digest();
  return timingSafeEqual(a, b);
}
