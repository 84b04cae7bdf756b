import type { Delegation } from './model.js';

/**
 * Steady-state refresh calls per second each homeserver origin needs for the open delegations it serves: what
 * admission control weighs a new delegation against.
 */
export class OriginLoad {
  private readonly load = new Map<string, number>();
  private readonly origins = new Map<string, string>();

  /** `refreshAt`: the fraction of a timeout after which a future is refreshed (SIDECAR_REFRESH_AT). */
  constructor(private readonly refreshAt: number) {}

  /** Steady-state refresh calls per second one delegation with this timeout needs. */
  refreshRate(timeoutMs: number): number {
    return 1000 / (Math.max(0.05, this.refreshAt - 0.05) * timeoutMs);
  }

  /** Calls per second the homeserver's origin would need with one more delegation of this timeout. */
  projected(homeserver: string, timeoutMs: number): number {
    return (this.load.get(this.originOf(homeserver)) ?? 0) + this.refreshRate(timeoutMs);
  }

  add(d: Delegation): void {
    this.change(d, 1);
  }

  remove(d: Delegation): void {
    this.change(d, -1);
  }

  private change(d: Delegation, sign: 1 | -1): void {
    const origin = this.originOf(d.homeserver);
    const next = (this.load.get(origin) ?? 0) + sign * this.refreshRate(d.timeoutMs);
    if (next <= 1e-9) this.load.delete(origin);
    else this.load.set(origin, next);
  }

  private originOf(homeserver: string): string {
    let origin = this.origins.get(homeserver);
    if (origin === undefined) this.origins.set(homeserver, (origin = new URL(homeserver).origin));
    return origin;
  }
}
