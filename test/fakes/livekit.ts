import { createHash, createHmac, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  DisconnectReason,
  ListParticipantsResponse,
  ParticipantInfo,
  ParticipantInfo_State,
  Room,
  WebhookEvent,
} from '@livekit/protocol';
import { AccessToken, TokenVerifier } from 'livekit-server-sdk';
import { listenOnLoopback, readRawBody } from './listen.js';

export type DisconnectReasonName = keyof typeof DisconnectReason;
export type ParticipantStateName = keyof typeof ParticipantInfo_State;

export interface WebhookParticipantInput {
  sid: string;
  identity: string;
  state?: ParticipantStateName;
  disconnectReason?: DisconnectReasonName;
  /** Seconds. */
  joinedAt?: number;
  /** Milliseconds; defaults to `joinedAt * 1000` when `joinedAt` is given, as LiveKit fills both. */
  joinedAtMs?: number;
}

export interface WebhookEventInput {
  event: string;
  id?: string;
  /** Seconds. */
  createdAt?: number;
  room?: { name: string; sid?: string };
  participant?: WebhookParticipantInput;
}

export interface ApiKeyPair {
  apiKey: string;
  apiSecret: string;
}

export function newWebhookEventId(): string {
  return `EV_${randomBytes(9).toString('base64url')}`;
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** LiveKit's wire format: protojson of `WebhookEvent` (lowerCamel keys, enum names, int64 as strings, no zero values). */
export function buildWebhookBody(e: WebhookEventInput): string {
  const participant = e.participant;
  const joinedAtMs = participant?.joinedAtMs ?? (participant?.joinedAt !== undefined ? participant.joinedAt * 1000 : undefined);
  const event = new WebhookEvent({
    event: e.event,
    id: e.id ?? newWebhookEventId(),
    createdAt: BigInt(e.createdAt ?? nowSeconds()),
    ...(e.room ? { room: new Room({ name: e.room.name, ...(e.room.sid !== undefined ? { sid: e.room.sid } : {}) }) } : {}),
    ...(participant
      ? {
          participant: new ParticipantInfo({
            sid: participant.sid,
            identity: participant.identity,
            ...(participant.state !== undefined ? { state: ParticipantInfo_State[participant.state] } : {}),
            ...(participant.disconnectReason !== undefined
              ? { disconnectReason: DisconnectReason[participant.disconnectReason] }
              : {}),
            ...(participant.joinedAt !== undefined ? { joinedAt: BigInt(participant.joinedAt) } : {}),
            ...(joinedAtMs !== undefined ? { joinedAtMs: BigInt(joinedAtMs) } : {}),
          }),
        }
      : {}),
  });
  return event.toJsonString();
}

export interface SignWebhookOptions {
  /** Default 300 (LiveKit: `SetValidFor(5*time.Minute)`). Negative values give an already expired token. */
  ttlSeconds?: number;
  /** Default now; set it to model a skewed LiveKit clock. */
  issuedAtSeconds?: number;
  /**
   * `sdk` (default): livekit-server-sdk's own `AccessToken` with `sha256` and ttl (claims `{sha256, iss, exp, nbf}`),
   * honouring only `ttlSeconds`. `livekit`: the Go server's exact claim set `{iss, nbf, iat, exp, sha256}` (HS256,
   * `typ: JWT`), built with node:crypto because the SDK's `AccessToken` never sets `iat`; tests use it to show both
   * forms are accepted.
   */
  signer?: 'livekit' | 'sdk';
}

function webhookBodySha256(body: string): string {
  return createHash('sha256').update(body, 'utf8').digest('base64');
}

/** The `Authorization` header value LiveKit sends with a webhook: a raw JWT, no "Bearer". */
export async function signWebhook(body: string, apiKey: string, apiSecret: string, opts: SignWebhookOptions = {}): Promise<string> {
  const ttlSeconds = opts.ttlSeconds ?? 300;
  const sha256 = webhookBodySha256(body);
  if ((opts.signer ?? 'sdk') === 'sdk' && opts.issuedAtSeconds === undefined) {
    const token = new AccessToken(apiKey, apiSecret, { ttl: ttlSeconds });
    token.sha256 = sha256;
    return token.toJwt();
  }
  const issuedAt = opts.issuedAtSeconds ?? nowSeconds();
  const header = { alg: 'HS256', typ: 'JWT' };
  const claims = { exp: issuedAt + ttlSeconds, iat: issuedAt, iss: apiKey, nbf: issuedAt, sha256 };
  const encode = (value: object): string => Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
  const signingInput = `${encode(header)}.${encode(claims)}`;
  const signature = createHmac('sha256', apiSecret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}

export type RoomRef = string | { name: string; sid?: string };

export interface ParticipantRef {
  sid: string;
  identity: string;
  /** Seconds; defaults to now for joins. */
  joinedAt?: number;
}

export interface WebhookSendOptions {
  /** Event id to use (resend an earlier event by passing its id); a fresh one otherwise. */
  id?: string;
  /** Change the body after signing so its `sha256` claim no longer matches. */
  tamperBody?: boolean;
  signWith?: ApiKeyPair;
  /** Exact `Authorization` header to send instead of a fresh signature; `null` sends none. */
  authorization?: string | null;
  contentType?: string;
  sign?: SignWebhookOptions;
}

export interface WebhookSendResult {
  status: number;
  body: unknown;
  id: string;
  /** The bytes that were posted. */
  rawBody: string;
}

/** Posts webhooks the way LiveKit's notifier does (raw-JWT `Authorization`, `application/webhook+json`). */
export class WebhookSender {
  private readonly url: string;
  private readonly keys: ApiKeyPair;
  private readonly roomSids = new Map<string, string>();

  constructor(opts: { url: string; apiKey: string; apiSecret: string }) {
    this.url = opts.url;
    this.keys = { apiKey: opts.apiKey, apiSecret: opts.apiSecret };
  }

  /** Sends `e`; passing an `id` (e.g. one returned earlier) re-sends that event id. */
  async send(e: WebhookEventInput, opts: WebhookSendOptions = {}): Promise<WebhookSendResult> {
    const id = opts.id ?? e.id ?? newWebhookEventId();
    const body = buildWebhookBody({ ...e, id });
    const keys = opts.signWith ?? this.keys;
    const authorization =
      opts.authorization !== undefined ? opts.authorization : await signWebhook(body, keys.apiKey, keys.apiSecret, opts.sign);
    const rawBody = opts.tamperBody ? `{"tampered":true,${body.slice(1)}` : body;
    const headers: Record<string, string> = {
      'Content-Type': opts.contentType ?? 'application/webhook+json',
      'User-Agent': 'LiveKit',
    };
    if (authorization !== null) headers['Authorization'] = authorization;
    const response = await fetch(this.url, { method: 'POST', headers, body: rawBody });
    const text = await response.text();
    return { status: response.status, body: parseMaybeJson(text), id, rawBody };
  }

  participantJoined(room: RoomRef, participant: ParticipantRef, opts?: WebhookSendOptions): Promise<WebhookSendResult> {
    return this.send(
      {
        event: 'participant_joined',
        room: this.roomOf(room),
        participant: { sid: participant.sid, identity: participant.identity, state: 'ACTIVE', joinedAt: participant.joinedAt ?? nowSeconds() },
      },
      opts,
    );
  }

  /** `reason` defaults to CLIENT_INITIATED (a deliberate leave); `null` omits it, which reads as UNKNOWN_REASON. */
  participantLeft(
    room: RoomRef,
    participant: ParticipantRef,
    reason: DisconnectReasonName | null = 'CLIENT_INITIATED',
    opts?: WebhookSendOptions,
  ): Promise<WebhookSendResult> {
    return this.send({ event: 'participant_left', room: this.roomOf(room), participant: this.disconnected(participant, reason) }, opts);
  }

  /** `reason` defaults to none (UNKNOWN_REASON). */
  connectionAborted(
    room: RoomRef,
    participant: ParticipantRef,
    reason: DisconnectReasonName | null = null,
    opts?: WebhookSendOptions,
  ): Promise<WebhookSendResult> {
    return this.send(
      { event: 'participant_connection_aborted', room: this.roomOf(room), participant: this.disconnected(participant, reason) },
      opts,
    );
  }

  roomFinished(room: RoomRef, opts?: WebhookSendOptions): Promise<WebhookSendResult> {
    return this.send({ event: 'room_finished', room: this.roomOf(room) }, opts);
  }

  private disconnected(participant: ParticipantRef, reason: DisconnectReasonName | null): WebhookParticipantInput {
    return {
      sid: participant.sid,
      identity: participant.identity,
      state: 'DISCONNECTED',
      ...(participant.joinedAt !== undefined ? { joinedAt: participant.joinedAt } : {}),
      ...(reason !== null ? { disconnectReason: reason } : {}),
    };
  }

  /** LiveKit always names the room's sid; keep one per room name so a room looks the same across events. */
  private roomOf(room: RoomRef): { name: string; sid: string } {
    const name = typeof room === 'string' ? room : room.name;
    const explicitSid = typeof room === 'string' ? undefined : room.sid;
    let sid = explicitSid ?? this.roomSids.get(name);
    if (sid === undefined) {
      sid = `RM_${randomBytes(9).toString('base64url')}`;
      this.roomSids.set(name, sid);
    }
    return { name, sid };
  }
}

function parseMaybeJson(text: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export async function mintParticipantToken(opts: {
  apiKey: string;
  apiSecret: string;
  identity: string;
  room: string;
  ttlSeconds?: number;
  roomJoin?: boolean;
}): Promise<string> {
  const token = new AccessToken(opts.apiKey, opts.apiSecret, {
    identity: opts.identity,
    ...(opts.ttlSeconds !== undefined ? { ttl: opts.ttlSeconds } : {}),
  });
  token.addGrant({ roomJoin: opts.roomJoin ?? true, room: opts.room });
  return token.toJwt();
}

export type RoomServiceMethod = 'ListParticipants' | 'GetParticipant' | 'CreateRoom' | 'RemoveParticipant';

/** The settings a `CreateRoom` call asked for (proto3 JSON leaves zeros out; they are 0 here). */
interface CreateRoomParams {
  emptyTimeout: number;
  departureTimeout: number;
  maxParticipants: number;
}

export interface RoomServiceCall {
  method: RoomServiceMethod;
  room: string;
  identity?: string;
  /** CreateRoom only. */
  params?: CreateRoomParams;
  /** 0 when the service was down and the socket was destroyed. */
  status: number;
  at: number;
}

export interface FakeParticipantInput {
  sid: string;
  identity: string;
  state?: ParticipantStateName;
  /** Seconds; defaults to now. */
  joinedAt?: number;
}

const TWIRP_CODE_BY_STATUS: Record<number, string> = {
  400: 'invalid_argument',
  401: 'unauthenticated',
  403: 'permission_denied',
  404: 'not_found',
  408: 'deadline_exceeded',
  409: 'already_exists',
  429: 'resource_exhausted',
  500: 'internal',
  501: 'unimplemented',
  503: 'unavailable',
};

interface TwirpReply {
  status: number;
  body: unknown;
}

function twirpError(status: number, msg: string, code?: string): TwirpReply {
  return { status, body: { code: code ?? TWIRP_CODE_BY_STATUS[status] ?? 'unknown', msg } };
}

/**
 * LiveKit's RoomService as `RoomServiceClient` calls it: Twirp JSON over POST, `Authorization: Bearer <jwt>` with a
 * `roomAdmin` grant for the room.
 */
export class FakeRoomService {
  readonly calls: RoomServiceCall[] = [];

  private readonly server: Server;
  private readonly verifier: TokenVerifier;
  private readonly rooms = new Map<string, Map<string, ParticipantInfo>>();
  /** Rooms made by CreateRoom: name -> sid and creation time. */
  private readonly created = new Map<string, { sid: string; at: number }>();
  private failingStatus: number | null = null;
  private down = false;
  private baseUrl = '';

  constructor(opts: ApiKeyPair) {
    this.verifier = new TokenVerifier(opts.apiKey, opts.apiSecret);
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        const message = err instanceof Error ? err.message : String(err);
        if (res.headersSent) {
          res.destroy(err instanceof Error ? err : new Error(message));
          return;
        }
        writeJson(res, twirpError(500, `fake room service error: ${message}`));
      });
    });
  }

  /** @internal use startFakeRoomService */
  async listen(): Promise<void> {
    this.baseUrl = await listenOnLoopback(this.server);
  }

  get url(): string {
    return this.baseUrl;
  }

  join(room: string, participant: FakeParticipantInput): void {
    const joinedAt = participant.joinedAt ?? nowSeconds();
    let members = this.rooms.get(room);
    if (!members) {
      members = new Map();
      this.rooms.set(room, members);
    }
    members.set(
      participant.identity,
      new ParticipantInfo({
        sid: participant.sid,
        identity: participant.identity,
        state: ParticipantInfo_State[participant.state ?? 'ACTIVE'],
        joinedAt: BigInt(joinedAt),
        joinedAtMs: BigInt(joinedAt * 1000),
      }),
    );
  }

  leave(room: string, identity: string): void {
    const members = this.rooms.get(room);
    members?.delete(identity);
    if (members?.size === 0) this.rooms.delete(room);
  }

  clear(): void {
    this.rooms.clear();
    this.created.clear();
  }

  setFailing(status: number | null): void {
    this.failingStatus = status;
  }

  setDown(down: boolean): void {
    this.down = down;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((err) => (err ? reject(err) : resolve())));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const at = Date.now();
    const raw = await readRawBody(req);
    const match = /^\/twirp\/livekit\.RoomService\/([A-Za-z]+)$/.exec(new URL(req.url ?? '/', 'http://fake-livekit').pathname);
    const method = match?.[1];
    if (req.method !== 'POST' || (method !== 'ListParticipants' && method !== 'GetParticipant' && method !== 'CreateRoom' && method !== 'RemoveParticipant')) {
      writeJson(res, twirpError(404, `no handler for path ${req.url ?? ''}`, 'bad_route'));
      return;
    }

    let request: Record<string, unknown> = {};
    let bodyError: string | undefined;
    try {
      const parsed: unknown = raw.length === 0 ? {} : JSON.parse(raw.toString('utf8'));
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) request = parsed as Record<string, unknown>;
      else bodyError = 'request body must be a JSON object';
    } catch (err) {
      bodyError = `malformed JSON: ${err instanceof Error ? err.message : String(err)}`;
    }
    const room = typeof request[method === 'CreateRoom' ? 'name' : 'room'] === 'string' ? (request[method === 'CreateRoom' ? 'name' : 'room'] as string) : '';
    const identity = typeof request['identity'] === 'string' ? request['identity'] : undefined;
    const num = (k: string) => (typeof request[k] === 'number' ? (request[k] as number) : 0);
    const params = method === 'CreateRoom' ? { emptyTimeout: num('emptyTimeout'), departureTimeout: num('departureTimeout'), maxParticipants: num('maxParticipants') } : undefined;
    const call: RoomServiceCall = { method, room, ...(identity !== undefined ? { identity } : {}), ...(params ? { params } : {}), status: 0, at };

    if (this.down) {
      this.calls.push(call);
      req.socket.destroy();
      return;
    }
    const reply = await this.reply(method, room, identity, req.headers.authorization, bodyError);
    call.status = reply.status;
    this.calls.push(call);
    writeJson(res, reply);
  }

  private async reply(
    method: RoomServiceMethod,
    room: string,
    identity: string | undefined,
    authorization: string | undefined,
    bodyError: string | undefined,
  ): Promise<TwirpReply> {
    if (this.failingStatus !== null) return twirpError(this.failingStatus, `injected failure (${this.failingStatus})`);
    if (bodyError !== undefined) return twirpError(400, bodyError, 'malformed');
    const denied = await this.authorize(authorization, room, method === 'CreateRoom');
    if (denied) return denied;
    if (room === '') return twirpError(400, 'room is required', 'invalid_argument');
    if (method === 'CreateRoom') {
      // Creating an existing room answers that room, as LiveKit does.
      let created = this.created.get(room);
      if (!created) this.created.set(room, (created = { sid: `RM_${randomBytes(6).toString('hex')}`, at: nowSeconds() }));
      return { status: 200, body: new Room({ name: room, sid: created.sid, creationTime: BigInt(created.at) }).toJson() };
    }

    const members = this.rooms.get(room);
    if (method === 'ListParticipants') {
      const participants = [...(members?.values() ?? [])];
      return { status: 200, body: new ListParticipantsResponse({ participants }).toJson() };
    }
    const participant = identity !== undefined ? members?.get(identity) : undefined;
    if (!participant) return twirpError(404, 'participant not found', 'not_found');
    if (method === 'RemoveParticipant') {
      members!.delete(identity!);
      return { status: 200, body: {} };
    }
    return { status: 200, body: participant.toJson() };
  }

  private async authorize(authorization: string | undefined, room: string, create = false): Promise<TwirpReply | undefined> {
    const token = /^Bearer\s+(\S+)$/i.exec(authorization ?? '')?.[1];
    if (token === undefined) return twirpError(401, 'authorization header required', 'unauthenticated');
    try {
      const claims = await this.verifier.verify(token);
      if (create ? claims.video?.roomCreate !== true : claims.video?.roomAdmin !== true || claims.video.room !== room) {
        return twirpError(401, 'permissions denied', 'unauthenticated');
      }
      return undefined;
    } catch (err) {
      // As LiveKit words it, quoting the token it refused.
      return twirpError(401, `invalid token: ${token}, error: ${err instanceof Error ? err.message : String(err)}`, 'unauthenticated');
    }
  }
}

function writeJson(res: ServerResponse, reply: TwirpReply): void {
  res.writeHead(reply.status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(reply.body));
}

export async function startFakeRoomService(opts: ApiKeyPair): Promise<FakeRoomService> {
  const service = new FakeRoomService(opts);
  await service.listen();
  return service;
}
