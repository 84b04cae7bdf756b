import type { Clock } from '../../src/clock.js';
import type { CallResult, HomeserverCall, HomeserverClient } from '../../src/homeserver/client.js';

/** The `HomeserverClient` surface the engine uses, answering every call 200 at once: only our own cost remains. */
export class InstantHomeserver {
  refreshes = 0;
  actions = 0;

  constructor(private readonly clock: Clock) {}

  call(c: HomeserverCall): Promise<CallResult> {
    if (c.op === 'refresh') this.refreshes++;
    else this.actions++;
    return Promise.resolve({ outcome: { kind: 'ok', sentAt: this.clock.now() }, accessTokenRejected: false });
  }

  limiterBacklog(): number {
    return 0;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  forgetOrigin(): void {}

  asClient(): HomeserverClient {
    return this as unknown as HomeserverClient;
  }
}
