import { createHash, createHmac } from 'node:crypto';
import {
  Codec,
  DisconnectReason,
  ParticipantInfo,
  ParticipantInfo_Kind,
  ParticipantInfo_State,
  ParticipantPermission,
  Room,
  SimulcastCodecInfo,
  TrackInfo,
  TrackSource,
  TrackType,
  VideoLayer,
  VideoQuality,
  WebhookEvent,
} from '@livekit/protocol';

export type DisconnectReasonName = keyof typeof DisconnectReason;

export interface WebhookFields {
  id: string;
  room: string;
  roomSid: string;
  identity: string;
  sid: string;
  /** Seconds. */
  createdAt: number;
}

const MARKS = { id: 'XXEVENTIDXX', room: 'XXROOMNAMEXX', roomSid: 'XXROOMSIDXX', identity: 'XXIDENTITYXX', sid: 'XXPARTSIDXX', createdAt: '4242424242' } as const;
type Field = keyof typeof MARKS;
const MARK_TO_FIELD = new Map<string, Field>(Object.entries(MARKS).map(([k, v]) => [v, k as Field]));

/**
 * A `participant_left` body as LiveKit sends it for a publishing Element Call participant: protojson of the whole
 * `WebhookEvent` with the room (codecs, timeouts, counts) and the participant (permission, a microphone track and a
 * simulcast camera track with their layers and codecs). About 1.8 KB, the weight of LiveKit's own events for such a participant; the
 * tests' `buildWebhookBody` only carries the fields the daemon reads.
 */
export function participantLeftTemplate(reason: DisconnectReasonName): (f: WebhookFields) => string {
  const joinedAt = 1_764_150_000n;
  const layers = [
    new VideoLayer({ quality: VideoQuality.LOW, width: 320, height: 180, bitrate: 150_000, ssrc: 1_111_111_111, rid: 'q' }),
    new VideoLayer({ quality: VideoQuality.MEDIUM, width: 640, height: 360, bitrate: 500_000, ssrc: 2_222_222_222, rid: 'h' }),
    new VideoLayer({ quality: VideoQuality.HIGH, width: 1280, height: 720, bitrate: 1_700_000, ssrc: 3_333_333_333, rid: 'f' }),
  ];
  const event = new WebhookEvent({
    event: 'participant_left',
    id: MARKS.id,
    createdAt: BigInt(MARKS.createdAt),
    room: new Room({
      sid: MARKS.roomSid,
      name: MARKS.room,
      emptyTimeout: 300,
      departureTimeout: 20,
      creationTime: joinedAt - 600n,
      creationTimeMs: (joinedAt - 600n) * 1000n,
      enabledCodecs: ['audio/opus', 'audio/red', 'video/VP8', 'video/H264', 'video/VP9', 'video/AV1'].map((mime) => new Codec({ mime })),
      numParticipants: 8,
      numPublishers: 8,
    }),
    participant: new ParticipantInfo({
      sid: MARKS.sid,
      identity: MARKS.identity,
      name: 'Alice Example',
      state: ParticipantInfo_State.DISCONNECTED,
      joinedAt,
      joinedAtMs: joinedAt * 1000n,
      version: 14,
      region: 'eu-central',
      isPublisher: true,
      kind: ParticipantInfo_Kind.STANDARD,
      disconnectReason: DisconnectReason[reason],
      permission: new ParticipantPermission({ canSubscribe: true, canPublish: true, canPublishData: true, canUpdateMetadata: true }),
      tracks: [
        new TrackInfo({
          sid: 'TR_AMkGtH3v7pQx',
          type: TrackType.AUDIO,
          source: TrackSource.MICROPHONE,
          mimeType: 'audio/red',
          mid: '0',
          stream: 'camera',
          codecs: [new SimulcastCodecInfo({ mimeType: 'audio/red', mid: '0', cid: 'a3f1c0de-6c59-4e36-9c69-0f4b1d2e8a11' })],
        }),
        new TrackInfo({
          sid: 'TR_VCy8bWq2LmNo',
          type: TrackType.VIDEO,
          source: TrackSource.CAMERA,
          width: 1280,
          height: 720,
          simulcast: true,
          mimeType: 'video/VP8',
          mid: '1',
          stream: 'camera',
          layers,
          codecs: [new SimulcastCodecInfo({ mimeType: 'video/VP8', mid: '1', cid: '5b0e7e1d-2c6a-4f0b-8d0e-7c3a9b4f6e22', layers })],
        }),
      ],
    }),
  });
  const json = event.toJsonString();
  const pattern = new RegExp(`(${Object.values(MARKS).join('|')})`);
  const pieces = json.split(pattern);
  const literals: string[] = [];
  const fields: Field[] = [];
  pieces.forEach((p, i) => (i % 2 === 0 ? literals.push(p) : fields.push(MARK_TO_FIELD.get(p)!)));
  return (f) => {
    let out = literals[0]!;
    for (let i = 0; i < fields.length; i++) out += String(f[fields[i]!]) + literals[i + 1]!;
    return out;
  };
}

/**
 * Signs webhooks as LiveKit's Go server does: a raw HS256 JWT (`{iss, nbf, iat, exp, sha256}`) in `Authorization`.
 * Synchronous and cheap (node:crypto), so the load generator spends its time sending, not signing.
 */
export class WebhookSigner {
  private readonly header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');

  constructor(
    private readonly apiKey: string,
    private readonly apiSecret: string,
  ) {}

  sign(body: string, nowSeconds = Math.floor(Date.now() / 1000)): string {
    const sha256 = createHash('sha256').update(body).digest('base64');
    const claims = Buffer.from(JSON.stringify({ exp: nowSeconds + 300, iat: nowSeconds, iss: this.apiKey, nbf: nowSeconds, sha256 })).toString('base64url');
    const input = `${this.header}.${claims}`;
    return `${input}.${createHmac('sha256', this.apiSecret).update(input).digest('base64url')}`;
  }
}

export const API_KEY = 'APIbenchKey0001';
export const API_SECRET = 'bench-secret-0123456789abcdefghijklmnopqrstuvwxyz';
