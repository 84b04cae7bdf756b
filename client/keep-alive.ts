import { FuturesKitError, MatrixApiError, SidecarApiError, SidecarUnreachableError } from './errors.js';
import type { FutureHandle, Homeserver } from './homeserver.js';
import type { DelegationRequest, DelegationSummary, SidecarClient } from './sidecar.js';
import { systemTimers, type Timers } from './transport.js';

/**
 * - `idle`: not started.
 * - `delegating`: the first delegation attempt is under way (the future is still refreshed if it takes long).
 * - `delegated`: the sidecar holds the future; this object does nothing more.
 * - `self`: the sidecar could not take it; this object refreshes the future and keeps offering it to the sidecar.
 * - `stopped`: {@link KeepAlive.stop} was called.
 * - `finalised`: the homeserver no longer knows the future (it fired, or was sent, cancelled or replaced).
 * - `expired`: self-refreshing failed until the future's timeout passed.
 * - `failed`: the homeserver refused a refresh for good (a 4xx other than 404 `M_NOT_FOUND` / 409 / 429).
 */
export type KeepAliveMode = 'idle' | 'delegating' | 'delegated' | 'self' | 'stopped' | 'finalised' | 'expired' | 'failed';

export type KeepAliveEvent =
  | { type: 'delegated'; delegation: DelegationSummary; created: boolean }
  | { type: 'sidecar_unreachable'; error: SidecarUnreachableError; retryInMs: number }
  /** The sidecar refused; `retryInMs` is null when a retry would not change its answer. */
  | { type: 'delegation_refused'; error: Error; retryInMs: number | null }
  | { type: 'refreshed'; expiresAt: number }
  | { type: 'refresh_failed'; error: Error; retryInMs: number }
  | { type: 'finalised'; error: MatrixApiError }
  | { type: 'expired'; error: Error }
  | { type: 'failed'; error: Error }
  | { type: 'stopped' };

export interface KeepAliveOptions {
  homeserver: Homeserver;
  handle: FutureHandle;
  /** The future's timeout (or the delayed event's delay) in milliseconds, as it was created. */
  timeoutMs: number;
  /** The sidecar to hand the future to; without one, this object only refreshes by itself. */
  sidecar?: SidecarClient;
  /** Extra delegation fields, and the homeserver URL as the sidecar should call it (default `homeserver.baseUrl`). */
  delegation?: Partial<Pick<DelegationRequest, 'actions' | 'accessToken' | 'homeserver'>>;
  /** How often to offer the future to the sidecar again while refreshing by itself (default 30 000 ms, ±25 % jitter). */
  redelegateEveryMs?: number;
  /** Refresh when this fraction of the timeout has passed since the last refresh (default 0.5). */
  refreshAt?: number;
  /** When the future would fire if not refreshed (ms epoch); default: start time + timeout. */
  expiresAt?: number;
  timers?: Timers;
  random?: () => number;
  /** Also available later through {@link KeepAlive.on}. */
  onEvent?: (e: KeepAliveEvent) => void;
}

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 30_000;
const MIN_RETRY_MS = 100;

/**
 * Keeps one future alive: hands it to the sidecar, and while the sidecar cannot take it, refreshes it itself (at
 * `refreshAt` of the timeout) and offers it to the sidecar again every `redelegateEveryMs`, stopping its own
 * refreshes as soon as a delegation succeeds.
 *
 * Mind the timeout when choosing it: while this object refreshes by itself, a crashed client leaves the future
 * pending for up to the whole timeout, which for a delegated future is typically hours.
 *
 * @example
 * ```ts
 * const keepAlive = new KeepAlive({ homeserver: hs, handle: future.handle, timeoutMs, sidecar, onEvent: console.log });
 * await keepAlive.start(); // 'delegated', or 'self' while the sidecar is unreachable
 * // ... the call ends:
 * await keepAlive.stop();
 * ```
 */
export class KeepAlive {
  private state: KeepAliveMode = 'idle';
  private current: DelegationSummary | null = null;
  private refreshes = 0;
  private refreshFailures = 0;
  private expiry = 0;
  private refreshTimer: unknown = null;
  private delegateTimer: unknown = null;
  private readonly abort = new AbortController();
  private readonly listeners = new Set<(e: KeepAliveEvent) => void>();
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly refreshAt: number;
  private readonly redelegateEveryMs: number;

  constructor(private readonly opts: KeepAliveOptions) {
    if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) throw new RangeError('timeoutMs must be positive');
    this.timers = opts.timers ?? systemTimers;
    this.random = opts.random ?? Math.random;
    this.refreshAt = opts.refreshAt ?? 0.5;
    if (!(this.refreshAt > 0 && this.refreshAt < 1)) throw new RangeError('refreshAt must be between 0 and 1');
    this.redelegateEveryMs = opts.redelegateEveryMs ?? 30_000;
    if (opts.handle.dialect === 'delayed_events' && opts.delegation?.actions !== undefined) throw new TypeError('actions are only for the futures dialect');
    if (opts.handle.dialect === 'futures' && opts.delegation?.accessToken !== undefined) throw new TypeError('accessToken is only for the delayed_events dialect');
    if (opts.onEvent) this.listeners.add(opts.onEvent);
  }

  get mode(): KeepAliveMode {
    return this.state;
  }

  /** The sidecar's delegation once it took the future. */
  get delegation(): DelegationSummary | null {
    return this.current;
  }

  /** Successful refreshes this object made itself. */
  get refreshCount(): number {
    return this.refreshes;
  }

  /** When the future would fire as far as this object knows (its own refreshes, or the sidecar's answer). */
  get expiresAt(): number {
    return this.expiry;
  }

  /** Listens to what happens; returns the function that stops listening. */
  on(listener: (e: KeepAliveEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Offers the future to the sidecar; if that fails, refreshes it once at once and goes on by itself. Resolves with
   * the mode reached: `delegated`, `self`, or a terminal one.
   */
  async start(): Promise<KeepAliveMode> {
    if (this.state !== 'idle') throw new FuturesKitError('KeepAlive.start() may be called only once');
    this.expiry = this.opts.expiresAt ?? this.timers.now() + this.opts.timeoutMs;
    this.state = 'delegating';
    // Armed from the start so that a slow first delegation attempt cannot let the future lapse.
    this.scheduleRefresh(this.expiry - this.opts.timeoutMs * (1 - this.refreshAt) - this.timers.now());
    if (this.opts.sidecar) {
      await this.tryDelegate();
      if (this.state !== 'delegating') return this.state;
    }
    this.state = 'self';
    this.clearRefresh();
    await this.refreshNow();
    return this.state;
  }

  /**
   * Stops refreshing and stops offering the future to the sidecar. With `revoke`, a delegation the sidecar holds is
   * revoked too (the sidecar then neither refreshes nor fires); without it, the sidecar carries on.
   *
   * @throws the sidecar's error when the revocation fails; this object is stopped all the same.
   */
  async stop(opts: { revoke?: boolean } = {}): Promise<void> {
    const wasDelegated = this.state === 'delegated';
    if (this.isTerminal()) return;
    this.clearRefresh();
    this.clearDelegation();
    this.abort.abort(new FuturesKitError('KeepAlive stopped'));
    this.state = 'stopped';
    this.emit({ type: 'stopped' });
    if (opts.revoke && wasDelegated && this.current && this.opts.sidecar) await this.opts.sidecar.revoke(this.current.delegationId);
  }

  private isTerminal(): boolean {
    return this.state === 'stopped' || this.state === 'finalised' || this.state === 'expired' || this.state === 'failed';
  }

  private refreshing(): boolean {
    return this.state === 'delegating' || this.state === 'self';
  }

  private async tryDelegate(): Promise<void> {
    const sidecar = this.opts.sidecar!;
    const { handle } = this.opts;
    try {
      const { delegation, created } = await sidecar.delegate(
        {
          homeserver: this.opts.delegation?.homeserver ?? this.opts.homeserver.baseUrl,
          dialect: handle.dialect,
          token: handle.token,
          timeoutMs: this.opts.timeoutMs,
          ...(this.opts.delegation?.actions !== undefined ? { actions: this.opts.delegation.actions } : {}),
          ...(this.opts.delegation?.accessToken !== undefined ? { accessToken: this.opts.delegation.accessToken } : {}),
        },
        this.abort.signal,
      );
      if (!this.refreshing()) return;
      this.current = delegation;
      this.expiry = Math.max(this.expiry, delegation.expiresAt);
      this.state = 'delegated';
      this.clearRefresh();
      this.clearDelegation();
      this.emit({ type: 'delegated', delegation, created });
    } catch (err) {
      if (this.abort.signal.aborted || !this.refreshing()) return;
      const error = err instanceof Error ? err : new Error(String(err));
      if (error instanceof SidecarUnreachableError) {
        const retryInMs = this.redelegateDelay();
        this.emit({ type: 'sidecar_unreachable', error, retryInMs });
        this.scheduleDelegation(retryInMs);
        return;
      }
      // Rate limited: later. Anything else (a refusal, a malformed answer) would only be repeated.
      const transient = error instanceof SidecarApiError && error.isTransient;
      const retryInMs = transient ? Math.max(this.redelegateDelay(), (error as SidecarApiError).retryAfterMs ?? 0) : null;
      this.emit({ type: 'delegation_refused', error, retryInMs });
      if (retryInMs !== null) this.scheduleDelegation(retryInMs);
    }
  }

  private async refreshNow(): Promise<void> {
    if (!this.refreshing()) return;
    const sentAt = this.timers.now();
    try {
      await this.opts.homeserver.refresh(this.opts.handle, this.abort.signal);
    } catch (err) {
      if (this.abort.signal.aborted || !this.refreshing()) return;
      this.onRefreshError(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.refreshes++;
    this.refreshFailures = 0;
    this.expiry = Math.max(this.expiry, sentAt + this.opts.timeoutMs);
    this.emit({ type: 'refreshed', expiresAt: this.expiry });
    if (this.refreshing()) this.scheduleRefresh(sentAt + this.opts.timeoutMs * this.refreshAt - this.timers.now());
  }

  private onRefreshError(err: Error): void {
    if (err instanceof MatrixApiError && err.isFinalised) return this.end('finalised', { type: 'finalised', error: err });
    if (err instanceof MatrixApiError && err.status >= 400 && err.status < 500 && err.status !== 429 && err.status !== 405 && err.errcode !== 'M_UNRECOGNIZED') {
      return this.end('failed', { type: 'failed', error: err });
    }
    const now = this.timers.now();
    if (now >= this.expiry) return this.end('expired', { type: 'expired', error: err });
    this.refreshFailures++;
    const backoff = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** Math.min(this.refreshFailures - 1, 16)) * (0.5 + 0.5 * this.random());
    // Never later than halfway to the expiry, so that the last tries still land before it.
    let retryInMs = Math.max(MIN_RETRY_MS, Math.min(backoff, (this.expiry - now) / 2));
    if (err instanceof MatrixApiError && err.retryAfterMs !== undefined) retryInMs = Math.max(retryInMs, err.retryAfterMs);
    retryInMs = Math.round(retryInMs);
    this.emit({ type: 'refresh_failed', error: err, retryInMs });
    this.scheduleRefresh(retryInMs);
  }

  private end(mode: 'finalised' | 'expired' | 'failed', event: KeepAliveEvent): void {
    this.clearRefresh();
    this.clearDelegation();
    this.state = mode;
    this.emit(event);
  }

  private scheduleRefresh(inMs: number): void {
    this.clearRefresh();
    this.refreshTimer = this.timers.setTimeout(() => {
      this.refreshTimer = null;
      void this.refreshNow();
    }, Math.max(0, inMs));
  }

  private scheduleDelegation(inMs: number): void {
    this.clearDelegation();
    this.delegateTimer = this.timers.setTimeout(() => {
      this.delegateTimer = null;
      void this.tryDelegate();
    }, Math.max(0, inMs));
  }

  private redelegateDelay(): number {
    return Math.round(this.redelegateEveryMs * (0.75 + 0.5 * this.random()));
  }

  private clearRefresh(): void {
    if (this.refreshTimer !== null) this.timers.clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  private clearDelegation(): void {
    if (this.delegateTimer !== null) this.timers.clearTimeout(this.delegateTimer);
    this.delegateTimer = null;
  }

  private emit(e: KeepAliveEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // A listener's bug must not stop the refreshes.
      }
    }
  }
}
