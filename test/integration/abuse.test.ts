import { createHmac, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import type { HomeserverAllowList } from '../../src/config.js';
import { checkHomeserverUrl, guardedLookup, isMetadataAddress, isPrivateAddress } from '../../src/homeserver/address-guard.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, sleep, spawnDaemon, startDaemon, waitFor, type ChildDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { fakeResolver } from '../helpers/resolver.js';
import { uniqueName } from '../helpers/scenario.js';

/**
 * Issue 21: what a red-team probe did with only a participant's LiveKit token or network access. Every homeserver,
 * federation server and `.well-known` here is a loopback fake or an injected resolver answer; nothing leaves the
 * machine (the metadata and transition addresses are refused before any connection is made).
 */

async function participant(identity = uniqueName('user'), room = uniqueName('room')): Promise<{ jwt: string; identity: string; room: string }> {
  return { identity, room, jwt: await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room }) };
}

/** POST /v1/delegations as a client behind a trusted proxy (X-Forwarded-For names the client). */
async function register(url: string, jwt: string, body: Record<string, unknown>, client?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}/v1/delegations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json', ...(client ? { 'x-forwarded-for': client } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** A homeserver without the futures endpoints: every call is 404 M_UNRECOGNIZED. */
async function startUnrecognizingHomeserver(): Promise<{ url: string; calls: () => number; close(): Promise<void> }> {
  let calls = 0;
  const server: Server = createServer((req, res) => {
    calls++;
    req.resume();
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    calls: () => calls,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A LiveKit-shaped participant token signed with another HMAC than HS256. */
function tokenSignedWith(alg: 'HS256' | 'HS384' | 'HS512', identity: string, room: string): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg, typ: 'JWT' })}.${b64({ sub: identity, iss: API_KEY, nbf: now - 5, exp: now + 600, video: { room, roomJoin: true } })}`;
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg];
  return `${input}.${createHmac(hash, API_SECRET).update(input).digest('base64url')}`;
}

/** Element Call's delegation request for `/delegate_delayed_leave`, naming the given Matrix server. */
function delegateDelayedLeaveBody(serverName: string, openIdToken: string): Record<string, unknown> {
  return {
    room_id: '!room:example.com',
    slot_id: 'm.call#',
    openid_token: { access_token: openIdToken, token_type: 'Bearer', matrix_server_name: serverName, expires_in: 3600 },
    member: { id: 'member', claimed_user_id: `@alice:${serverName}`, claimed_device_id: 'DEVICE' },
    delay_id: `syd_${randomBytes(8).toString('hex')}`,
    delay_timeout: 60_000,
  };
}

async function delegationState(url: string, jwt: string, id: string): Promise<{ state: string; outcome: string | null }> {
  return (await api(url, 'GET', `/v1/delegations/${id}`, { token: jwt })).body;
}

/**
 * The probe's attacker: bogus 60 s delegations (0.037 calls/s each; the refresh budget is 0.8 of 1/s) until the
 * homeserver is refused, then ever longer timeouts (doubling up to 24 h) to fill what is left, so that not even a
 * 24 h delegation fits. A fresh participant token every five requests keeps it under the per-identity cap.
 */
async function fillBudget(url: string, homeserver: string, client: string): Promise<{ admitted: Array<{ id: string; jwt: string }>; refused: number }> {
  const admitted: Array<{ id: string; jwt: string }> = [];
  let refused = 0;
  let p = await participant();
  let sent = 0;
  for (let timeout = 60_000; ; timeout = Math.min(timeout * 2, 86_400_000)) {
    for (;;) {
      if (++sent % 5 === 0) p = await participant();
      const res = await register(url, p.jwt, { homeserver, dialect: 'futures', token: `bogus-${randomBytes(8).toString('hex')}`, timeout_ms: timeout }, client);
      if (res.status !== 201) {
        expect(res).toMatchObject({ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' } });
        refused++;
        break;
      }
      admitted.push({ id: res.body.delegation_id, jwt: p.jwt });
    }
    if (timeout === 86_400_000) return { admitted, refused };
  }
}

describe('issue 21.1: admission under bogus delegations', () => {
  let hs: Awaited<ReturnType<typeof startUnrecognizingHomeserver>>;
  let hs2: Awaited<ReturnType<typeof startUnrecognizingHomeserver>>;
  let d: RunningDaemon;

  beforeAll(async () => {
    hs = await startUnrecognizingHomeserver();
    hs2 = await startUnrecognizingHomeserver();
    // Default homeserver rate (1/s) and refresh point; clients are told apart by X-Forwarded-For from the loopback proxy.
    d = await startDaemon({ SIDECAR_HOMESERVER_RATE: '1', SIDECAR_TRUST_PROXY: 'true', LOG_LEVEL: 'warn' });
  });
  afterAll(async () => {
    await d.stop();
    await hs.close();
    await hs2.close();
  });

  it("leaves a new user admitted after the issue's attack: bogus delegations for a homeserver that answers 404 M_UNRECOGNIZED", async () => {
    const attack = await fillBudget(d.url, hs.url, '203.0.113.7');
    expect(attack.admitted.length).toBeGreaterThan(0);
    for (const timeout_ms of [3_600_000, 86_400_000]) {
      const user = await participant();
      const res = await register(d.url, user.jwt, { homeserver: hs.url, dialect: 'futures', token: `real-${randomBytes(8).toString('hex')}`, timeout_ms }, '198.51.100.9');
      expect(res.status, `a new user with timeout ${timeout_ms}`).toBe(201);
    }
  });

  it('stops counting delegations whose first refresh the homeserver did not accept, long before they expire', async () => {
    const client = '203.0.113.99';
    const attack = await fillBudget(d.url, hs2.url, client);
    const user = await participant();
    const attempt = async () => (await register(d.url, user.jwt, { homeserver: hs2.url, dialect: 'futures', token: `real-${randomBytes(8).toString('hex')}`, timeout_ms: 3_600_000 }, client)).status;
    expect(await attempt(), 'the attacker\'s own address is full for now').toBe(429);
    // Once their first refreshes are answered (404, not accepted) or their short lease ends, they no longer count, so
    // the same address gets in again while the bogus futures (60 s and more) are all still open.
    await waitFor('a new delegation from the same address to be admitted', async () => (await attempt()) === 201, 45_000, 500);
    for (const { id, jwt } of attack.admitted) expect(['awaiting_join', 'connected']).toContain((await delegationState(d.url, jwt, id)).state);
  }, 90_000);

  it('lets one participant hold only a quarter of the budget with delegations not yet accepted, whatever address it uses', async () => {
    const hs3 = await startUnrecognizingHomeserver();
    try {
      const p = await participant();
      const statuses: number[] = [];
      const errors: string[] = [];
      for (let i = 0; i < 8; i++) {
        const res = await register(d.url, p.jwt, { homeserver: hs3.url, dialect: 'futures', token: `bogus-${randomBytes(8).toString('hex')}`, timeout_ms: 60_000 }, `192.0.2.${i + 1}`);
        statuses.push(res.status);
        if (res.status !== 201) errors.push(res.body.error);
      }
      // 0.25 x 0.8 calls/s = 5 of 0.037 (unless first answers already released some: then more, never all 8 at once).
      expect(statuses.filter((s) => s === 201).length).toBeGreaterThanOrEqual(5);
      expect(errors.length).toBeGreaterThan(0);
      expect(errors[0]).toMatch(/participant holds its share/);
    } finally {
      await hs3.close();
    }
  });
});

describe('issue 21.3: request and body timeouts', () => {
  let d: RunningDaemon;
  beforeAll(async () => {
    d = await startDaemon({ SIDECAR_REQUEST_TIMEOUT_MS: '1000' });
  });
  afterAll(async () => {
    await d.stop();
  });

  it.each([
    ['/v1/delegations', 'application/json'],
    ['/livekit/webhook', 'application/webhook+json'],
  ])('cuts a request to %s whose body never comes, within the request timeout, while /livez keeps answering', async (path, type) => {
    const { port } = new URL(d.url);
    const socket = connect(Number(port), '127.0.0.1');
    let closed = false;
    let answer = '';
    socket.on('data', (b) => (answer += String(b)));
    socket.on('close', () => (closed = true));
    socket.on('error', () => {});
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ${type}\r\nContent-Length: 1000\r\nAuthorization: Bearer x\r\n\r\n{"a":`);
    const live = await fetch(`${d.url}/livez`);
    expect(live.status).toBe(200);
    expect(closed).toBe(false);
    // 1 s timeout, checked every 250 ms; 5 s of slack for a loaded machine (today it stays open for minutes).
    await waitFor('the stalled request to be cut', () => closed, 20_000);
    expect(answer === '' || answer.startsWith('HTTP/1.1 408')).toBe(true);
    expect((await fetch(`${d.url}/livez`)).status).toBe(200);
  });

  it('leaves an open watch stream alone: the timeout is for a request to arrive, not for an upgraded connection', async () => {
    const ws = new WebSocket(`${d.url.replace('http', 'ws')}/v1/watch`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const messages: string[] = [];
    let closed = false;
    ws.on('message', (m) => messages.push(String(m)));
    ws.on('close', () => (closed = true));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    // Three request timeouts pass with the stream idle; then it still carries a lifecycle event.
    await sleep(3_000);
    expect(closed).toBe(false);
    const p = await participant();
    const res = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: 'http://127.0.9.9:1', dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 } });
    expect(res.status).toBe(201);
    await waitFor('the registered event on the stream', () => messages.some((m) => m.includes(res.body.delegation_id)));
    ws.close();
  });
});

describe('issue 21.4 and 21.5: nothing secret in the output of a --dev daemon', () => {
  let child: ChildDaemon;
  const openIdToken = `openid-${randomBytes(12).toString('hex')}`;

  beforeAll(async () => {
    child = await spawnDaemon({ LOG_LEVEL: 'debug', SIDECAR_HOMESERVERS: '*' });
  });
  afterAll(async () => {
    if (child.proc.exitCode === null) child.kill('SIGKILL');
  });

  it('refuses a matrix_server_name with an IPv6 zone id with 403, and neither that nor an admin token in a query string reaches its output', async () => {
    for (const serverName of ['[fe80::1%25lo]', '[fe80::1%lo]', '[fe80::1%25lo]:8448', '[::1%251]']) {
      const body = delegateDelayedLeaveBody(serverName, openIdToken);
      const res = await api(child.url, 'POST', '/delegate_delayed_leave', { body });
      expect(res.status, serverName).toBe(403);
      expect(res.body).toMatchObject({ errcode: 'M_FORBIDDEN' });
      expect(JSON.stringify(res.body)).not.toContain(openIdToken);
    }
    for (const path of [`/v1/admin/delegations?access_token=${ADMIN_TOKEN}`, `/v1/admin/stats?token=${ADMIN_TOKEN}&x=1`, `/console?admin=${ADMIN_TOKEN}`]) {
      const res = await fetch(child.url + path);
      expect(res.status).toBeLessThan(500);
      await res.arrayBuffer();
    }
    child.kill('SIGTERM');
    expect(await child.exited).toBe(0);
    const output = child.output.join('\n');
    expect(output).toContain('incoming request');
    for (const secret of [openIdToken, ADMIN_TOKEN]) expect(output).not.toContain(secret);
  });
});

describe('issue 21.5 and 21.6: participant tokens, transition prefixes and cloud metadata', () => {
  let d: RunningDaemon;
  let strict: RunningDaemon;
  const resolver = fakeResolver({
    'metadata.attacker.test': ['169.254.169.254'],
    'ec2v6.attacker.test': ['fd00:ec2::254'],
    'alibaba.attacker.test': ['100.100.100.200'],
    'nat64.attacker.test': ['64:ff9b:1::a9fe:a9fe'],
    'siit.attacker.test': ['::ffff:0:7f00:1'],
  });

  beforeAll(async () => {
    // --dev with its defaults: * and private addresses allowed.
    d = await startDaemon({ SIDECAR_HOMESERVERS: '*', SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true' }, { resolveAddress: resolver });
    strict = await startDaemon({ SIDECAR_HOMESERVERS: '*', SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false' }, { resolveAddress: resolver });
  });
  afterAll(async () => {
    await d.stop();
    await strict.stop();
  });

  it.each(['HS384', 'HS512'] as const)('refuses a participant token signed %s with 401 M_UNKNOWN_TOKEN, as it refuses such webhooks', async (alg) => {
    const room = uniqueName('room');
    const identity = uniqueName('user');
    const body = { homeserver: 'https://hs.example', dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 };
    const refused = await api(d.url, 'POST', '/v1/delegations', { token: tokenSignedWith(alg, identity, room), body });
    expect(refused).toMatchObject({ status: 401, body: { errcode: 'M_UNKNOWN_TOKEN' } });
    // The same claims signed HS256 get past authentication (the request is then refused for the homeserver's address only
    // if it were private; hs.example is not resolved at registration).
    const accepted = await api(d.url, 'POST', '/v1/delegations', { token: tokenSignedWith('HS256', identity, room), body });
    expect(accepted.status).toBe(201);
    await api(d.url, 'DELETE', `/v1/delegations/${accepted.body.delegation_id}`, { token: tokenSignedWith('HS256', identity, room) });
  });

  it('refuses IPv6 transition prefixes that embed private IPv4 addresses (SIIT, local NAT64, 6to4, Teredo, IPv4-compatible, site-local) with 403', async () => {
    const p = await participant();
    for (const homeserver of [
      'https://[::ffff:0:7f00:1]',
      'https://[::ffff:0:a9fe:a9fe]',
      'https://[64:ff9b:1::a9fe:a9fe]',
      'https://[64:ff9b:1:ffff::a00:1]',
      'https://[2002:7f00:1::1]',
      'https://[2002:a9fe:a9fe::1]',
      'https://[2001:0:4136:e378:8000:63bf:80ff:fffe]',
      'https://[::7f00:1]',
      'https://[fec0::1]',
    ]) {
      const res = await api(strict.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver, dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 } });
      expect(res.status, homeserver).toBe(403);
      expect(res.body).toMatchObject({ errcode: 'M_FORBIDDEN' });
    }
    expect(strict.daemon.engine.openCount).toBe(0);
  });

  it('refuses a host name that resolves into local NAT64 or SIIT when it connects: the delegation fails with address_refused', async () => {
    for (const host of ['nat64.attacker.test', 'siit.attacker.test']) {
      const p = await participant();
      const res = await api(strict.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: `https://${host}`, dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 } });
      expect(res.status).toBe(201);
      const final = await waitFor(`${host} refused`, async () => {
        const s = await delegationState(strict.url, p.jwt, res.body.delegation_id);
        return s.state === 'failed' ? s : null;
      });
      expect(final.outcome).toBe('address_refused');
      expect(resolver.asked).toContain(host);
    }
  });

  it('refuses cloud metadata addresses with private addresses allowed (--dev): literals with 403, host names when connecting', async () => {
    const p = await participant();
    for (const homeserver of ['http://169.254.169.254', 'http://169.254.170.2', 'http://[fd00:ec2::254]', 'http://100.100.100.200', 'http://[::ffff:169.254.169.254]', 'http://[64:ff9b::a9fe:a9fe]']) {
      const res = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver, dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 } });
      expect(res.status, homeserver).toBe(403);
      expect(res.body.error).toMatch(/metadata/);
    }
    for (const host of ['metadata.attacker.test', 'ec2v6.attacker.test', 'alibaba.attacker.test']) {
      const q = await participant();
      const res = await api(d.url, 'POST', '/v1/delegations', { token: q.jwt, body: { homeserver: `http://${host}`, dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 } });
      expect(res.status).toBe(201);
      const final = await waitFor(`${host} refused`, async () => {
        const s = await delegationState(d.url, q.jwt, res.body.delegation_id);
        return s.state === 'failed' ? s : null;
      });
      expect(final.outcome).toBe('address_refused');
    }
  });

  it('refuses a metadata address as a Matrix server name with private addresses allowed, without connecting', async () => {
    const before = d.logs.length;
    for (const serverName of ['169.254.169.254:8448', '[fd00:ec2::254]:8448', '169.254.169.254']) {
      const body = delegateDelayedLeaveBody(serverName, `openid-${randomBytes(6).toString('hex')}`);
      const res = await api(d.url, 'POST', '/delegate_delayed_leave', { body });
      expect(res.status, serverName).toBe(401);
    }
    const reasons = d.logs.slice(before).filter((l) => l.includes('OpenID token not verified')).map((l) => JSON.parse(l).reason as string);
    expect(reasons).toHaveLength(3);
    for (const r of reasons) expect(r).toMatch(/metadata/);
  });

  it('admits a metadata address that the operator listed explicitly, and classifies the well-known ones', () => {
    const allow = (origins: string[]): HomeserverAllowList => ({ any: true, origins: new Set(origins), serverNames: new Set() });
    const open = { allow: allow([]), allowPrivateAddresses: true, allowHttp: true };
    expect(checkHomeserverUrl('http://169.254.169.254', open)).toMatch(/metadata/);
    expect(checkHomeserverUrl('http://169.254.169.254', { ...open, allow: allow(['http://169.254.169.254']) })).toBeNull();
    expect(checkHomeserverUrl('http://10.0.0.1', open)).toBeNull();
    for (const a of ['169.254.169.254', '169.254.170.2', 'fd00:ec2::254', 'fd00:ec2::23', '100.100.100.200', '168.63.129.16', '::ffff:169.254.169.254', '::ffff:a9fe:a9fe', '64:ff9b::a9fe:a9fe', '2002:a9fe:a9fe::1']) {
      expect(isMetadataAddress(a), a).toBe(true);
    }
    for (const a of ['10.0.0.1', '127.0.0.1', 'fd00::1', '8.8.8.8']) expect(isMetadataAddress(a), a).toBe(false);
    for (const a of ['::ffff:0:7f00:1', '64:ff9b:1::1', '2002::1', '2001::1', '::7f00:1', 'fec0::1']) expect(isPrivateAddress(a), a).toBe(true);
    for (const a of ['2001:4860:4860::8888', '2a00:1450::1']) expect(isPrivateAddress(a), a).toBe(false);
    const listed = guardedLookup({ allow: allow(['http://metadata.listed.test']), allowPrivateAddresses: true, allowHttp: true }, fakeResolver({ 'metadata.listed.test': ['169.254.169.254'], 'metadata.other.test': ['169.254.169.254'] }));
    return Promise.all([
      new Promise<void>((resolve) => listed('metadata.listed.test', { all: false }, (err, address) => (expect(err).toBeNull(), expect(address).toBe('169.254.169.254'), resolve()))),
      new Promise<void>((resolve) => listed('metadata.other.test', { all: false }, (err) => (expect(err?.code).toBe('E_ADDRESS_REFUSED'), resolve()))),
    ]);
  });

  it("serves the console with connect-src 'self' only", async () => {
    const res = await fetch(`${d.url}/console`);
    const csp = res.headers.get('content-security-policy')!;
    expect(csp).toContain("connect-src 'self';");
    expect(csp).not.toMatch(/ws:|wss:/);
  });
});

describe('issue 21.2: a bound on the homeserver origins in use', () => {
  let d: RunningDaemon;
  beforeAll(async () => {
    d = await startDaemon({ SIDECAR_MAX_HOMESERVER_ORIGINS: '2' });
  });
  afterAll(async () => {
    await d.stop();
  });

  it('refuses a delegation for a third homeserver origin with 429 while two are in use, and admits it once one is free', async () => {
    const p = await participant();
    const registerOn = (host: string) =>
      api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: `http://${host}:1`, dialect: 'futures', token: `t-${randomBytes(6).toString('hex')}`, timeout_ms: 60_000 } });
    const first = await registerOn('127.0.9.1');
    const second = await registerOn('127.0.9.2');
    expect([first.status, second.status]).toEqual([201, 201]);
    expect(await registerOn('127.0.9.3')).toMatchObject({ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' } });
    expect((await registerOn('127.0.9.1')).status).toBe(201);
    await api(d.url, 'DELETE', `/v1/delegations/${second.body.delegation_id}`, { token: p.jwt });
    expect((await registerOn('127.0.9.3')).status).toBe(201);
  });
});

describe('issue 21.2: memory that ended delegations leave behind', () => {
  const HISTORY_BUDGET = 256 * 1024;
  let d: RunningDaemon;

  beforeAll(async () => {
    d = await startDaemon({ LOG_LEVEL: 'silent', SIDECAR_HISTORY_MAX_BYTES: String(HISTORY_BUDGET), SIDECAR_RATE_LIMIT_PER_IDENTITY_PER_MINUTE: '1000000' });
  });
  afterAll(async () => {
    await d.stop();
  });

  // Heap measured in this process (the daemon runs in it), after forced full collections: `global.gc` is made
  // available with V8's --expose-gc flag set at run time. Bound: the history's byte budget plus 4 MiB of noise.
  it('keeps the heap flat over 12,000 register + DELETE cycles, each on a new homeserver origin, and the history within its bytes', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const heapMiB = (): number => {
      gc();
      gc();
      return process.memoryUsage().heapUsed / 2 ** 20;
    };
    const p = await participant();
    const longPath = `/${'p'.repeat(2000)}`;
    const action = 'a'.repeat(199);
    let n = 0;
    const cycles = async (count: number): Promise<void> => {
      for (let i = 0; i < count; i++, n++) {
        // A new origin each time: 127.x.y.z port 1, where nothing listens (a refused connection, never another process).
        const host = `127.${(Math.floor(n / 62_500) % 250) + 1}.${Math.floor(n / 250) % 250}.${(n % 250) + 1}`;
        const res = await api(d.url, 'POST', '/v1/delegations', {
          token: p.jwt,
          body: { homeserver: `http://${host}:1${longPath}`, dialect: 'futures', token: `tok-${n}-${'x'.repeat(200)}`, timeout_ms: 60_000, actions: { leave: `${action}l`, connection_lost: `${action}c` } },
        });
        if (res.status !== 201) throw new Error(`cycle ${n}: ${res.status} ${JSON.stringify(res.body)}`);
        const del = await api(d.url, 'DELETE', `/v1/delegations/${res.body.delegation_id}`, { token: p.jwt });
        if (del.status !== 200) throw new Error(`cycle ${n}: DELETE ${del.status}`);
      }
    };
    await cycles(2_000);
    const warm = heapMiB();
    await cycles(10_000);
    await waitFor('no delegation open', () => d.daemon.engine.openCount === 0);
    const grown = heapMiB() - warm;
    const history = d.daemon.engine.histories;
    console.log(`issue 21.2: heap +${grown.toFixed(1)} MiB over cycles 2,000-12,000; history ${history.size} delegations, ${history.bytes} bytes`);
    expect(grown).toBeLessThan(HISTORY_BUDGET / 2 ** 20 + 4);
    expect(history.bytes).toBeLessThanOrEqual(HISTORY_BUDGET);
    expect(history.size).toBeLessThan(12_000);
  }, 400_000);
});
