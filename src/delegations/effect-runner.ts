import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { CallResult, HomeserverClient } from '../homeserver/client.js';
import type { Store } from '../store/store.js';
import type { Effect } from './machine.js';
import type { Delegation } from './model.js';

/** Which calls of a delegation are decided or in flight, as the machine's `tick` needs to know. */
export interface Busy {
  refresh: boolean;
  action: boolean;
}

/**
 * Carries out the homeserver calls the machine decides: one call path for refreshes and actions, at most one call
 * of each kind in flight per delegation, and a drain that waits for calls in flight when the process stops.
 */
export class EffectRunner {
  private readonly busy = new Map<string, Busy>();
  private readonly inflight = new Set<Promise<unknown>>();
  private stopped = false;

  constructor(
    private readonly deps: {
      store: Pick<Store, 'getSecrets' | 'saveSecrets'>;
      homeservers: Pick<HomeserverClient, 'call'>;
      clock: Clock;
      logger: Logger;
      /** Whether the delegation is still open here. */
      isOpen(id: string): boolean;
      /** Takes a call's answer to the delegation (history, metrics, the machine). */
      answered(d: Delegation, effect: Effect, result: CallResult): Promise<void>;
      /** The call is over, answered or not: when the delegation is next due. */
      settled(id: string, failed: boolean): void;
    },
  ) {}

  get stopping(): boolean {
    return this.stopped;
  }

  /** The delegation's calls in flight, or undefined when none ever was. */
  busyOf(id: string): Readonly<Busy> | undefined {
    return this.busy.get(id);
  }

  /**
   * Marks calls in flight from the moment they are decided, so that no timer decides them again while the decision
   * is being made durable.
   */
  claim(id: string, effects: readonly Effect[]): void {
    const busy = this.flags(id);
    for (const e of effects) busy[e.type] = true;
  }

  /** The decision was not made durable: the calls are not in flight after all. */
  release(id: string, effects: readonly Effect[]): void {
    const busy = this.flags(id);
    for (const e of effects) busy[e.type] = false;
  }

  forget(id: string): void {
    this.busy.delete(id);
  }

  /** Carries out a claimed call. */
  run(d: Delegation, effect: Effect): void {
    // Also when it ended (a revoke) while the decision was being stored: the call is no longer wanted, and starting
    // it would bring back per-delegation and per-origin state that ending it just released.
    if (this.stopped || !this.deps.isOpen(d.id)) {
      const decided = this.busy.get(d.id);
      if (decided) decided[effect.type] = false;
      return;
    }
    const busy = this.flags(d.id);
    const p = this.call(d, effect)
      .then(
        () => false,
        (err: unknown) => {
          this.deps.logger.error({ err: { message: (err as Error).message }, delegation_id: d.id }, `${effect.type} failed without an answer; trying again shortly`);
          return true;
        },
      )
      .then((failed) => {
        busy[effect.type] = false;
        this.inflight.delete(p);
        this.deps.settled(d.id, failed);
      });
    this.inflight.add(p);
  }

  /** Stop starting calls; wait for those in flight, at most until `deadline`. */
  async drain(deadline: number): Promise<void> {
    this.stopped = true;
    const wait = Math.max(0, deadline - this.deps.clock.now());
    await Promise.race([
      Promise.allSettled([...this.inflight]),
      new Promise<void>((resolve) => {
        const h = this.deps.clock.setTimeout(resolve, wait);
        void Promise.allSettled([...this.inflight]).then(() => this.deps.clock.clearTimeout(h));
      }),
    ]);
  }

  private async call(d: Delegation, effect: Effect): Promise<void> {
    const { store } = this.deps;
    const secrets = await store.getSecrets(d.id);
    if (!secrets) throw new Error('delegation secrets missing from the store');
    const result = await this.deps.homeservers.call({
      op: effect.type,
      dialect: d.dialect,
      baseUrl: d.homeserver,
      token: secrets.token,
      accessToken: secrets.accessToken,
      actionName: effect.type === 'action' ? d.actions[effect.action] : '',
      source: d.source,
      asUser: d.owner ?? null,
      // Actions first: a late membership change is worse than a late refresh, which has the rest of the timeout.
      // Last, refreshes of delegations the homeserver never accepted: they must not delay those it did.
      priority: { rank: effect.type === 'action' ? 0 : d.lastRefreshAt === null ? 2 : 1, deadline: d.expiresAt },
    });
    if (result.accessTokenRejected) await store.saveSecrets(d.id, { ...secrets, accessToken: null });
    await this.deps.answered(d, effect, result);
  }

  private flags(id: string): Busy {
    let busy = this.busy.get(id);
    if (!busy) this.busy.set(id, (busy = { refresh: false, action: false }));
    return busy;
  }
}
