/**
 * Typed errors of the client kit. Every error the kit throws on purpose is a {@link FuturesKitError}; callers can
 * branch on the subclass (answered with an error, could not be reached, answered nonsense) without parsing messages.
 */

/** Base class of every error the client kit throws on purpose. */
export class FuturesKitError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An HTTP answer with a Matrix-style error body: what the homeserver and the sidecar errors have in common. */
export abstract class HttpAnswerError extends FuturesKitError {
  /** HTTP status of the answer. */
  readonly status: number;
  /** Matrix-style `errcode` (e.g. `M_NOT_FOUND`), or null when the body was not a Matrix error. */
  readonly errcode: string | null;
  /** How long the server asked us to wait (429), from `retry_after_ms` or `Retry-After`. */
  readonly retryAfterMs: number | undefined;
  /** The parsed body (or the raw text when it was not JSON), for diagnostics. */
  readonly body: unknown;

  constructor(what: string, status: number, errcode: string | null, error: string | null, body: unknown, retryAfterMs?: number) {
    super(`${what}: ${status}${errcode ? ` ${errcode}` : ''}${error ? ` (${error})` : ''}`);
    this.status = status;
    this.errcode = errcode;
    this.retryAfterMs = retryAfterMs;
    this.body = body;
  }
}

/** The homeserver answered with a non-2xx status. */
export class MatrixApiError extends HttpAnswerError {
  /** The homeserver no longer knows the future / delayed event: it fired, was sent, cancelled or replaced. */
  get isFinalised(): boolean {
    return (this.status === 404 && this.errcode === 'M_NOT_FOUND') || this.status === 409;
  }
}

/** The homeserver could not be reached (connection refused, DNS, timeout, reset), after the retries. */
export class HomeserverUnreachableError extends FuturesKitError {
  constructor(what: string, cause: unknown) {
    super(`${what}: homeserver unreachable (${describeCause(cause)})`, { cause });
  }
}

/** The sidecar answered with an error the caller has to act on (a refusal, not an outage). */
export class SidecarApiError extends HttpAnswerError {
  /** Worth trying again later (rate limited); anything else is a refusal that a retry will not change. */
  get isTransient(): boolean {
    return this.status === 429;
  }
}

/**
 * The sidecar could not be reached, or said it is unavailable (502/503/504, e.g. while it shuts down), after the
 * retries. A {@link KeepAlive} falls back to refreshing the future itself on this error.
 */
export class SidecarUnreachableError extends FuturesKitError {
  /** The last HTTP status when the sidecar answered 502/503/504; undefined for a network failure. */
  readonly status: number | undefined;

  constructor(what: string, cause: unknown, status?: number) {
    super(`${what}: sidecar unreachable (${status !== undefined ? `status ${status}` : describeCause(cause)})`, { cause });
    this.status = status;
  }
}

/** A 2xx answer whose body is not what the API promises. */
export class UnexpectedResponseError extends FuturesKitError {
  readonly body: unknown;

  constructor(what: string, problem: string, body: unknown) {
    super(`${what}: unexpected response (${problem})`);
    this.body = body;
  }
}

function describeCause(cause: unknown): string {
  if (cause instanceof Error) {
    const code = (cause.cause as { code?: unknown } | undefined)?.code ?? (cause as { code?: unknown }).code;
    if (cause.name === 'TimeoutError') return 'timed out';
    return typeof code === 'string' ? code : cause.message;
  }
  return String(cause);
}
