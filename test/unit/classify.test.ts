import { describe, expect, it } from 'vitest';
import { DisconnectReason } from '@livekit/protocol';
import { classifyDeparture, webhookEventLabel } from '../../src/livekit/classify.js';

const expected: Record<string, 'leave' | 'connection_lost' | 'continues'> = {
  UNKNOWN_REASON: 'connection_lost',
  CLIENT_INITIATED: 'leave',
  DUPLICATE_IDENTITY: 'continues',
  SERVER_SHUTDOWN: 'connection_lost',
  PARTICIPANT_REMOVED: 'leave',
  ROOM_DELETED: 'leave',
  STATE_MISMATCH: 'connection_lost',
  JOIN_FAILURE: 'connection_lost',
  MIGRATION: 'continues',
  SIGNAL_CLOSE: 'connection_lost',
  ROOM_CLOSED: 'leave',
  USER_UNAVAILABLE: 'connection_lost',
  USER_REJECTED: 'connection_lost',
  SIP_TRUNK_FAILURE: 'connection_lost',
  CONNECTION_TIMEOUT: 'connection_lost',
  MEDIA_FAILURE: 'connection_lost',
  AGENT_ERROR: 'connection_lost',
};

describe('classifyDeparture', () => {
  const names = Object.keys(DisconnectReason).filter((k) => Number.isNaN(Number(k)));
  it('covers every DisconnectReason LiveKit defines', () => {
    for (const name of names) expect(expected, `missing ${name}`).toHaveProperty(name);
  });
  for (const [reason, outcome] of Object.entries(expected)) {
    it(`participant_left ${reason} -> ${outcome}`, () => {
      expect(classifyDeparture('participant_left', reason)).toBe(outcome);
    });
  }
  it('treats a missing reason as UNKNOWN_REASON', () => {
    expect(classifyDeparture('participant_left', undefined)).toBe('connection_lost');
  });
  it('treats participant_connection_aborted as a lost connection unless the session continues elsewhere', () => {
    expect(classifyDeparture('participant_connection_aborted', 'CLIENT_INITIATED')).toBe('connection_lost');
    expect(classifyDeparture('participant_connection_aborted', undefined)).toBe('connection_lost');
    expect(classifyDeparture('participant_connection_aborted', 'MIGRATION')).toBe('continues');
  });
  it('labels unknown webhook events as other', () => {
    expect(webhookEventLabel('participant_left')).toBe('participant_left');
    expect(webhookEventLabel('track_published')).toBe('other');
  });
});
