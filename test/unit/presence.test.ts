import { describe, expect, it } from 'vitest';
import { PresenceTracker } from '../../src/livekit/presence.js';

describe('PresenceTracker', () => {
  it('tracks the current session and recognises events for a replaced one as stale', () => {
    const p = new PresenceTracker();
    expect(p.joined('r', 'alice', 'S1')).toBe('current');
    expect(p.joined('r', 'alice', 'S2')).toBe('current');
    expect(p.activeSid('r', 'alice')).toBe('S2');
    expect(p.departed('r', 'alice', 'S1', 1)).toBe('stale');
    expect(p.activeSid('r', 'alice')).toBe('S2');
    expect(p.departed('r', 'alice', 'S2', 2)).toBe('current');
    expect(p.activeSid('r', 'alice')).toBeNull();
  });

  it('ignores a late join or a repeated departure of an ended session', () => {
    const p = new PresenceTracker();
    p.joined('r', 'bob', 'S1');
    expect(p.departed('r', 'bob', 'S1', 1)).toBe('current');
    expect(p.departed('r', 'bob', 'S1', 2)).toBe('stale');
    expect(p.joined('r', 'bob', 'S1')).toBe('stale');
    expect(p.activeSid('r', 'bob')).toBeNull();
  });

  it('accepts the departure of a session whose join was never seen', () => {
    const p = new PresenceTracker();
    expect(p.departed('r', 'carol', 'S7', 1)).toBe('current');
  });

  it('ends every active session of a finished room and prunes ended entries', () => {
    const p = new PresenceTracker();
    p.joined('r', 'a', 'S1');
    p.joined('r', 'b', 'S2');
    p.joined('other', 'a', 'S3');
    expect(p.roomFinished('r', 100).map((x) => x.identity).sort()).toEqual(['a', 'b']);
    expect(p.activeSid('other', 'a')).toBe('S3');
    p.prune(101);
    expect(p.size).toBe(1);
  });

  // Found by the soak: a late participant_joined of an older session displaced the newer one reconciliation had seen.
  it('keeps the newest session when an older one is reported late, ordered by joinedAt', () => {
    const p = new PresenceTracker();
    expect(p.joined('r', 'dan', 'C', 3000)).toBe('current');
    expect(p.joined('r', 'dan', 'B', 2000)).toBe('stale');
    expect(p.activeSid('r', 'dan')).toBe('C');
    expect(p.departed('r', 'dan', 'B', 10, 'continues')).toBe('stale');
    expect(p.joined('r', 'dan', 'C', 3000)).toBe('current');
    expect(p.joined('r', 'dan', 'D', 4000)).toBe('current');
    expect(p.activeSid('r', 'dan')).toBe('D');
  });
});
