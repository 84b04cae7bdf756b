import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { buildWebhookBody, mintParticipantToken, signWebhook, type WebhookSender } from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { delegate, delegationState, uniqueName, webhookSender, type Participant } from '../helpers/scenario.js';
import { fcParams } from './support.js';

/**
 * Random and malformed input over real HTTP: every refusal is a Matrix-style 4xx, nothing is a 5xx, the daemon stays
 * up, and no delegation is created or changed.
 */

interface Answer {
  status: number;
  body: unknown;
  text: string;
}

async function send(url: string, init: { method: string; headers?: Record<string, string>; body?: string | Uint8Array }): Promise<Answer> {
  const res = await fetch(url, { method: init.method, headers: init.headers ?? {}, ...(init.body !== undefined ? { body: init.body } : {}) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the assertion below says so
  }
  return { status: res.status, body, text };
}

function expectMatrixError(a: Answer, what: string): void {
  expect(a.status, `${what}: status ${a.status} ${a.text.slice(0, 200)}`).toBeGreaterThanOrEqual(400);
  expect(a.status, `${what}: status ${a.status} ${a.text.slice(0, 200)}`).toBeLessThan(500);
  const body = a.body as { errcode?: unknown; error?: unknown } | null;
  expect(typeof body === 'object' && body !== null, `${what}: JSON object body, got ${a.text.slice(0, 200)}`).toBe(true);
  expect(typeof body!.errcode, `${what}: errcode`).toBe('string');
  expect(body!.errcode as string).toMatch(/^M_[A-Z_]+$/);
  expect(typeof body!.error, `${what}: error`).toBe('string');
}

const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 200 });
const headerSafe = printable.map((s) => s.trim());

/** Bodies that are not a valid delegation: any JSON value, JSON text of any shape, non-JSON text and bytes. */
function junkBodies(valid: () => Record<string, unknown>): fc.Arbitrary<string | Uint8Array> {
  const field = fc.constantFrom('homeserver', 'dialect', 'token', 'timeout_ms', 'actions', 'access_token');
  const wrongValue = fc.oneof(
    fc.anything(),
    fc.constant(null),
    fc.constant(''),
    fc.integer(),
    fc.double(),
    fc.string(),
    fc.array(fc.string()),
    fc.dictionary(fc.string(), fc.anything()),
    // JSON.stringify drops a key whose value is undefined: an optional field would vanish and leave a valid body.
  ).filter((v) => v !== undefined);
  const invalidByField: Record<string, fc.Arbitrary<unknown>> = {
    homeserver: fc.oneof(wrongValue.filter((v) => typeof v !== 'string'), fc.constant(''), fc.webUrl(), fc.string({ minLength: 2049, maxLength: 3000 }), fc.constantFrom('javascript:alert(1)', 'file:///etc/passwd', 'https://user:pw@hs.example', 'https://hs.example?x=1', 'https://hs.example#f')),
    dialect: wrongValue.filter((v) => v !== 'futures' && v !== 'delayed_events'),
    token: fc.oneof(wrongValue.filter((v) => typeof v !== 'string'), fc.constant(''), fc.string({ minLength: 4097, maxLength: 5000 })),
    timeout_ms: fc.oneof(wrongValue.filter((v) => !Number.isInteger(v)), fc.integer({ max: 999 }), fc.integer({ min: 86_400_001 }), fc.constant('60000')),
    actions: fc.oneof(
      wrongValue.filter((v) => v === null || typeof v !== 'object' || Array.isArray(v)),
      fc.record({ leave: fc.string().filter((s) => !/^[A-Za-z0-9._~:-]{1,255}$/.test(s)) }),
      fc.record({ unknown: fc.string() }),
    ),
    access_token: fc.oneof(wrongValue.filter((v) => typeof v !== 'string'), fc.constant('')),
  };
  const mutated = fc.oneof(
    field.map((f) => {
      const b = valid();
      delete b[f];
      return f === 'actions' || f === 'access_token' ? { ...b, extra: true } : b;
    }),
    fc.tuple(field, fc.constant(null)).chain(([f]) => invalidByField[f]!.map((v) => ({ ...valid(), [f]: v }))),
    // Not `__proto__` (a spread sets the prototype, and the key vanishes) nor undefined (JSON.stringify drops it).
    fc
      .tuple(
        fc.string({ minLength: 1 }).filter((k) => !['homeserver', 'dialect', 'token', 'timeout_ms', 'actions', 'access_token', '__proto__'].includes(k)),
        fc.anything().filter((v) => v !== undefined),
      )
      .map(([k, v]) => ({ ...valid(), [k]: v })),
    fc.constant({ ...valid(), dialect: 'delayed_events', actions: { leave: 'leave' } }),
    fc.constant({ ...valid(), access_token: 'syt_x' }),
  );
  return fc.oneof(
    fc.anything().map((v) => JSON.stringify(v) ?? ''),
    fc.json(),
    fc.string(),
    fc.string({ unit: 'binary' }),
    fc.uint8Array({ maxLength: 512 }),
    mutated.map((v) => JSON.stringify(v)),
    fc.integer({ min: 1, max: 20_000 }).map((n) => '['.repeat(n) + ']'.repeat(n)),
    fc.integer({ min: 1, max: 5_000 }).map((n) => '{"a":'.repeat(n) + '1' + '}'.repeat(n)),
    fc.integer({ min: 1, max: 2_000 }).map((n) => '{"__proto__":'.repeat(n) + '{}' + '}'.repeat(n)),
    fc.constantFrom('{"constructor":{"prototype":{"polluted":true}}}', '{"__proto__":{"polluted":true}}', '', ' ', 'null', '"a"', '{', '{"homeserver":"https://hs.example"'),
  );
}

const contentTypes = fc.oneof(
  { weight: 6, arbitrary: fc.constant('application/json') },
  { weight: 3, arbitrary: fc.constantFrom('application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml', 'application/webhook+json', 'application/octet-stream', 'APPLICATION/JSON', 'application/json; charset=utf-16', '*/*', '') },
  { weight: 1, arbitrary: fc.stringMatching(/^[a-z]{1,10}\/[a-z0-9.+-]{1,20}$/) },
);

/** Authorization header values that prove nothing: junk, look-alike JWTs, alg=none, other keys, no Bearer. */
function junkAuthorization(): fc.Arbitrary<string | null> {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const jwtLike = fc.tuple(fc.json(), fc.json(), printable).map(([h, p, s]) => `${Buffer.from(h).toString('base64url')}.${Buffer.from(p).toString('base64url')}.${Buffer.from(s).toString('base64url')}`);
  const algNone = fc.record({ sub: printable, iss: fc.constant(API_KEY), video: fc.constant({ room: 'r', roomJoin: true }) }).map((claims) => `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`);
  const otherAlg = fc.constantFrom('HS384', 'HS512', 'RS256').map((alg) => {
    const input = `${b64({ alg, typ: 'JWT' })}.${b64({ sub: 'x', iss: API_KEY, exp: Math.floor(Date.now() / 1000) + 600, video: { room: 'r', roomJoin: true } })}`;
    return `${input}.${createHmac('sha256', API_SECRET).update(input).digest('base64url')}`;
  });
  return fc.oneof(fc.constant(null), headerSafe, jwtLike, algNone, otherAlg, fc.constant(''), fc.constant('Bearer'), fc.constant('Basic YWRtaW46YWRtaW4='));
}

describe('fuzzing the HTTP API', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;
  let jwt: string;
  let waiting: Participant;
  let connected: Participant;
  let rowsBefore: string;

  const validBody = () => ({ homeserver: hs.url, dialect: 'futures', token: 'ft_valid_looking_token', timeout_ms: 60_000 });

  /** Every stored delegation with its state: what must not change. */
  const snapshot = async (): Promise<string> => {
    const page = await d.daemon.store.listDelegations({ limit: 1000 });
    return JSON.stringify(page.items.map((x) => [x.id, x.state, x.sid, x.room, x.identity]));
  };

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    d = await startDaemon({ SIDECAR_HOMESERVERS: hs.url, SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false', SIDECAR_JOIN_TIMEOUT_MS: '600000', LOG_LEVEL: 'silent' });
    lk = webhookSender(d.url);
    waiting = await delegate(d.url, hs, 'futures', { timeoutMs: 120_000 });
    connected = await delegate(d.url, hs, 'delayed_events', { timeoutMs: 120_000 });
    await lk.participantJoined(connected.room, connected);
    await new Promise((r) => setTimeout(r, 100));
    expect((await delegationState(d.url, connected)).state).toBe('connected');
    jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: uniqueName('fuzzer'), room: uniqueName('room') });
    rowsBefore = await snapshot();
  });

  afterAll(async () => {
    await d.stop();
    await hs.close();
  });

  const assertUnharmed = async (): Promise<void> => {
    expect((await send(`${d.url}/livez`, { method: 'GET' })).status).toBe(200);
    expect(d.daemon.engine.openCount).toBe(2);
    expect(await snapshot()).toBe(rowsBefore);
    expect((await delegationState(d.url, waiting)).state).toBe('awaiting_join');
    expect((await delegationState(d.url, connected)).state).toBe('connected');
  };

  it('refuses malformed delegation requests from a participant with a Matrix 4xx', async () => {
    await fc.assert(
      fc.asyncProperty(junkBodies(validBody), contentTypes, async (body, contentType) => {
        const headers: Record<string, string> = { authorization: `Bearer ${jwt}` };
        if (contentType) headers['content-type'] = contentType;
        expectMatrixError(await send(`${d.url}/v1/delegations`, { method: 'POST', headers, body }), 'POST /v1/delegations');
      }),
      fcParams({ numRuns: 250 }),
    );
    await assertUnharmed();
  });

  it('refuses delegation requests without a valid participant token, whatever the body', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(junkBodies(validBody), fc.constant(JSON.stringify({ homeserver: 'https://hs.example', dialect: 'futures', token: 'ft_x', timeout_ms: 60_000 }))), junkAuthorization(), async (body, authorization) => {
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (authorization !== null) headers.authorization = authorization.startsWith('Bearer') || authorization === '' ? authorization : `Bearer ${authorization}`;
        expectMatrixError(await send(`${d.url}/v1/delegations`, { method: 'POST', headers, body }), 'POST /v1/delegations without a token');
      }),
      fcParams({ numRuns: 200 }),
    );
    await assertUnharmed();
  });

  it('refuses bodies over 64 KiB with 413 M_TOO_LARGE', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 64 * 1024 + 1, max: 1024 * 1024 }), fc.constantFrom('token', 'homeserver', 'pad'), async (size, where) => {
        const body = JSON.stringify({ ...validBody(), [where]: 'x'.repeat(size) });
        const a = await send(`${d.url}/v1/delegations`, { method: 'POST', headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' }, body });
        expectMatrixError(a, 'a huge body');
        expect(a.status).toBe(413);
      }),
      fcParams({ numRuns: 12 }),
    );
    await assertUnharmed();
  });

  it('refuses unverifiable webhooks with 401, and changes nothing for correctly signed junk', async () => {
    const accepted = new Set(['ignored', 'stale', 'accepted', 'duplicate']);
    await fc.assert(
      fc.asyncProperty(
        // Near-valid events name a participant no delegation belongs to: a correctly signed one may be accepted.
        junkBodies(() => JSON.parse(buildWebhookBody({ event: 'participant_left', room: { name: 'no-such-room' }, participant: { sid: 'PA_nobody', identity: 'nobody', state: 'DISCONNECTED' } })) as Record<string, unknown>),
        fc.boolean(),
        junkAuthorization(),
        fc.constantFrom('application/webhook+json', 'application/json'),
        async (body, signed, junk, contentType) => {
          const text = typeof body === 'string' ? body : Buffer.from(body).toString('latin1');
          const authorization = signed ? await signWebhook(text, API_KEY, API_SECRET) : junk;
          const headers: Record<string, string> = { 'content-type': contentType };
          if (authorization !== null) headers.authorization = authorization;
          const a = await send(`${d.url}/livekit/webhook`, { method: 'POST', headers, body: typeof body === 'string' ? body : Buffer.from(body) });
          if (a.status >= 200 && a.status < 300) {
            expect(signed, `an unsigned webhook was accepted: ${a.text}`).toBe(true);
            expect(accepted.has((a.body as { status?: string }).status ?? ''), a.text).toBe(true);
          } else {
            expectMatrixError(a, 'POST /livekit/webhook');
            if (!signed) expect(a.status).toBe(401);
          }
        },
      ),
      fcParams({ numRuns: 250 }),
    );
    await new Promise((r) => setTimeout(r, 100));
    await assertUnharmed();
  });

  it('refuses webhooks that are too large or of another content type', async () => {
    const big = 'x'.repeat(1024 * 1024 + 1);
    const tooLarge = await send(`${d.url}/livekit/webhook`, { method: 'POST', headers: { 'content-type': 'application/webhook+json', authorization: await signWebhook(big, API_KEY, API_SECRET) }, body: big });
    expectMatrixError(tooLarge, 'a webhook over 1 MiB');
    expect(tooLarge.status).toBe(413);
    await fc.assert(
      fc.asyncProperty(contentTypes.filter((c) => !/^application\/(webhook\+)?json\b/i.test(c)), fc.json(), async (contentType, body) => {
        const headers: Record<string, string> = { authorization: await signWebhook(body, API_KEY, API_SECRET) };
        if (contentType) headers['content-type'] = contentType;
        const a = await send(`${d.url}/livekit/webhook`, { method: 'POST', headers, body });
        expectMatrixError(a, `a webhook as ${contentType}`);
      }),
      fcParams({ numRuns: 60 }),
    );
    await assertUnharmed();
  });

  it('refuses malformed Element Call delegations on /delegate_delayed_leave, if the route exists', async () => {
    const probe = await send(`${d.url}/delegate_delayed_leave`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    if (probe.status === 404) return;
    const member = () => ({
      room_id: '!room:hs.example',
      slot_id: 'm.call#ROOM',
      openid_token: { access_token: 'openid', token_type: 'Bearer', matrix_server_name: 'hs.example', expires_in: 3600 },
      member: { id: 'member', claimed_user_id: '@alice:hs.example', claimed_device_id: 'DEVICE' },
      delay_id: 'syd_x',
      delay_timeout: 60_000,
      delay_cs_api_url: 'https://hs.example',
    });
    await fc.assert(
      fc.asyncProperty(fc.oneof(junkBodies(member), fc.constant(JSON.stringify(member()))), contentTypes, async (body, contentType) => {
        const headers: Record<string, string> = {};
        if (contentType) headers['content-type'] = contentType;
        expectMatrixError(await send(`${d.url}/delegate_delayed_leave`, { method: 'POST', headers, body }), 'POST /delegate_delayed_leave');
      }),
      fcParams({ numRuns: 200 }),
    );
    await assertUnharmed();
  });

  it('refuses the admin API to anything but the admin token', async () => {
    const routes = fc.constantFrom(
      ['GET', '/v1/admin/delegations'],
      ['GET', '/v1/admin/stats'],
      ['GET', `/v1/admin/delegations/${'x'}`],
      ['DELETE', '/v1/admin/delegations/ID'],
      ['DELETE', '/v1/delegations/ID'],
      ['GET', '/v1/delegations/ID'],
    );
    await fc.assert(
      fc.asyncProperty(routes, junkAuthorization(), fc.constantFrom(waiting, connected), async ([method, path], authorization, target) => {
        const headers: Record<string, string> = {};
        if (authorization !== null) headers.authorization = authorization.startsWith('Bearer') || authorization === '' ? authorization : `Bearer ${authorization}`;
        const a = await send(`${d.url}${path!.replace('ID', target.delegationId)}`, { method: method!, headers });
        expectMatrixError(a, `${method} ${path}`);
      }),
      fcParams({ numRuns: 200 }),
    );
    await assertUnharmed();
  });

  it('answers the admin token with 200 or a Matrix 4xx for any query, id and method', async () => {
    const segment = fc.oneof(fc.string({ maxLength: 80 }), fc.constantFrom('..', '%00', '%2e%2e', 'dg_', 'dg_unknown', '\u0000', '😀'.repeat(20)));
    const query = fc.dictionary(fc.constantFrom('room', 'identity', 'state', 'limit', 'cursor', 'other', '__proto__'), fc.oneof(fc.string({ maxLength: 100 }), fc.nat().map(String), fc.constantFrom('0', '1001', '-1', 'connected', 'fired', '1e3')));
    await fc.assert(
      fc.asyncProperty(query, segment, fc.constantFrom('GET', 'DELETE', 'POST', 'PUT', 'PATCH'), async (q, id, method) => {
        const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
        const list = await send(`${d.url}/v1/admin/delegations?${new URLSearchParams(q).toString()}`, { method: 'GET', headers });
        if (list.status !== 200) expectMatrixError(list, `GET /v1/admin/delegations?${new URLSearchParams(q).toString()}`);
        const one = await send(`${d.url}/v1/admin/delegations/${encodeURIComponent(id)}`, { method, headers });
        expect(one.status, `${method} /v1/admin/delegations/${encodeURIComponent(id)} ${one.text.slice(0, 200)}`).not.toBe(200);
        expectMatrixError(one, `${method} /v1/admin/delegations/${encodeURIComponent(id)}`);
      }),
      fcParams({ numRuns: 200 }),
    );
    await assertUnharmed();
  });

  it('answers unknown paths and methods with a Matrix 4xx', async () => {
    const path = fc.array(fc.oneof(fc.constantFrom('v1', 'admin', 'delegations', 'livekit', 'webhook', 'metrics', '..', ''), fc.string({ maxLength: 20 })), { maxLength: 5 });
    await fc.assert(
      fc.asyncProperty(path, fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'), async (segments, method) => {
        const p = `/${segments.map(encodeURIComponent).join('/')}`;
        if (['/livez', '/readyz', '/metrics', '/delegate_delayed_leave', '/v1/watch', '/console'].some((known) => p === known || p.startsWith(`${known}/`))) return;
        const a = await send(`${d.url}${p}`, { method, headers: { 'content-type': 'application/json' }, ...(method === 'GET' || method === 'OPTIONS' ? {} : { body: '{}' }) });
        if (a.status < 400) return;
        expectMatrixError(a, `${method} ${p}`);
      }),
      fcParams({ numRuns: 200 }),
    );
    await assertUnharmed();
  });
});

describe('ownership under random identities and rooms', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let owner: Participant;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    d = await startDaemon({ SIDECAR_HOMESERVERS: hs.url, LOG_LEVEL: 'silent' });
    owner = await delegate(d.url, hs, 'futures', { timeoutMs: 120_000 });
  });
  afterAll(async () => {
    await d.stop();
    await hs.close();
  });

  it('hides a delegation from every other identity and from the same identity in another room', async () => {
    const other = fc.oneof(
      fc.record({ identity: fc.string({ minLength: 1, maxLength: 40 }), room: fc.constant('SAME') }),
      fc.record({ identity: fc.constant('SAME'), room: fc.string({ minLength: 1, maxLength: 40 }) }),
      fc.record({ identity: fc.string({ minLength: 1, maxLength: 40 }), room: fc.string({ minLength: 1, maxLength: 40 }) }),
    );
    await fc.assert(
      fc.asyncProperty(other, fc.constantFrom('GET', 'DELETE'), async (who, method) => {
        const identity = who.identity === 'SAME' ? owner.identity : who.identity;
        const room = who.room === 'SAME' ? owner.room : who.room;
        fc.pre(identity !== owner.identity || room !== owner.room);
        const token = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
        const a = await send(`${d.url}/v1/delegations/${owner.delegationId}`, { method, headers: { authorization: `Bearer ${token}` } });
        expect(a.status).toBe(404);
        expect(a.body).toMatchObject({ errcode: 'M_NOT_FOUND' });
      }),
      fcParams({ numRuns: 150 }),
    );
    expect((await delegationState(d.url, owner)).state).toBe('awaiting_join');
  });
});

describe('the per-IP rate limit and X-Forwarded-For', () => {
  const forwardedFor = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.array(fc.ipV4(), { minLength: 2, maxLength: 4 }).map((xs) => xs.join(', ')),
    headerSafe,
  );

  it('ignores X-Forwarded-For from an untrusted peer: spoofed addresses share one bucket and get 429', async () => {
    const d = await startDaemon({ SIDECAR_RATE_LIMIT_PER_MINUTE: '5', LOG_LEVEL: 'silent' });
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(forwardedFor, { minLength: 6, maxLength: 6 }), async (spoofed) => {
          const statuses: number[] = [];
          let last: Answer | undefined;
          for (const xff of spoofed) {
            last = await send(`${d.url}/v1/delegations/dg_nothing`, { method: 'GET', headers: { 'x-forwarded-for': xff } });
            statuses.push(last.status);
          }
          expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(1);
          expectMatrixError(last!, 'the sixth request');
          expect(last!.body).toMatchObject({ errcode: 'M_LIMIT_EXCEEDED' });
          expect((last!.body as { retry_after_ms: number }).retry_after_ms).toBeGreaterThan(0);
        }),
        fcParams({ numRuns: 5 }),
      );
      expect((await send(`${d.url}/livez`, { method: 'GET' })).status).toBe(200);
    } finally {
      await d.stop();
    }
  });

  it('counts each client behind a trusted proxy (SIDECAR_TRUST_PROXY) in its own bucket', async () => {
    const d = await startDaemon({ SIDECAR_RATE_LIMIT_PER_MINUTE: '3', SIDECAR_TRUST_PROXY: '127.0.0.1', LOG_LEVEL: 'silent' });
    try {
      const seen = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(fc.uniqueArray(fc.ipV4(), { minLength: 4, maxLength: 8 }), async (clients) => {
          for (const ip of clients) {
            const count = (seen.get(ip) ?? 0) + 1;
            seen.set(ip, count);
            const a = await send(`${d.url}/v1/delegations/dg_nothing`, { method: 'GET', headers: { 'x-forwarded-for': ip } });
            expect(a.status, `request ${count} from ${ip}`).toBe(count <= 3 ? 401 : 429);
          }
        }),
        fcParams({ numRuns: 5 }),
      );
      const one = '203.0.113.77';
      const earlier = seen.get(one) ?? 0;
      const statuses: number[] = [];
      for (let i = 0; i < 4; i++) statuses.push((await send(`${d.url}/v1/delegations/dg_nothing`, { method: 'GET', headers: { 'x-forwarded-for': one } })).status);
      expect(statuses).toEqual([1, 2, 3, 4].map((n) => (earlier + n <= 3 ? 401 : 429)));
      expect(statuses).toContain(429);
    } finally {
      await d.stop();
    }
  });
});
