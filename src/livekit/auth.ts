import { TokenVerifier, WebhookReceiver, type WebhookEvent } from 'livekit-server-sdk';

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

  constructor(keys: Map<string, string>) {
    for (const [key, secret] of keys) {
      this.verifiers.set(key, new TokenVerifier(key, secret));
      this.receivers.set(key, new WebhookReceiver(key, secret));
    }
  }

  /** The participant an access token was issued to; it must grant `roomJoin` for a named room. */
  async verifyParticipant(jwt: string): Promise<Participant> {
    const iss = issuerOf(jwt);
    const verifier = iss === null ? undefined : this.verifiers.get(iss);
    if (!verifier) throw new LiveKitAuthError('the access token was not issued with a known LiveKit API key');
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

  /** Verifies a webhook on its exact raw body and returns the event. */
  async verifyWebhook(rawBody: string, authorization: string | undefined): Promise<WebhookEvent> {
    if (!authorization) throw new LiveKitAuthError('missing Authorization header');
    const iss = issuerOf(authorization);
    const receiver = iss === null ? undefined : this.receivers.get(iss);
    if (!receiver) throw new LiveKitAuthError('webhook signed with an unknown API key');
    try {
      return await receiver.receive(rawBody, authorization, false, CLOCK_TOLERANCE_S);
    } catch (err) {
      throw new LiveKitAuthError(`webhook verification failed (${err instanceof Error ? err.message.slice(0, 80) : 'error'})`);
    }
  }
}
