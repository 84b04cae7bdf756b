import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { TokenVerifier, WebhookEvent, WebhookReceiver } from 'livekit-server-sdk';
import { readWebhookFields, webhookFieldsOf, type WebhookFields } from './webhook-fields.js';

/** Seconds of clock skew tolerated on `nbf` / `exp` of LiveKit JWTs. */
const CLOCK_TOLERANCE_S = 10;

export class LiveKitAuthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LiveKitAuthError';
  }
}

/** The unverified `iss` of a JWT, used only to pick which key's secret to verify with. */
function issuerOf(jwt: string): string | null {
  const parts = jwt.split('.');
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as { iss?: unknown };
    return typeof claims.iss === 'string' ? claims.iss : null;
  } catch {
    return null;
  }
}

export interface Participant {
  identity: string;
  room: string;
}

/**
 * Verifies participants' LiveKit access tokens and LiveKit's webhook signatures against every configured key
 * (LiveKit's `keys:` may hold several; the token's `iss` names the one that signed it).
 */
export class LiveKitAuth {
  private readonly verifiers = new Map<string, TokenVerifier>();
  private readonly receivers = new Map<string, WebhookReceiver>();
  private readonly secrets = new Map<string, Buffer>();
  /** How many webhooks the fast path settled, and how many went to WebhookReceiver (for the differential tests). */
  readonly webhookPaths = { fast: 0, sdk: 0 };

  constructor(keys: Map<string, string>) {
    for (const [key, secret] of keys) {
      this.verifiers.set(key, new TokenVerifier(key, secret));
      this.receivers.set(key, new WebhookReceiver(key, secret));
      this.secrets.set(key, Buffer.from(secret, 'utf8'));
    }
  }

  /** The participant an access token was issued to; it must grant `roomJoin` for a named room. */
  async verifyParticipant(jwt: string): Promise<Participant> {
    const iss = issuerOf(jwt);
    const verifier = iss === null ? undefined : this.verifiers.get(iss);
    if (!verifier) throw new LiveKitAuthError('the access token was not issued with a known LiveKit API key');
    // LiveKit signs HS256; TokenVerifier would also take HS384/HS512 with the same secret. Refused like webhooks are.
    if (headerAlg(jwt) !== 'HS256') throw new LiveKitAuthError('the access token is not valid (only HS256 is accepted)');
    let claims;
    try {
      claims = await verifier.verify(jwt, CLOCK_TOLERANCE_S);
    } catch (err) {
      throw new LiveKitAuthError(`the access token is not valid (${(err as { code?: string }).code ?? 'verification failed'})`);
    }
    const room = claims.video?.room;
    if (!claims.sub) throw new LiveKitAuthError('the access token names no identity');
    if (!claims.video?.roomJoin || typeof room !== 'string' || room === '') throw new LiveKitAuthError('the access token does not grant joining a room');
    return { identity: claims.sub, room };
  }

  /**
   * Verifies a webhook on its exact raw body and returns the event. LiveKit's own tokens (canonical HS256 JWTs) are
   * checked here with node:crypto in microseconds; anything else goes to livekit-server-sdk's WebhookReceiver, whose
   * answer is final. The fast path accepts only a strict subset of what WebhookReceiver accepts, so the two agree
   * (test/unit/webhook-verifier.test.ts), except that a token signed with another HMAC algorithm is refused.
   */
  async verifyWebhook(rawBody: string, authorization: string | undefined, rawBytes?: Buffer): Promise<WebhookFields> {
    if (!authorization) throw new LiveKitAuthError('missing Authorization header');
    const fast = this.fastVerify(rawBody, authorization, rawBytes);
    if (fast) {
      this.webhookPaths.fast++;
      return fast;
    }
    this.webhookPaths.sdk++;
    const iss = issuerOf(authorization);
    const receiver = iss === null ? undefined : this.receivers.get(iss);
    if (!receiver) throw new LiveKitAuthError('webhook signed with an unknown API key');
    let event: WebhookEvent;
    try {
      event = await receiver.receive(rawBody, authorization, false, CLOCK_TOLERANCE_S);
    } catch (err) {
      throw new LiveKitAuthError(`webhook verification failed (${err instanceof Error ? err.message.slice(0, 80) : 'error'})`);
    }
    if (headerAlg(authorization) !== 'HS256') throw new LiveKitAuthError('webhook verification failed (only HS256 is accepted)');
    return webhookFieldsOf(event);
  }

  /** The event when the token is a canonical, valid HS256 JWT over this body; null to let WebhookReceiver decide. */
  private fastVerify(rawBody: string, jwt: string, rawBytes?: Buffer): WebhookFields | null {
    const parts = jwt.split('.');
    if (parts.length !== 3 || !parts.every((p) => CANONICAL_B64URL.test(p))) return null;
    const [h, p, sig] = parts as [string, string, string];
    const header = parseObject(Buffer.from(h, 'base64url').toString('utf8'));
    if (!header || header.alg !== 'HS256' || Object.keys(header).some((k) => k !== 'alg' && k !== 'typ') || (header.typ !== undefined && typeof header.typ !== 'string')) return null;
    const claims = parseObject(Buffer.from(p, 'base64url').toString('utf8'));
    if (!claims || typeof claims.iss !== 'string' || typeof claims.sha256 !== 'string') return null;
    const secret = this.secrets.get(claims.iss);
    if (!secret) return null;
    const expected = createHmac('sha256', secret).update(`${h}.${p}`).digest();
    const given = Buffer.from(sig, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected) || given.toString('base64url') !== sig) return null;
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.exp !== 'number' || claims.exp <= now - CLOCK_TOLERANCE_S) return null;
    if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || claims.nbf > now + CLOCK_TOLERANCE_S)) return null;
    if (claims.iat !== undefined && typeof claims.iat !== 'number') return null;
    const digest = createHash('sha256').update(rawBytes ?? Buffer.from(rawBody, 'utf8')).digest('base64');
    if (claims.sha256 !== digest) return null;
    try {
      // The fields read straight from the JSON (LiveKit's usual shape); the SDK's protobuf reading otherwise.
      const body = JSON.parse(rawBody) as unknown;
      return readWebhookFields(body) ?? webhookFieldsOf(WebhookEvent.fromJson(body as never, { ignoreUnknownFields: true }) as WebhookEvent);
    } catch {
      return null;
    }
  }
}

const CANONICAL_B64URL = /^[A-Za-z0-9_-]+$/;

function parseObject(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function headerAlg(jwt: string): unknown {
  return parseObject(Buffer.from(jwt.split('.')[0] ?? '', 'base64url').toString('utf8'))?.alg;
}
