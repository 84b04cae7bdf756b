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

export class MatrixError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: Errcode,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'MatrixError';
  }

  toJSON(): Record<string, unknown> {
    return { errcode: this.errcode, error: this.message, ...this.extra };
  }
}

export const badJson = (message: string) => new MatrixError(400, 'M_BAD_JSON', message);
export const invalidParam = (message: string) => new MatrixError(400, 'M_INVALID_PARAM', message);
export const notFound = (message = 'No such delegation') => new MatrixError(404, 'M_NOT_FOUND', message);
export const forbidden = (message: string) => new MatrixError(403, 'M_FORBIDDEN', message);
export const missingToken = (message = 'Missing access token') => new MatrixError(401, 'M_MISSING_TOKEN', message);
export const unknownToken = (message = 'Invalid access token') => new MatrixError(401, 'M_UNKNOWN_TOKEN', message);
export const limitExceeded = (message: string, retryAfterMs: number) =>
  new MatrixError(429, 'M_LIMIT_EXCEEDED', message, { retry_after_ms: Math.max(0, Math.ceil(retryAfterMs)) });
export const shuttingDown = () => new MatrixError(503, 'M_UNKNOWN', 'The service is shutting down');
