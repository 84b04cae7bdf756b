/**
 * LiveKit room and identity names as lk-jwt-service derives them (Go): base64 (standard alphabet, no padding) of
 * SHA-256 of Go's compact `json.Marshal` of a string array. The webhooks name rooms and participants this way, so a
 * compat delegation can only be matched if we reproduce the bytes exactly.
 */
import { createHash } from 'node:crypto';

/** Slot of the rooms handed out by the legacy `/sfu/get` endpoint. */
export const LEGACY_SLOT_ID = 'm.call#ROOM';

// Go's encoder escapes these for HTML safety (`<`, `>`, `&`) and for JavaScript source (U+2028, U+2029);
// JSON.stringify leaves them as they are.
const GO_EXTRA_ESCAPES = /[<>&\u2028\u2029]/g;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function goEscape(ch: string): string {
  return `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

/**
 * Go's `json.Marshal([]string{...})`. Control characters already agree with JSON.stringify (Go >= 1.22 writes
 * `\b` and `\f` as JavaScript does). A lone surrogate cannot reach Go as such: its decoder turns it into U+FFFD,
 * so we do the same before encoding.
 */
export function goJsonStringArray(values: readonly string[]): string {
  return `[${values.map((v) => JSON.stringify(v.replace(LONE_SURROGATE, '\ufffd')).replace(GO_EXTRA_ESCAPES, goEscape)).join(',')}]`;
}

function hashOf(values: readonly string[]): string {
  return createHash('sha256').update(goJsonStringArray(values), 'utf8').digest('base64').replace(/=+$/, '');
}

/** The LiveKit room of a MatrixRTC slot: hash of `[room_id, slot_id]`. */
export function liveKitRoomName(roomId: string, slotId: string): string {
  return hashOf([roomId, slotId]);
}

/** The room Element Call's Compatibility mode joins (token from `/sfu/get`). */
export function legacyRoomName(roomId: string): string {
  return liveKitRoomName(roomId, LEGACY_SLOT_ID);
}

/** The LiveKit identity lk-jwt-service mints: hash of `[user_id, device_id, member_id]`. */
export function liveKitIdentity(userId: string, deviceId: string, memberId: string): string {
  return hashOf([userId, deviceId, memberId]);
}

/** Element Call's Compatibility-mode identity: `<user_id>:<device_id>`, unhashed. */
export function legacyIdentity(userId: string, deviceId: string): string {
  return `${userId}:${deviceId}`;
}

/** MSC4195's LiveKit identity (and lk-jwt-service's application-service routes): hash of `[user_id, member_id]`. */
export function msc4195Identity(userId: string, memberId: string): string {
  return hashOf([userId, memberId]);
}
