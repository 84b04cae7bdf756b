import { createHash } from 'node:crypto';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { Clock } from '../clock.js';
import { matrixError, shuttingDown, unavailable } from '../errors.js';
import { LiveKitAuthError, type LiveKitAuth } from '../livekit/auth.js';
import { PARTICIPANT_EVENTS, webhookEventLabel } from '../livekit/classify.js';
import { DEDUPE_WINDOW_MS, type WebhookIntake } from '../livekit/webhook-intake.js';
import type { Metrics } from '../metrics.js';
import type { WebhookRecord } from '../store/store.js';

const WEBHOOK_BODY_LIMIT = 1024 * 1024;

// ignoreBOM keeps a leading BOM in the text, so the text hashes exactly like the raw bytes LiveKit signed.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * LiveKit's signed webhooks, on `/livekit/webhook` and lk-jwt-service's `/sfu_webhook`. The body is verified on its
 * exact bytes before it is parsed, then recorded durably (with the delegations' change, on a single node), then
 * acknowledged.
 */
export async function webhookRoutes(app: FastifyInstance, deps: { auth: LiveKitAuth; intake: WebhookIntake; metrics: Metrics; clock: Clock; isShuttingDown: () => boolean }): Promise<void> {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(['application/webhook+json', 'application/json'], { parseAs: 'buffer', bodyLimit: WEBHOOK_BODY_LIMIT }, (_req, body, done) => done(null, body));

  const handler = async (req: { body: unknown; headers: Record<string, string | string[] | undefined> }) => {
    if (deps.isShuttingDown()) throw shuttingDown();
    const raw = req.body;
    let text: string;
    try {
      if (!Buffer.isBuffer(raw)) throw new LiveKitAuthError('missing body');
      text = utf8.decode(raw);
    } catch {
      deps.metrics.webhooks.inc({ event: 'unverified', outcome: 'rejected' });
      throw matrixError('M_UNKNOWN_TOKEN', 'Webhook body is not UTF-8 text');
    }
    const authorization = typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined;
    let event;
    try {
      event = await deps.auth.verifyWebhook(text, authorization, raw as Buffer);
    } catch (err) {
      deps.metrics.webhooks.inc({ event: 'unverified', outcome: 'rejected' });
      if (err instanceof LiveKitAuthError) {
        throw matrixError(authorization ? 'M_UNKNOWN_TOKEN' : 'M_MISSING_TOKEN', `Webhook rejected: ${err.message}`);
      }
      throw err;
    }
    const label = webhookEventLabel(event.event);
    if (!(PARTICIPANT_EVENTS as readonly string[]).includes(event.event)) {
      deps.metrics.webhooks.inc({ event: label, outcome: 'ignored' });
      return { status: 'ignored' };
    }
    const now = deps.clock.now();
    const createdAt = event.createdAt * 1000;
    if (createdAt > 0 && createdAt < now - DEDUPE_WINDOW_MS) {
      deps.metrics.webhooks.inc({ event: label, outcome: 'stale' });
      return { status: 'stale' };
    }
    const rec: WebhookRecord = {
      id: event.id || `body_${createHash('sha256').update(raw as Buffer).digest('hex').slice(0, 32)}`,
      event: event.event,
      room: event.room,
      identity: event.identity,
      sid: event.sid,
      reason: event.reason,
      joinedAt: event.joinedAtMs,
      createdAt: createdAt || now,
      receivedAt: now,
    };
    let fresh: boolean;
    try {
      fresh = await deps.intake.record(rec);
    } catch {
      deps.metrics.webhooks.inc({ event: label, outcome: 'store_error' });
      throw unavailable('Could not record the webhook; retry');
    }
    if (!fresh) {
      deps.metrics.webhooks.inc({ event: label, outcome: 'duplicate' });
      return { status: 'duplicate' };
    }
    deps.metrics.webhooks.inc({ event: label, outcome: 'accepted' });
    return { status: 'accepted' };
  };

  // LiveKit's webhooks all come from one address: never throttle them. No per-request child logger: at thousands of
  // webhooks a second it was a visible share of intake, and the handler logs nothing of its own.
  const opts = { config: { exemptFromRateLimit: true }, childLoggerFactory: (logger: FastifyBaseLogger) => logger };
  app.post('/livekit/webhook', opts, handler);
  app.post('/sfu_webhook', opts, handler);
}
