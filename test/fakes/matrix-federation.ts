import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { listenOnLoopback } from './listen.js';

/**
 * The parts of a homeserver that Element Call's delegation request makes us talk to: the federation OpenID
 * userinfo endpoint and the two `.well-known` documents. Plain http on 127.0.0.1; every request is recorded.
 */

export type FederationEndpoint = 'userinfo' | 'well_known_server' | 'well_known_client' | 'other';

export interface FederationCall {
  method: string;
  path: string;
  endpoint: FederationEndpoint;
  /** Whether the userinfo request carried a token we know (the token itself is not kept). */
  knownToken?: boolean;
  host: string | undefined;
  status: number;
  at: number;
}

/** A canned answer that replaces the normal one; `body` as a string is sent as is. */
export interface CannedReply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface FakeMatrixFederationOptions {
  /** `m.server` of `/.well-known/matrix/server`; null answers 404. */
  wellKnownServer?: string | null;
  /** `m.homeserver.base_url` of `/.well-known/matrix/client`; null answers 404. */
  wellKnownClient?: string | null;
  /** access token -> `sub` */
  tokens?: Record<string, string>;
  /** Serve https with this certificate (federation is https-only for a daemon without overrides). */
  tls?: { key: string; cert: string };
}

const USERINFO_PATH = '/_matrix/federation/v1/openid/userinfo';
const WELL_KNOWN_SERVER_PATH = '/.well-known/matrix/server';
const WELL_KNOWN_CLIENT_PATH = '/.well-known/matrix/client';

export class FakeMatrixFederation {
  readonly calls: FederationCall[] = [];
  private readonly server: Server;
  private readonly tokens = new Map<string, string>();
  private wellKnownServer: string | null;
  private wellKnownClient: string | null;
  private readonly canned = new Map<FederationEndpoint, CannedReply>();
  private latencyMs = 0;
  private baseUrl = '';

  constructor(opts: FakeMatrixFederationOptions = {}) {
    this.wellKnownServer = opts.wellKnownServer ?? null;
    this.wellKnownClient = opts.wellKnownClient ?? null;
    for (const [token, sub] of Object.entries(opts.tokens ?? {})) this.tokens.set(token, sub);
    const listener = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        if (res.headersSent) res.destroy();
        else writeJson(res, { status: 500, body: { errcode: 'M_UNKNOWN', error: String(err) } });
      });
    };
    this.server = opts.tls ? createTlsServer(opts.tls, listener) : createServer(listener);
  }

  /** @internal use startFakeMatrixFederation */
  async listen(): Promise<void> {
    this.baseUrl = await listenOnLoopback(this.server);
  }

  get url(): string {
    return this.baseUrl;
  }

  /** `host:port` of the listener, usable as a Matrix server name or an `m.server` value. */
  get authority(): string {
    return this.baseUrl.replace(/^https?:\/\//, '');
  }

  addToken(accessToken: string, sub: string): void {
    this.tokens.set(accessToken, sub);
  }

  removeToken(accessToken: string): void {
    this.tokens.delete(accessToken);
  }

  setWellKnownServer(server: string | null): void {
    this.wellKnownServer = server;
  }

  setWellKnownClient(baseUrl: string | null): void {
    this.wellKnownClient = baseUrl;
  }

  /** Answer every request to `endpoint` with `reply` until cleared with `null`. */
  respondWith(endpoint: FederationEndpoint, reply: CannedReply | null): void {
    if (reply) this.canned.set(endpoint, reply);
    else this.canned.delete(endpoint);
  }

  setLatency(ms: number): void {
    this.latencyMs = ms;
  }

  callsTo(endpoint: FederationEndpoint): FederationCall[] {
    return this.calls.filter((c) => c.endpoint === endpoint);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((err) => (err ? reject(err) : resolve())));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake-federation');
    const method = req.method ?? 'GET';
    for await (const _ of req) {
      // drain the body; none of these endpoints reads one
    }
    const endpoint: FederationEndpoint =
      url.pathname === USERINFO_PATH
        ? 'userinfo'
        : url.pathname === WELL_KNOWN_SERVER_PATH
          ? 'well_known_server'
          : url.pathname === WELL_KNOWN_CLIENT_PATH
            ? 'well_known_client'
            : 'other';
    const call: FederationCall = { method, path: url.pathname, endpoint, host: req.headers.host, status: 0, at: Date.now() };
    if (this.latencyMs > 0) await new Promise((r) => setTimeout(r, this.latencyMs));
    const token = url.searchParams.get('access_token');
    if (endpoint === 'userinfo') call.knownToken = token !== null && this.tokens.has(token);
    const reply = this.canned.get(endpoint) ?? this.reply(method, endpoint, token);
    call.status = reply.status;
    this.calls.push(call);
    writeJson(res, reply);
  }

  private reply(method: string, endpoint: FederationEndpoint, token: string | null): CannedReply {
    if (endpoint === 'other') return { status: 404, body: { errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' } };
    if (method !== 'GET') return { status: 405, body: { errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' } };
    if (endpoint === 'userinfo') {
      const sub = token === null ? undefined : this.tokens.get(token);
      if (sub === undefined) return { status: 401, body: { errcode: 'M_UNKNOWN_TOKEN', error: 'Access Token unknown or expired' } };
      return { status: 200, body: { sub } };
    }
    if (endpoint === 'well_known_server') {
      return this.wellKnownServer === null ? { status: 404, body: { errcode: 'M_NOT_FOUND', error: 'No .well-known' } } : { status: 200, body: { 'm.server': this.wellKnownServer } };
    }
    return this.wellKnownClient === null
      ? { status: 404, body: { errcode: 'M_NOT_FOUND', error: 'No .well-known' } }
      : { status: 200, body: { 'm.homeserver': { base_url: this.wellKnownClient } } };
  }
}

function writeJson(res: ServerResponse, reply: CannedReply): void {
  const text = typeof reply.body === 'string' ? reply.body : reply.body === undefined ? '' : JSON.stringify(reply.body);
  res.writeHead(reply.status, { 'Content-Type': 'application/json', ...(reply.headers ?? {}) });
  res.end(text);
}

export async function startFakeMatrixFederation(opts?: FakeMatrixFederationOptions): Promise<FakeMatrixFederation> {
  const fake = new FakeMatrixFederation(opts);
  await fake.listen();
  return fake;
}
