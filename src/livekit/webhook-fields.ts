import { DisconnectReason } from '@livekit/protocol';
import type { WebhookEvent } from 'livekit-server-sdk';

/** The fields of a LiveKit webhook the daemon uses, as `WebhookEvent.fromJson` would read them. */
export interface WebhookFields {
  event: string;
  id: string;
  /** Seconds, as LiveKit sends it (0 when absent). */
  createdAt: number;
  room: string | null;
  identity: string | null;
  sid: string | null;
  /** The `DisconnectReason` name, `REASON_<n>` for a number without one, null for none. */
  reason: string | null;
  joinedAtMs: number | null;
}

/** The fields from the SDK's reading of a webhook (the slow path, and the reference of the differential test). */
export function webhookFieldsOf(e: WebhookEvent): WebhookFields {
  const p = e.participant;
  const joinedMs = p ? Number(p.joinedAtMs ?? 0n) || Number(p.joinedAt ?? 0n) * 1000 : 0;
  return {
    event: e.event,
    id: e.id,
    createdAt: Number(e.createdAt ?? 0n),
    room: e.room?.name || null,
    identity: p?.identity || null,
    sid: p?.sid || null,
    reason: p && p.disconnectReason ? (DisconnectReason[p.disconnectReason] ?? `REASON_${p.disconnectReason}`) : null,
    joinedAtMs: joinedMs > 0 ? joinedMs : null,
  };
}

/**
 * The same fields read straight from the parsed JSON, for the shape LiveKit sends (camelCase names, enum names,
 * int64 as decimal strings or safe integers). Anything else among the fields read (a proto field name, an enum
 * number, a wrong type) gives null, and the caller lets `WebhookEvent.fromJson` read the body instead, so that both
 * readings agree wherever this one answers (test/unit/webhook-fields.test.ts). Fields not read are not checked: the
 * body is already verified as signed by LiveKit.
 */
export function readWebhookFields(body: unknown): WebhookFields | null {
  if (!isObject(body) || hasAny(body, TOP_PROTO_NAMES)) return null;
  const event = str(body.event);
  const id = str(body.id);
  const createdAt = int64(body.createdAt);
  if (event === undefined || id === undefined || createdAt === undefined) return null;
  const room = body.room ?? null;
  const p = body.participant ?? null;
  if ((room !== null && !isObject(room)) || (p !== null && !isObject(p))) return null;
  const roomName = room === null ? '' : str(room.name);
  if (roomName === undefined) return null;
  let identity = '';
  let sid = '';
  let reason: string | null = null;
  let joinedMs = 0;
  if (p !== null) {
    if (hasAny(p, PARTICIPANT_PROTO_NAMES)) return null;
    const i = str(p.identity);
    const s = str(p.sid);
    const at = int64(p.joinedAt);
    const atMs = int64(p.joinedAtMs);
    const r = p.disconnectReason ?? null;
    if (i === undefined || s === undefined || at === undefined || atMs === undefined) return null;
    if (r !== null && (typeof r !== 'string' || !REASON_NAMES.has(r))) return null;
    identity = i;
    sid = s;
    reason = r === null || r === 'UNKNOWN_REASON' ? null : r;
    joinedMs = atMs || at * 1000;
  }
  return { event, id, createdAt, room: roomName || null, identity: identity || null, sid: sid || null, reason, joinedAtMs: joinedMs > 0 ? joinedMs : null };
}

/** Proto field names `fromJson` also accepts for the fields read; their presence sends the body to the SDK. */
const TOP_PROTO_NAMES = ['created_at'];
const PARTICIPANT_PROTO_NAMES = ['joined_at', 'joined_at_ms', 'disconnect_reason'];
const REASON_NAMES = new Set(Object.keys(DisconnectReason).filter((k) => Number.isNaN(Number(k))));
const INT64 = /^(0|-?[1-9][0-9]{0,14})$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function hasAny(o: Record<string, unknown>, keys: readonly string[]): boolean {
  return keys.some((k) => k in o);
}

/** A proto3 string: absent or null is ''; anything but a string is left to the SDK (undefined). */
function str(v: unknown): string | undefined {
  if (v === undefined || v === null) return '';
  return typeof v === 'string' ? v : undefined;
}

/** A proto3 int64 within the safe range: absent or null is 0; other forms are left to the SDK (undefined). */
function int64(v: unknown): number | undefined {
  if (v === undefined || v === null) return 0;
  // `+ 0` turns -0 into 0, as the SDK's int64 reading does.
  if (typeof v === 'string') return INT64.test(v) ? Number(v) + 0 : undefined;
  return typeof v === 'number' && Number.isSafeInteger(v) ? v + 0 : undefined;
}
