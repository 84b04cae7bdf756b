import type { FastifyInstance } from 'fastify';
import type { WebSocket } from 'ws';
import type { LifecycleEvent } from '../delegations/model.js';
import { bearerToken, isAdminToken } from './auth.js';
import { MatrixErrorBody, errorResponses } from './responses.js';

/** A watcher further behind than this is dropped: it must never slow the daemon or grow its memory. */
const WATCH_MAX_BUFFERED_BYTES = 1024 * 1024;
const AUTH_TIMEOUT_MS = 5_000;
/** WebSocket close code (RFC 6455 private range) for a refused admin token. */
const CLOSE_UNAUTHORIZED = 4401;

/** Fans lifecycle events out to the connected watchers, dropping any that cannot keep up. */
export class WatchHub {
  private readonly watchers = new Set<WebSocket>();
  dropped = 0;

  constructor(private readonly maxBufferedBytes = WATCH_MAX_BUFFERED_BYTES) {}

  get size(): number {
    return this.watchers.size;
  }

  add(socket: WebSocket): void {
    this.watchers.add(socket);
    socket.once('close', () => this.watchers.delete(socket));
  }

  broadcast(e: LifecycleEvent): void {
    if (this.watchers.size === 0) return;
    const message = JSON.stringify(e);
    for (const socket of this.watchers) {
      if (socket.bufferedAmount > this.maxBufferedBytes) {
        this.watchers.delete(socket);
        this.dropped++;
        socket.terminate();
        continue;
      }
      socket.send(message);
    }
  }

  closeAll(): void {
    for (const socket of this.watchers) socket.close(1001, 'shutting down');
    this.watchers.clear();
  }
}

/**
 * `GET /v1/watch`: one JSON text message per lifecycle change. The admin token comes as a Bearer header, or (for
 * browsers, which cannot set headers on a WebSocket) in the first message `{"type":"auth","token":"..."}`; never in
 * the URL, where proxies would log it.
 */
export async function watchRoutes(app: FastifyInstance, deps: { adminToken: string; hub: WatchHub }): Promise<void> {
  const subscribe = (socket: WebSocket): void => {
    socket.send(JSON.stringify({ type: 'ready' }));
    deps.hub.add(socket);
  };

  app.route({
    method: 'GET',
    url: '/v1/watch',
    // Only the plain-GET answer goes through Fastify's serialiser; the socket's messages are `LifecycleEvent`s.
    schema: { response: { 426: MatrixErrorBody, ...errorResponses } },
    // A plain GET (no upgrade) gets a Matrix-style answer like every other route.
    handler: async (_req, reply) =>
      reply.status(426).header('upgrade', 'websocket').send({ errcode: 'M_UNRECOGNIZED', error: 'This endpoint speaks WebSocket only' }),
    wsHandler: (socket, req) => {
      if (isAdminToken(bearerToken(req), deps.adminToken)) return subscribe(socket);
      const timer = setTimeout(() => socket.close(CLOSE_UNAUTHORIZED, 'authenticate within 5 s'), AUTH_TIMEOUT_MS);
      socket.once('close', () => clearTimeout(timer));
      socket.once('message', (data) => {
        clearTimeout(timer);
        let token: unknown;
        try {
          token = (JSON.parse(String(data)) as { token?: unknown }).token;
        } catch {
          token = undefined;
        }
        if (typeof token === 'string' && isAdminToken(token, deps.adminToken)) subscribe(socket);
        else socket.close(CLOSE_UNAUTHORIZED, 'wrong admin token');
      });
    },
  });

  app.addHook('onClose', async () => deps.hub.closeAll());
}
