/** Matrix-style errors: a stable errcode, its HTTP status, and a message safe to show (never a secret). */
export type Errcode =
  | 'M_NOT_JSON'
  | 'M_BAD_JSON'
  | 'M_INVALID_PARAM'
  | 'M_MISSING_TOKEN'
  | 'M_UNKNOWN_TOKEN'
  | 'M_UNAUTHORIZED'
  | 'M_FORBIDDEN'
  | 'M_NOT_FOUND'
  | 'M_UNRECOGNIZED'
  | 'M_TOO_LARGE'
  | 'M_LIMIT_EXCEEDED'
  | 'M_UNKNOWN';

/**
 * The HTTP status each errcode is answered with. The few exceptions are spelled where they arise: M_NOT_JSON for a
 * Content-Type we do not read (415), M_UNRECOGNIZED for a method a path does not serve (405), M_UNKNOWN while the
 * service cannot take work (503, `unavailable`).
 */
const ERRCODE_STATUS: Readonly<Record<Errcode, number>> = {
  /** The body is not JSON at all. */
  M_NOT_JSON: 400,
  /** JSON, but not the shape the route takes. */
  M_BAD_JSON: 400,
  /** A field of the right type with a value out of range. */
  M_INVALID_PARAM: 400,
  /** No Bearer token where one is required. */
  M_MISSING_TOKEN: 401,
  /** A token that does not verify. */
  M_UNKNOWN_TOKEN: 401,
  /** An OpenID token its homeserver did not vouch for (Element Call's route). */
  M_UNAUTHORIZED: 401,
  /** Verified, but not allowed to do this. */
  M_FORBIDDEN: 403,
  /** No such delegation, or not the caller's to see. */
  M_NOT_FOUND: 404,
  /** No such route. */
  M_UNRECOGNIZED: 404,
  /** The body is larger than the route takes. */
  M_TOO_LARGE: 413,
  /** Too many requests or delegations; `retry_after_ms` says when to try again. */
  M_LIMIT_EXCEEDED: 429,
  /** Our fault; the details stay in our log. */
  M_UNKNOWN: 500,
};

export class MatrixError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: Errcode,
    message: string,
    readonly extra: Record<string, unknown> = {},
    /** Response headers that go with the error (e.g. `retry-after`). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'MatrixError';
  }

  toJSON(): Record<string, unknown> {
    return { errcode: this.errcode, error: this.message, ...this.extra };
  }
}

/** An error with the status its errcode comes with. */
export const matrixError = (errcode: Errcode, message: string, extra: Record<string, unknown> = {}) => new MatrixError(ERRCODE_STATUS[errcode], errcode, message, extra);

export const badJson = (message: string) => matrixError('M_BAD_JSON', message);
export const invalidParam = (message: string) => matrixError('M_INVALID_PARAM', message);
export const notFound = (message = 'No such delegation') => matrixError('M_NOT_FOUND', message);
export const forbidden = (message: string) => matrixError('M_FORBIDDEN', message);
export const missingToken = (message = 'Missing access token') => matrixError('M_MISSING_TOKEN', message);
export const unknownToken = (message = 'Invalid access token') => matrixError('M_UNKNOWN_TOKEN', message);
export const limitExceeded = (message: string, retryAfterMs: number) => matrixError('M_LIMIT_EXCEEDED', message, { retry_after_ms: Math.max(0, Math.ceil(retryAfterMs)) });
/** The service cannot take this now; the client should try again after `retry-after` seconds. */
export const unavailable = (message: string) => new MatrixError(503, 'M_UNKNOWN', message, {}, { 'retry-after': '5' });
export const shuttingDown = () => unavailable('The service is shutting down');
