import { pino, type Logger } from 'pino';
import type { LogLevel } from './config.js';

/**
 * Every field that could carry a secret, wherever it appears in a log object. Tokens are also kept out of the
 * objects we log in the first place; this is the second line.
 */
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  'token',
  'future_token',
  'delay_id',
  'access_token',
  'accessToken',
  'openid_token',
  '*.token',
  '*.future_token',
  '*.delay_id',
  '*.access_token',
  '*.accessToken',
  '*.authorization',
  '*.openid_token',
  'secret',
  '*.secret',
];

export function createLogger(opts: { level: LogLevel; pretty: boolean; destination?: NodeJS.WritableStream }): Logger {
  const base = {
    level: opts.level,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    base: { service: 'futures-sidecar' },
  };
  if (opts.destination) return pino(base, opts.destination as unknown as pino.DestinationStream);
  if (opts.pretty) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname,service' } } });
  }
  // Asynchronous writes: lines that arrive while one write is in flight go out together in the next, instead of a
  // blocking write per line (a tenth of the webhook intake's CPU with one line per webhook). pino flushes what is
  // buffered when the process exits; a SIGKILL loses at most the lines of the write in flight.
  return pino(base, pino.destination({ dest: 1, sync: false }));
}
