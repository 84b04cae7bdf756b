import fc from 'fast-check';
import { WebhookEvent } from 'livekit-server-sdk';
import { describe, expect, it } from 'vitest';
import { readWebhookFields, webhookFieldsOf } from '../../src/livekit/webhook-fields.js';
import { buildWebhookBody } from '../fakes/livekit.js';

/** The SDK's reading, or 'refused' when `fromJson` throws. */
function sdkReading(body: unknown): ReturnType<typeof webhookFieldsOf> | 'refused' {
  try {
    return webhookFieldsOf(WebhookEvent.fromJson(body as never, { ignoreUnknownFields: true }) as WebhookEvent);
  } catch {
    return 'refused';
  }
}

const absent = fc.constant(undefined);
/** A proto3 string field as LiveKit or a stranger might send it. */
const stringField = fc.oneof(fc.string({ maxLength: 12 }), fc.constant(''), fc.constant(null), absent, fc.integer(), fc.boolean(), fc.constant({}));
/** A proto3 int64 field: decimal strings, numbers (safe, huge, fractional, negative), junk. */
const int64Field = fc.oneof(
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
  fc.integer({ min: 0, max: 2_000_000_000 }).map(String),
  fc.integer({ min: 0, max: 2_000_000_000 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.constantFrom('01', '-0', '1e3', ' 5', '0x10', '', '1.0', 1.5, 2 ** 60, -1, '9007199254740993'),
  fc.constant(null),
  absent,
);
const reasonField = fc.oneof(
  fc.constantFrom('CLIENT_INITIATED', 'SIGNAL_CLOSE', 'DUPLICATE_IDENTITY', 'MIGRATION', 'ROOM_DELETED', 'UNKNOWN_REASON', 'JOIN_FAILURE', 'NOT_A_REASON', 'client_initiated'),
  fc.integer({ min: -1, max: 40 }),
  fc.constant(null),
  absent,
);

const withoutAbsent = (o: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

const participantArb = fc
  .record({
    identity: stringField,
    sid: stringField,
    disconnectReason: reasonField,
    joinedAt: int64Field,
    joinedAtMs: int64Field,
    state: fc.constantFrom('ACTIVE', 'DISCONNECTED', undefined),
    // Proto field names fromJson also reads.
    snake: fc.constantFrom(undefined, 'joined_at', 'joined_at_ms', 'disconnect_reason'),
    unknown: fc.constantFrom(undefined, 'extra'),
  })
  .map(({ snake, unknown, ...p }) => withoutAbsent({ ...p, ...(snake ? { [snake]: snake === 'disconnect_reason' ? 'SIGNAL_CLOSE' : '1700000000' } : {}), ...(unknown ? { [unknown]: { nested: [1, 2] } } : {}) }));

const bodyArb = fc
  .record({
    event: fc.oneof(fc.constantFrom('participant_joined', 'participant_left', 'participant_connection_aborted', 'room_finished', 'track_published'), stringField),
    id: stringField,
    createdAt: int64Field,
    room: fc.oneof(fc.record({ name: stringField, sid: fc.constantFrom('RM_a', undefined) }).map(withoutAbsent), fc.constant(null), absent, fc.constant('room'), fc.constant([])),
    participant: fc.oneof(participantArb, fc.constant(null), absent, fc.constant(7)),
    snake: fc.constantFrom(undefined, 'created_at'),
  })
  .map(({ snake, ...b }) => withoutAbsent({ ...b, ...(snake ? { created_at: '1700000001' } : {}) }));

describe('reading the webhook fields from the parsed JSON agrees with the SDK (WebhookEvent.fromJson)', () => {
  it('reads LiveKit\'s own webhook bodies itself, exactly as the SDK does', () => {
    for (const reason of ['CLIENT_INITIATED', 'SIGNAL_CLOSE', undefined] as const) {
      const body = JSON.parse(
        buildWebhookBody({
          event: 'participant_left',
          room: { name: 'room-a', sid: 'RM_a' },
          participant: { sid: 'PA_1', identity: '@alice:example.org', state: 'DISCONNECTED', ...(reason ? { disconnectReason: reason } : {}) },
        }),
      ) as unknown;
      const ours = readWebhookFields(body);
      expect(ours).not.toBeNull();
      expect(ours).toEqual(sdkReading(body));
      expect(ours!.reason).toBe(reason ?? null);
    }
  });

  it('answers the same fields whenever it answers, and leaves to the SDK every body the SDK refuses', () => {
    let readHere = 0;
    fc.assert(
      fc.property(bodyArb, (body) => {
        const ours = readWebhookFields(body);
        const sdk = sdkReading(body);
        if (ours === null) return;
        readHere++;
        expect(sdk).not.toBe('refused');
        expect(ours).toEqual(sdk);
      }),
      { numRuns: 5_000 },
    );
    // The generator must reach the fast reading often enough for the comparison to mean something.
    expect(readHere).toBeGreaterThan(50);
  });
});
