import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';

/** The files of the operator console, with the content type each is served as. */
const FILES = [
  { route: '/console', file: 'index.html', type: 'text/html; charset=utf-8' },
  { route: '/console/console.js', file: 'console.js', type: 'text/javascript; charset=utf-8' },
  { route: '/console/console.css', file: 'console.css', type: 'text/css; charset=utf-8' },
] as const;

/**
 * Only our own script and stylesheet run; nothing inline, so a participant-chosen room or identity that slipped into
 * the DOM as markup still could not execute. `connect-src 'self'` covers the same-origin WebSocket (CSP Level 3,
 * every current browser); `ws: wss:` would have let a script talk to any host.
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/**
 * Where `public/console` is: two levels up from `src/http/console.ts` (run through tsx), three from the compiled
 * `dist/src/http/console.js`.
 */
export function findConsoleDir(moduleUrl: string = import.meta.url): string {
  const candidates = ['../../public/console/', '../../../public/console/'].map((rel) => fileURLToPath(new URL(rel, moduleUrl)));
  const found = candidates.find((dir) => FILES.every((f) => existsSync(dir + f.file)));
  if (!found) throw new Error(`operator console files not found; looked for ${FILES.map((f) => f.file).join(', ')} in ${candidates.join(' and ')}`);
  return found;
}

/**
 * `GET /console`: the operator console, a static page that talks to the admin API and `/v1/watch` with the admin
 * token the operator types in. The page holds no data of its own, so serving it needs no token.
 */
export async function consoleRoutes(app: FastifyInstance, opts: { dir?: string }): Promise<void> {
  const dir = opts.dir ?? findConsoleDir();
  for (const f of FILES) {
    // Read once at start-up: a missing or unreadable file stops the daemon now instead of failing a request later.
    const body = readFileSync(dir + f.file);
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    app.get(f.route, async (req, reply) => {
      void reply
        .header('content-type', f.type)
        // no-cache = revalidate every time, so an upgraded daemon never runs an old script; the ETag keeps that cheap.
        .header('cache-control', 'no-cache')
        .header('etag', etag)
        .header('content-security-policy', CONSOLE_CSP)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer');
      if (req.headers['if-none-match'] === etag) return reply.status(304).send();
      return reply.send(body);
    });
  }
  // The page's links are relative so that it also works behind a path prefix; `/console/` would resolve them one
  // level too deep.
  app.get('/console/', async (_req, reply) => reply.status(308).header('location', '../console').send());
}
