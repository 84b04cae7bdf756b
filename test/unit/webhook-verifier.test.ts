import { createHash, createHmac } from 'node:crypto';
import fc from 'fast-check';
import { WebhookReceiver } from 'livekit-server-sdk';
import { describe, expect, it } from 'vitest';
import { LiveKitAuth } from '../../src/livekit/auth.js';
import { buildWebhookBody, signWebhook } from '../fakes/livekit.js';

const KEYS = new Map([
  ['key-one', 'secret-one'],
  ['key-two', 'a longer secret with ünïcödé'],
]);

const b64url = (s: string | Buffer) => Buffer.from(s).toString('base64url');

interface TokenSpec {
  alg: 'HS256' | 'HS384' | 'HS512' | 'none';
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
  signWith: string;
}

function jwt(spec: TokenSpec): string {
  const h = b64url(JSON.stringify({ alg: spec.alg, typ: 'JWT', ...spec.header }));
  const p = b64url(JSON.stringify(spec.claims));
  if (spec.alg === 'none') return `${h}.${p}.`;
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[spec.alg];
  return `${h}.${p}.${createHmac(hash, Buffer.from(spec.signWith, 'utf8')).update(`${h}.${p}`).digest('base64url')}`;
}

/** What livekit-server-sdk's WebhookReceiver says, given the key the token names. */
async function sdkVerdict(body: string, token: string): Promise<boolean> {
  let iss: unknown;
  try {
    iss = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')).iss;
  } catch {
    return false;
  }
  const secret = typeof iss === 'string' ? KEYS.get(iss) : undefined;
  if (secret === undefined) return false;
  try {
    await new WebhookReceiver(iss as string, secret).receive(body, token, false, 10);
    return true;
  } catch {
    return false;
  }
}

async function ourVerdict(auth: LiveKitAuth, body: string, token: string): Promise<boolean> {
  try {
    await auth.verifyWebhook(body, token);
    return true;
  } catch {
    return false;
  }
}

const body = buildWebhookBody({
  event: 'participant_left',
  room: { name: 'room-a', sid: 'RM_a' },
  participant: { sid: 'PA_1', identity: '@alice:example.org', state: 'DISCONNECTED', disconnectReason: 'CLIENT_INITIATED' },
});
const sha = (s: string) => createHash('sha256').update(s, 'utf8').digest('base64');

describe('the fast webhook verifier agrees with WebhookReceiver', () => {
  it('takes the fast path for tokens signed as LiveKit signs them, and accepts them', async () => {
    const auth = new LiveKitAuth(KEYS);
    for (const signer of ['sdk', 'livekit'] as const) {
      const token = await signWebhook(body, 'key-two', KEYS.get('key-two')!, { signer });
      expect(await ourVerdict(auth, body, token)).toBe(true);
      expect(await sdkVerdict(body, token)).toBe(true);
    }
    expect(auth.webhookPaths).toEqual({ fast: 2, sdk: 0 });
  });

  it('refuses a validly signed HS384 or HS512 token that WebhookReceiver would accept', async () => {
    const auth = new LiveKitAuth(KEYS);
    const now = Math.floor(Date.now() / 1000);
    for (const alg of ['HS384', 'HS512'] as const) {
      const token = jwt({ alg, header: {}, claims: { iss: 'key-one', exp: now + 300, nbf: now, sha256: sha(body) }, signWith: 'secret-one' });
      expect(await sdkVerdict(body, token)).toBe(true);
      expect(await ourVerdict(auth, body, token)).toBe(false);
    }
  });

  it('agrees on accepted and rejected inputs alike (property test over claims, headers, keys and bodies)', async () => {
    const auth = new LiveKitAuth(KEYS);
    const now = Math.floor(Date.now() / 1000);
    // Each field is as LiveKit sends it most of the time, so both accepted and refused tokens come up often.
    const mostly = <T,>(valid: fc.Arbitrary<T>, invalid: fc.Arbitrary<T>) => fc.oneof({ arbitrary: valid, weight: 4 }, { arbitrary: invalid, weight: 1 });
    const spec = fc.record({
      alg: mostly(fc.constant<TokenSpec['alg']>('HS256'), fc.constantFrom<TokenSpec['alg']>('HS384', 'none')),
      header: mostly(fc.constant<Record<string, unknown>>({}), fc.constantFrom<Record<string, unknown>>({ kid: 'x' }, { crit: ['b64'], b64: false }, { typ: 5 }, { crit: ['exp'] })),
      iss: mostly(fc.constantFrom<unknown>('key-one', 'key-two'), fc.constantFrom<unknown>('nobody', undefined, 7)),
      exp: mostly(fc.integer({ min: -5, max: 400 }).map((d) => now + d), fc.oneof(fc.constant(undefined), fc.integer({ min: -400, max: -5 }).map((d) => now + d), fc.constantFrom<unknown>('soon', null, now + 0.5, [now]))),
      nbf: mostly(fc.oneof(fc.constant(undefined), fc.integer({ min: -400, max: 5 }).map((d) => now + d)), fc.oneof(fc.integer({ min: 5, max: 400 }).map((d) => now + d), fc.constantFrom<unknown>('now', null))),
      iat: mostly(fc.constantFrom<unknown>(undefined, now), fc.constant<unknown>('yesterday')),
      shaOf: mostly(fc.constant('body'), fc.constantFrom('other', 'missing', 'number')),
      secretRight: mostly(fc.constant(true), fc.constant(false)),
      bodyVariant: mostly(fc.constantFrom('same', 'bom'), fc.constantFrom('tampered', 'not-json')),
      tokenMutation: mostly(fc.constant('none'), fc.constantFrom('flip-signature', 'pad', 'swap-dot', 'bearer', 'whitespace')),
    });
    const seen = { accepted: 0, refused: 0 };
    await fc.assert(
      fc.asyncProperty(spec, async (s) => {
        const signedBody = s.bodyVariant === 'not-json' ? 'not json at all' : s.bodyVariant === 'bom' ? `\uFEFF${body}` : body;
        const claims: Record<string, unknown> = {};
        if (s.iss !== undefined) claims.iss = s.iss;
        if (s.exp !== undefined) claims.exp = s.exp;
        if (s.nbf !== undefined) claims.nbf = s.nbf;
        if (s.iat !== undefined) claims.iat = s.iat;
        if (s.shaOf === 'body') claims.sha256 = sha(signedBody);
        else if (s.shaOf === 'other') claims.sha256 = sha(`${signedBody} `);
        else if (s.shaOf === 'number') claims.sha256 = 5;
        const secret = typeof s.iss === 'string' && KEYS.has(s.iss) && s.secretRight ? KEYS.get(s.iss)! : 'wrong secret';
        let token = jwt({ alg: s.alg, header: s.header, claims, signWith: secret });
        if (s.tokenMutation === 'flip-signature') token = token.slice(0, -2) + (token.at(-2) === 'A' ? 'B' : 'A') + token.at(-1);
        else if (s.tokenMutation === 'pad') token = `${token}=`;
        else if (s.tokenMutation === 'swap-dot') token = token.replace('.', '..');
        else if (s.tokenMutation === 'bearer') token = `Bearer ${token}`;
        else if (s.tokenMutation === 'whitespace') token = ` ${token}`;
        const sentBody = s.bodyVariant === 'tampered' ? signedBody.replace('CLIENT_INITIATED', 'DUPLICATE_IDENTITY') : signedBody;
        const sdk = await sdkVerdict(sentBody, token);
        const ours = await ourVerdict(auth, sentBody, token);
        const otherHmac = s.alg === 'HS384';
        expect(ours).toBe(otherHmac ? false : sdk);
        seen[ours ? 'accepted' : 'refused']++;
      }),
      { numRuns: 1500, seed: 20261126 },
    );
    expect(seen.accepted).toBeGreaterThan(50);
    expect(seen.refused).toBeGreaterThan(100);
    // Tokens with extra header fields (a kid) are valid too, but only WebhookReceiver judges those.
    expect(auth.webhookPaths.fast).toBeGreaterThan(seen.accepted / 2);
    expect(auth.webhookPaths.fast).toBeLessThanOrEqual(seen.accepted);
  });
});
