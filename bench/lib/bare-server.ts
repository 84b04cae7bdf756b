/**
 * The reference for webhook intake: a bare Fastify POST route that reads the raw body and answers 200, in its own
 * process. `BARE_VARIANT` adds one check for diagnosis: `receiver` verifies with livekit-server-sdk's
 * `WebhookReceiver` (what the daemon does), `crypto` does the same checks with node:crypto (what a fast path would).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import Fastify from 'fastify';
import { WebhookReceiver } from 'livekit-server-sdk';
import { API_KEY, API_SECRET } from './webhooks.js';

const variant = process.env.BARE_VARIANT ?? 'bare';
const receiver = new WebhookReceiver(API_KEY, API_SECRET);
const secret = Buffer.from(API_SECRET);
const TOLERANCE_S = 10;

/** Bench-only estimate of a node:crypto verifier's cost; no claim here that it agrees with `WebhookReceiver`. */
function cryptoCheck(body: Buffer, jwt: string): boolean {
  const parts = jwt.split('.');
  if (parts.length !== 3) return false;
  const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString()) as { alg?: string };
  if (header.alg !== 'HS256') return false;
  const expected = createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2]!, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return false;
  const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString()) as { iss?: string; exp?: number; nbf?: number; sha256?: string };
  const now = Date.now() / 1000;
  if (claims.iss !== API_KEY || typeof claims.exp !== 'number' || claims.exp < now - TOLERANCE_S) return false;
  if (typeof claims.nbf === 'number' && claims.nbf > now + TOLERANCE_S) return false;
  return claims.sha256 === createHash('sha256').update(body).digest('base64');
}

const app = Fastify({ logger: false });
app.addContentTypeParser(['application/webhook+json', 'application/json'], { parseAs: 'buffer', bodyLimit: 1024 * 1024 }, (_req, body, done) => done(null, body));
app.post('/livekit/webhook', async (req, reply) => {
  const auth = req.headers.authorization ?? '';
  if (variant === 'receiver') await receiver.receive((req.body as Buffer).toString('utf8'), auth, false, TOLERANCE_S);
  else if (variant === 'crypto' && !cryptoCheck(req.body as Buffer, auth)) return reply.code(401).send({ errcode: 'M_UNKNOWN_TOKEN' });
  return { status: 'accepted' };
});
const address = await app.listen({ host: '127.0.0.1', port: 0 });
process.send!({ type: 'ready', url: address });
process.on('disconnect', () => void app.close().then(() => process.exit(0)));
