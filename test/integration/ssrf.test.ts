import { randomBytes } from 'node:crypto';
import type { LookupAddress } from 'node:dns';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/clock.js';
import type { HomeserverAllowList } from '../../src/config.js';
import { AddressRefusedError, checkHomeserverUrl, guardedLookup, isPrivateAddress, type AddressResolver, type GuardPolicy } from '../../src/homeserver/address-guard.js';
import { HomeserverClient, type HomeserverCall } from '../../src/homeserver/client.js';
import { Metrics } from '../../src/metrics.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, api, startDaemon, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { fakeResolver } from '../helpers/resolver.js';
import { createHomeserverToken, uniqueName } from '../helpers/scenario.js';

/** Participants name the homeserver the daemon calls: it must not become a way into the daemon's own network. */

function allowList(entries: { any?: boolean; origins?: string[] }): HomeserverAllowList {
  return { any: entries.any ?? false, origins: new Set(entries.origins ?? []), serverNames: new Set() };
}

const publicOnly: GuardPolicy = { allow: allowList({ any: true }), allowPrivateAddresses: false, allowHttp: false };

async function participant(room = uniqueName('room')): Promise<{ jwt: string; room: string }> {
  return { room, jwt: await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: uniqueName('user'), room }) };
}

/** A tiny HTTP server whose every request is answered by `handler`; counts requests and connections. */
async function startServer(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; port: number; requests: number; sockets: Socket[]; server: Server; close(): Promise<void> }> {
  const state = { requests: 0, sockets: [] as Socket[] };
  const server = createServer((req, res) => {
    state.requests++;
    handler(req, res);
  });
  server.on('connection', (s) => state.sockets.push(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get requests() {
      return state.requests;
    },
    sockets: state.sockets,
    server,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function refreshCall(baseUrl: string): HomeserverCall {
  return { op: 'refresh', dialect: 'futures', source: 'api', baseUrl, token: 'ft_secret_token', accessToken: null, actionName: '', priority: { rank: 1, deadline: Date.now() + 60_000 } };
}

function lookupOnce(lookup: ReturnType<typeof guardedLookup>, hostname: string, all: boolean): Promise<{ err: NodeJS.ErrnoException | null; address: string | LookupAddress[] }> {
  return new Promise((resolve) => lookup(hostname, { all }, (err, address) => resolve({ err, address })));
}

describe('isPrivateAddress', () => {
  const refused = [
    '127.0.0.1',
    '127.255.255.254',
    '0.0.0.0',
    '10.1.2.3',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.1.1',
    '100.64.0.1',
    '169.254.169.254',
    '169.254.170.2',
    '100.100.100.200',
    '192.0.0.192',
    '198.18.0.1',
    '224.0.0.1',
    '255.255.255.255',
    '::1',
    '::',
    'fe80::1',
    'fc00::1',
    'fd00:ec2::254',
    'ff02::1',
    '::ffff:127.0.0.1',
    '::ffff:7f00:1',
    '0:0:0:0:0:ffff:7f00:1',
    '::ffff:169.254.169.254',
    '::ffff:a9fe:a9fe',
    '::ffff:10.0.0.1',
    '64:ff9b::a9fe:a9fe',
    'localhost',
    'not an address',
    '',
  ];
  const allowed = ['8.8.8.8', '1.1.1.1', '93.184.216.34', '172.32.0.1', '100.128.0.1', '2001:4860:4860::8888', '2606:4700:4700::1111', '::ffff:8.8.8.8', '::ffff:808:808'];

  it.each(refused)('treats %j as private', (address) => {
    expect(isPrivateAddress(address)).toBe(true);
  });
  it.each(allowed)('treats %j as public', (address) => {
    expect(isPrivateAddress(address)).toBe(false);
  });
});

describe('checkHomeserverUrl', () => {
  it('refuses private and metadata IP literals in every spelling the URL parser accepts when only * is listed', () => {
    for (const url of [
      'https://127.0.0.1',
      'https://169.254.169.254',
      'https://[::1]',
      'https://[::ffff:127.0.0.1]',
      'https://[::ffff:a9fe:a9fe]',
      'https://2130706433',
      'https://0x7f.1',
      'https://0177.0.0.1',
      'https://10.0.0.1:8448',
      'https://[fd00:ec2::254]',
    ]) {
      const normalised = new URL(url).origin;
      expect(checkHomeserverUrl(normalised, publicOnly), url).toMatch(/^(private and loopback addresses are refused|cloud metadata addresses are refused unless listed explicitly)$/);
    }
  });

  it('refuses plain http and credentials for * unless http is allowed, and schemes other than http(s)', () => {
    expect(checkHomeserverUrl('http://hs.example', publicOnly)).toBe('homeservers must use https');
    expect(checkHomeserverUrl('https://user:pw@hs.example', publicOnly)).toBe('credentials in the homeserver URL are not allowed');
    expect(checkHomeserverUrl('file:///etc/passwd', publicOnly)).toBe('only http(s) homeservers are supported');
    expect(checkHomeserverUrl('gopher://hs.example', publicOnly)).toBe('only http(s) homeservers are supported');
    expect(checkHomeserverUrl('https://hs.example', publicOnly)).toBeNull();
  });

  it('admits only the exact listed origins when there is no *', () => {
    const policy: GuardPolicy = { allow: allowList({ origins: ['https://hs.example'] }), allowPrivateAddresses: false, allowHttp: false };
    expect(checkHomeserverUrl('https://hs.example', policy)).toBeNull();
    expect(checkHomeserverUrl('https://hs.example/prefix', policy)).toBeNull();
    for (const url of ['http://hs.example', 'https://hs.example:8448', 'https://hs.example.attacker.test', 'https://attacker.test', 'https://sub.hs.example']) {
      expect(checkHomeserverUrl(url, policy), url).toBe('this homeserver is not in SIDECAR_HOMESERVERS');
    }
  });
});

describe('guardedLookup with an injected resolver', () => {
  const resolver = fakeResolver({
    'metadata.attacker.test': ['169.254.169.254'],
    'loopback.attacker.test': ['127.0.0.1'],
    'v6loop.attacker.test': ['::1'],
    'mapped.attacker.test': ['::ffff:169.254.169.254'],
    'mixed.attacker.test': ['93.184.216.34', '10.0.0.7'],
    'public.example': ['93.184.216.34', '2606:2800:220:1:248:1893:25c8:1946'],
    'hs.internal': ['10.0.0.8'],
  });

  it('refuses a host name that resolves to the metadata address, loopback or any private address', async () => {
    const lookup = guardedLookup(publicOnly, resolver);
    for (const host of ['metadata.attacker.test', 'loopback.attacker.test', 'v6loop.attacker.test', 'mapped.attacker.test', 'mixed.attacker.test']) {
      for (const all of [false, true]) {
        const { err } = await lookupOnce(lookup, host, all);
        expect(err, host).toBeInstanceOf(AddressRefusedError);
        expect(err?.code).toBe('E_ADDRESS_REFUSED');
      }
    }
  });

  it('passes public answers through in the shape dns.lookup gives', async () => {
    const lookup = guardedLookup(publicOnly, resolver);
    expect(await lookupOnce(lookup, 'public.example', false)).toEqual({ err: null, address: '93.184.216.34' });
    const all = await lookupOnce(lookup, 'public.example', true);
    expect(all.err).toBeNull();
    expect(all.address).toEqual([
      { address: '93.184.216.34', family: 4 },
      { address: '2606:2800:220:1:248:1893:25c8:1946', family: 6 },
    ]);
  });

  it('lets an explicitly listed host, or any host when private addresses are allowed, resolve privately', async () => {
    const listed = guardedLookup({ allow: allowList({ any: true, origins: ['https://hs.internal:8448'] }), allowPrivateAddresses: false, allowHttp: false }, resolver);
    expect((await lookupOnce(listed, 'hs.internal', false)).address).toBe('10.0.0.8');
    expect((await lookupOnce(listed, 'metadata.attacker.test', false)).err).toBeInstanceOf(AddressRefusedError);
    const open = guardedLookup({ ...publicOnly, allowPrivateAddresses: true }, resolver);
    expect((await lookupOnce(open, 'loopback.attacker.test', false)).address).toBe('127.0.0.1');
    // Cloud metadata stays refused with private addresses allowed (issue 21.6).
    expect((await lookupOnce(open, 'metadata.attacker.test', false)).err).toBeInstanceOf(AddressRefusedError);
  });

  it('passes resolver errors on', async () => {
    const { err } = await lookupOnce(guardedLookup(publicOnly, resolver), 'nxdomain.test', false);
    expect(err?.code).toBe('ENOTFOUND');
  });

  it('checks every resolution, so a name that rebinds to a private address after a public answer is refused', async () => {
    let answer = '93.184.216.34';
    const rebinding: AddressResolver = (_host, _opts, cb) => setImmediate(() => cb(null, [{ address: answer, family: 4 }]));
    const lookup = guardedLookup(publicOnly, rebinding);
    expect((await lookupOnce(lookup, 'rebind.attacker.test', false)).err).toBeNull();
    answer = '169.254.169.254';
    expect((await lookupOnce(lookup, 'rebind.attacker.test', false)).err).toBeInstanceOf(AddressRefusedError);
  });

  it('stops an undici connection before it is made, as the homeserver client wires it', async () => {
    const target = await startServer((_req, res) => res.end('{}'));
    const table = fakeResolver({ 'metadata.attacker.test': ['169.254.169.254'], 'hs.test': ['127.0.0.1'] });
    const guarded = new Agent({ connect: { lookup: guardedLookup(publicOnly, table) as never } });
    const allowing = new Agent({ connect: { lookup: guardedLookup({ ...publicOnly, allowPrivateAddresses: true }, table) as never } });
    try {
      await expect(request(`http://metadata.attacker.test:${target.port}/latest/meta-data/`, { dispatcher: guarded })).rejects.toMatchObject({ code: 'E_ADDRESS_REFUSED' });
      await expect(request(`http://hs.test:${target.port}/`, { dispatcher: guarded })).rejects.toMatchObject({ code: 'E_ADDRESS_REFUSED' });
      expect(target.sockets).toHaveLength(0);
      const ok = await request(`http://hs.test:${target.port}/`, { dispatcher: allowing });
      await ok.body.text();
      expect(ok.statusCode).toBe(200);
      expect(target.requests).toBe(1);
      expect(table.asked).toEqual(['metadata.attacker.test', 'hs.test', 'hs.test']);
    } finally {
      await guarded.close();
      await allowing.close();
      await target.close();
    }
  });
});

describe('a daemon serving any public homeserver (SIDECAR_HOMESERVERS=*)', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    d = await startDaemon({ SIDECAR_HOMESERVERS: '*', SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false' });
  });
  afterAll(async () => {
    await d.stop();
    await hs.close();
  });

  it('refuses loopback, private and metadata addresses at registration with 403 and calls nothing', async () => {
    const port = new URL(hs.url).port;
    const p = await participant();
    const token = await createHomeserverToken(hs, 'futures', `!${p.room}:hs`, 60_000);
    const callsBefore = hs.calls.length;
    const openBefore = d.daemon.engine.openCount;
    for (const homeserver of [
      `http://127.0.0.1:${port}`,
      'https://169.254.169.254',
      'http://169.254.169.254/latest/meta-data',
      `http://[::1]:${port}`,
      `http://[::ffff:127.0.0.1]:${port}`,
      `http://2130706433:${port}`,
      `http://0x7f.1:${port}`,
      `http://0.0.0.0:${port}`,
      'https://10.0.0.1',
      'https://192.168.0.1:8448',
      'https://100.100.100.200',
      'https://[fd00:ec2::254]',
    ]) {
      const res = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver, dialect: 'futures', token, timeout_ms: 60_000 } });
      expect(res.status, homeserver).toBe(403);
      expect(res.body).toMatchObject({ errcode: 'M_FORBIDDEN' });
    }
    expect(d.daemon.engine.openCount).toBe(openBefore);
    expect(hs.calls.length).toBe(callsBefore);
  });

  it('accepts a host name that resolves to loopback but refuses it when connecting: the delegation fails with address_refused', async () => {
    const port = new URL(hs.url).port;
    const p = await participant();
    const token = await createHomeserverToken(hs, 'futures', `!${p.room}:hs`, 60_000);
    const res = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: `http://localhost:${port}`, dialect: 'futures', token, timeout_ms: 60_000 } });
    expect(res.status).toBe(201);
    const id = res.body.delegation_id as string;
    const final = await waitFor('the delegation to fail', async () => {
      const r = await api(d.url, 'GET', `/v1/delegations/${id}`, { token: p.jwt });
      return r.body.state === 'failed' ? r.body : null;
    });
    expect(final.outcome).toBe('address_refused');
    expect(hs.calls.filter((c) => c.handle === token && c.op !== 'create')).toEqual([]);
    expect(hs.status(token)).toBe('pending');
  });
});

describe('a daemon with an explicit allow-list', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    d = await startDaemon({ SIDECAR_HOMESERVERS: `https://hs.example ${hs.url}`, SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false' });
  });
  afterAll(async () => {
    await d.stop();
    await hs.close();
  });

  it('refuses every origin that is not listed exactly, and reaches the listed private one', async () => {
    const port = new URL(hs.url).port;
    const p = await participant();
    const token = await createHomeserverToken(hs, 'futures', `!${p.room}:hs`, 60_000);
    const callsBefore = hs.calls.length;
    for (const homeserver of [
      'https://other.example',
      'http://hs.example',
      'https://hs.example:8448',
      'https://hs.example.attacker.test',
      'https://attacker.test/https://hs.example',
      `http://localhost:${port}`,
      `https://127.0.0.1:${port}`,
    ]) {
      const res = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver, dialect: 'futures', token, timeout_ms: 60_000 } });
      expect(res.status, homeserver).toBe(403);
      expect(res.body).toMatchObject({ errcode: 'M_FORBIDDEN' });
    }
    const withCredentials = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: `http://hs.example@127.0.0.1:${port}`, dialect: 'futures', token, timeout_ms: 60_000 } });
    expect(withCredentials).toMatchObject({ status: 400, body: { errcode: 'M_INVALID_PARAM' } });
    expect(hs.calls.length).toBe(callsBefore);

    const listed = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: hs.url, dialect: 'futures', token, timeout_ms: 60_000 } });
    expect(listed.status).toBe(201);
    await waitFor('the listed homeserver to be refreshed', () => hs.calls.some((c) => c.handle === token && c.op === 'refresh' && c.status === 200));
  });
});

describe('a daemon with * and one listed private origin', () => {
  let listed: FakeHomeserver;
  let other: FakeHomeserver;
  let d: RunningDaemon;

  beforeAll(async () => {
    listed = await startFakeHomeserver();
    other = await startFakeHomeserver();
    d = await startDaemon({ SIDECAR_HOMESERVERS: `* http://localhost:${new URL(listed.url).port}`, SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false' });
  });
  afterAll(async () => {
    await d.stop();
    await listed.close();
    await other.close();
  });

  // Regression: the exemption was keyed by host name, so every port of a listed private host was reachable.
  it('reaches the listed origin but not another port of the same host', async () => {
    const p = await participant();
    const good = await createHomeserverToken(listed, 'futures', `!${p.room}:hs`, 60_000);
    const res = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: `http://localhost:${new URL(listed.url).port}`, dialect: 'futures', token: good, timeout_ms: 60_000 } });
    expect(res.status).toBe(201);
    await waitFor('the listed origin refreshed', () => listed.calls.some((c) => c.handle === good && c.op === 'refresh' && c.status === 200));

    const bad = await createHomeserverToken(other, 'futures', `!${p.room}:hs`, 60_000);
    const callsBefore = other.calls.filter((c) => c.op !== 'create').length;
    const sneaky = await api(d.url, 'POST', '/v1/delegations', { token: p.jwt, body: { homeserver: `http://localhost:${new URL(other.url).port}`, dialect: 'futures', token: bad, timeout_ms: 60_000 } });
    expect(sneaky.status).toBe(201);
    await waitFor('refused at connect time', async () => {
      const r = await api(d.url, 'GET', `/v1/delegations/${sneaky.body.delegation_id}`, { token: p.jwt });
      return r.body.state === 'failed' && r.body.outcome === 'address_refused';
    });
    expect(other.calls.filter((c) => c.op !== 'create').length).toBe(callsBefore);
  });
});

describe('redirects', () => {
  let hs: FakeHomeserver;
  const redirectors: Array<{ status: number; server: Awaited<ReturnType<typeof startServer>> }> = [];
  let d: RunningDaemon;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    for (const status of [301, 302, 303, 307, 308]) {
      const server = await startServer((req, res) => {
        res.writeHead(status, { location: `${hs.url}${req.url ?? '/'}` });
        res.end();
      });
      redirectors.push({ status, server });
    }
    // The redirect target is listed too: a redirect is refused for what it is, not for where it points.
    d = await startDaemon({ SIDECAR_HOMESERVERS: [hs.url, ...redirectors.map((r) => r.server.url)].join(' '), SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'false' });
  });
  afterAll(async () => {
    await d.stop();
    for (const r of redirectors) await r.server.close();
    await hs.close();
  });

  it('never follows one: the refresh fails with redirect_3xx and the target sees no call, nor the access token', async () => {
    const cases: Array<{ status: number; id: string; token: string; jwt: string; accessToken?: string }> = [];
    for (const { status, server } of redirectors) {
      for (const dialect of ['futures', 'delayed_events'] as const) {
        const p = await participant();
        const token = await createHomeserverToken(hs, dialect, `!${p.room}:hs`, 60_000);
        const accessToken = dialect === 'delayed_events' ? `syt_${randomBytes(12).toString('hex')}` : undefined;
        const res = await api(d.url, 'POST', '/v1/delegations', {
          token: p.jwt,
          body: { homeserver: server.url, dialect, token, timeout_ms: 60_000, ...(accessToken ? { access_token: accessToken } : {}) },
        });
        expect(res.status).toBe(201);
        cases.push({ status, id: res.body.delegation_id, token, jwt: p.jwt, ...(accessToken ? { accessToken } : {}) });
      }
    }
    for (const c of cases) {
      const final = await waitFor(`delegation behind a ${c.status} to fail`, async () => {
        const r = await api(d.url, 'GET', `/v1/delegations/${c.id}`, { token: c.jwt });
        return r.body.state === 'failed' ? r.body : null;
      });
      expect(final.outcome).toBe(`redirect_${c.status}`);
      expect(hs.calls.filter((call) => call.handle === c.token && call.op !== 'create')).toEqual([]);
      expect(hs.status(c.token)).toBe('pending');
    }
    for (const r of redirectors) expect(r.server.requests).toBeGreaterThanOrEqual(2);
    const seen = JSON.stringify(hs.calls);
    for (const c of cases) if (c.accessToken) expect(seen.includes(c.accessToken)).toBe(false);
  });
});

describe('the homeserver client against hostile servers', () => {
  const listed = (url: string): GuardPolicy => ({ allow: allowList({ origins: [url] }), allowPrivateAddresses: false, allowHttp: false });
  const client = (url: string, timeoutMs?: number) =>
    new HomeserverClient({ rate: 100, clock: systemClock, metrics: new Metrics(), policy: listed(url), ...(timeoutMs !== undefined ? { timeoutMs } : {}) });

  it('re-checks the URL at call time and refuses a private literal without connecting', async () => {
    const target = await startServer((_req, res) => res.end('{}'));
    const c = new HomeserverClient({ rate: 100, clock: systemClock, metrics: new Metrics(), policy: { ...publicOnly, allowHttp: true } });
    try {
      expect((await c.call(refreshCall(target.url))).outcome).toEqual({ kind: 'permanent', detail: 'homeserver_refused' });
      expect((await c.call(refreshCall(`http://localhost:${target.port}`))).outcome).toEqual({ kind: 'permanent', detail: 'address_refused' });
      expect(target.sockets).toHaveLength(0);
    } finally {
      await c.close();
      await target.close();
    }
  });

  it('reads at most 64 KiB of an endless response body and hangs up', async () => {
    let written = 0;
    let closedAt = 0;
    const chunk = Buffer.alloc(64 * 1024, 'x');
    const target = await startServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"pad":"');
      const pump = (): void => {
        while (!res.destroyed && written < 1024 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
      };
      res.on('close', () => (closedAt = Date.now()));
      pump();
    });
    const c = client(target.url);
    try {
      const started = Date.now();
      const before = process.memoryUsage().arrayBuffers;
      const result = await c.call(refreshCall(target.url));
      expect(result.outcome.kind).toBe('ok');
      expect(Date.now() - started).toBeLessThan(5_000);
      await waitFor('the server to see the connection closed', () => closedAt > 0, 20_000);
      // What the kernel's socket buffers and undici's stream buffer hold, not the 1 GiB on offer.
      expect(written).toBeLessThan(32 * 1024 * 1024);
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 * 1024 * 1024);
    } finally {
      await c.close();
      await target.close();
    }
  });

  it('parses an answer of up to 64 KiB and not a byte more', async () => {
    const answer = (size: number): string => {
      const head = '{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":4321,"pad":"';
      return head + 'x'.repeat(size - head.length - 2) + '"}';
    };
    let size = 0;
    const target = await startServer((_req, res) => {
      res.writeHead(429, { 'content-type': 'application/json' });
      res.end(answer(size));
    });
    const c = client(target.url);
    try {
      size = 64 * 1024;
      expect((await c.call(refreshCall(target.url))).outcome).toEqual({ kind: 'retry', detail: 'rate_limited', retryAfterMs: 4321 });
      size = 64 * 1024 + 1;
      expect((await c.call(refreshCall(target.url))).outcome).toEqual({ kind: 'retry', detail: 'rate_limited', retryAfterMs: 1000 });
    } finally {
      await c.close();
      await target.close();
    }
  });

  it('gives up on a server that never answers after its timeout, as a retry with detail timeout', async () => {
    const silent = await startServer(() => {});
    const c = client(silent.url, 300);
    try {
      const started = Date.now();
      const result = await c.call(refreshCall(silent.url));
      const took = Date.now() - started;
      expect(result.outcome).toEqual({ kind: 'retry', detail: 'timeout' });
      expect(took).toBeGreaterThanOrEqual(250);
      // Cut by the 300 ms timeout, not left hanging; the bound leaves room for a loaded machine.
      expect(took).toBeLessThan(10_000);
    } finally {
      await c.close();
      await silent.close();
    }
  });

  it('gives up on a server that sends headers and then stalls the body', async () => {
    const stalling = await startServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"a":');
    });
    const c = client(stalling.url, 300);
    try {
      const started = Date.now();
      const result = await c.call(refreshCall(stalling.url));
      expect(result.outcome).toEqual({ kind: 'retry', detail: 'timeout' });
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      await c.close();
      await stalling.close();
    }
  });
});
