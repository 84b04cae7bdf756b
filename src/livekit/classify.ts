import type { Departure } from '../delegations/model.js';

/** LiveKit's DisconnectReason names, as they appear in proto3 JSON (UNKNOWN_REASON is the omitted zero value). */
const LEAVE_REASONS = new Set(['CLIENT_INITIATED', 'PARTICIPANT_REMOVED', 'ROOM_DELETED', 'ROOM_CLOSED']);
const CONTINUING_REASONS = new Set(['DUPLICATE_IDENTITY', 'MIGRATION']);

/** Webhook event names we act on; anything else is counted as `other`. */
export const PARTICIPANT_EVENTS = ['participant_joined', 'participant_left', 'participant_connection_aborted', 'room_finished'] as const;
type ParticipantEventName = (typeof PARTICIPANT_EVENTS)[number];
export const WEBHOOK_EVENT_LABELS = [...PARTICIPANT_EVENTS, 'other'] as const;

export function webhookEventLabel(event: string): (typeof WEBHOOK_EVENT_LABELS)[number] {
  return (PARTICIPANT_EVENTS as readonly string[]).includes(event) ? (event as ParticipantEventName) : 'other';
}

/**
 * What a session's end means for the participant's membership (contract section 3):
 * intentional reasons leave at once; a replaced session continues elsewhere; everything else is a lost connection.
 */
export function classifyDeparture(event: 'participant_left' | 'participant_connection_aborted', reason: string | undefined): Departure {
  const r = reason || 'UNKNOWN_REASON';
  if (CONTINUING_REASONS.has(r)) return 'continues';
  if (event === 'participant_connection_aborted') return 'connection_lost';
  if (LEAVE_REASONS.has(r)) return 'leave';
  return 'connection_lost';
}

/** A session's join time in ms (LiveKit sends `joinedAtMs` and `joinedAt` in seconds; zero values are omitted). */
export function joinedAtMs(p: { joinedAtMs?: bigint; joinedAt?: bigint }): number | null {
  const ms = Number(p.joinedAtMs ?? 0n) || Number(p.joinedAt ?? 0n) * 1000;
  return ms > 0 ? ms : null;
}
