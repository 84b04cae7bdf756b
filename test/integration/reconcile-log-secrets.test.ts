import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { startFakeRoomService, type FakeRoomService } from '../fakes/livekit.js';
import { startDaemon, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { delegate } from '../helpers/scenario.js';

/** A JWT's first two segments (base64url of `{"`...), as any HS256 token starts. */
const JWT_SHAPED = /eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+/;

/**
 * LiveKit refuses a RoomService token signed with the wrong secret with a 401 whose text quotes that token (the fake
 * words it the same way). The reconciler's log lines about the failure must carry its status and code, not the text.
 */
describe('reconciliation against a LiveKit that refuses our key', () => {
  let hs: FakeHomeserver;
  let rs: FakeRoomService;
  let d: RunningDaemon;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    rs = await startFakeRoomService({ apiKey: 'devkey', apiSecret: 'a-secret-livekit-has-and-we-do-not-0123' });
    d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '1000', SIDECAR_JOIN_TIMEOUT_MS: '30000' });
  });
  afterAll(async () => {
    await d?.stop();
    await Promise.all([rs?.close(), hs?.close()]);
  });

  it('logs the 401 with its status and code, never the refused token', async () => {
    await delegate(d.url, hs, 'delayed_events');
    await waitFor('both kinds of RoomService call refused', () => ['ListParticipants', 'GetParticipant'].every((m) => rs.calls.some((c) => c.method === m && c.status === 401)), 15_000);
    const failures = () => d.logs.filter((l) => /(listParticipants|getParticipant) failed/.test(l));
    await waitFor('the failure logged', () => failures().length > 0, 10_000);
    for (const l of d.logs) expect(l).not.toMatch(JWT_SHAPED);
    const line = JSON.parse(failures()[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({ status: 401, code: 'unauthenticated' });
  });
});
