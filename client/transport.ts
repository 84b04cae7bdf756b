/**
 * The one place where the kit talks HTTP: JSON in and out, a timeout per attempt, and bounded retries with
 * exponential backoff and jitter. Everything time-related goes through injectable {@link Timers} so tests need no
 * real waiting.
 */

/** `fetch` as the kit uses it; Node's global `fetch` by default, anything with its signature in tests. */
export type FetchLike = (url: string, init: RequestInit) => Promise<Response>;

/** Clock and timers, injectable for tests. Handles are opaque to the kit. */
export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Node's timers and `Date.now()`. */
export const systemTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, Math.min(Math.max(0, ms), 2 ** 31 - 1)),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** How hard the kit tries before giving up on one request. */
export interface RetryOptions {
  /** Attempts in total, the first included (default 3; 1 turns retries off). */
  attempts?: number;
  /** Delay before the first retry (default 250 ms); doubled for each further retry. */
  baseDelayMs?: number;
  /**
   * Longest single wait (default 5000 ms). A 429 asking for a longer wait is not retried: the error, with its
   * `retryAfterMs`, goes to the caller, who knows whether waiting that long still makes sense.
   */
  maxDelayMs?: number;
}

/** Options shared by every client of the kit. */
export interface TransportOptions {
  /** Defaults to the global `fetch`. */
  fetch?: FetchLike;
  timers?: Timers;
  retry?: RetryOptions;
  /** Per attempt (default 10 000 ms). */
  requestTimeoutMs?: number;
  /** Uniform in [0, 1), for the backoff jitter (default `Math.random`). */
  random?: () => number;
}

export interface HttpRequest {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  url: string;
  headers?: Record<string, string>;
  /** Serialised as JSON. */
  body?: unknown;
  /**
   * Whether sending the request twice is harmless. Requests that are not (a delayed state event has no transaction
   * id) are retried only when the server cannot have acted on the first attempt: a 429, or a connection that was
   * never established.
   */
  idempotent: boolean;
  signal?: AbortSignal;
}

export interface HttpAnswer {
  status: number;
  /** Parsed JSON, or the raw text when the body is not JSON, or undefined when empty. */
  body: unknown;
  /** True when the body parsed as JSON. */
  json: boolean;
  errcode: string | null;
  error: string | null;
  retryAfterMs: number | undefined;
}

/** The request never got an answer, even after the retries. */
export class NetworkFailure extends Error {
  constructor(readonly reason: unknown) {
    super('network failure', { cause: reason });
    this.name = 'NetworkFailure';
  }
}

const DEFAULTS = { attempts: 3, baseDelayMs: 250, maxDelayMs: 5_000, requestTimeoutMs: 10_000 } as const;

/** Error codes meaning the TCP connection was never made, so the server saw nothing. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

export class Transport {
  readonly timers: Timers;
  private readonly fetchImpl: FetchLike;
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly requestTimeoutMs: number;
  private readonly random: () => number;

  constructor(opts: TransportOptions = {}) {
    this.fetchImpl = opts.fetch ?? ((url, init) => fetch(url, init));
    this.timers = opts.timers ?? systemTimers;
    this.attempts = Math.max(1, Math.floor(opts.retry?.attempts ?? DEFAULTS.attempts));
    this.baseDelayMs = Math.max(0, opts.retry?.baseDelayMs ?? DEFAULTS.baseDelayMs);
    this.maxDelayMs = Math.max(0, opts.retry?.maxDelayMs ?? DEFAULTS.maxDelayMs);
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs;
    this.random = opts.random ?? Math.random;
  }

  /**
   * Sends `req`, retrying network failures, 429 and 5xx within the attempt budget. Resolves with the last answer
   * whatever its status; rejects with {@link NetworkFailure} when no attempt got one (or with the abort reason).
   */
  async send(req: HttpRequest): Promise<HttpAnswer> {
    for (let attempt = 1; ; attempt++) {
      req.signal?.throwIfAborted();
      const last = attempt >= this.attempts;
      let answer: HttpAnswer;
      try {
        answer = await this.once(req);
      } catch (err) {
        req.signal?.throwIfAborted();
        if (last || !(req.idempotent || neverConnected(err))) throw new NetworkFailure(err);
        await this.sleep(this.backoff(attempt), req.signal);
        continue;
      }
      const retryable = answer.status === 429 || (req.idempotent && answer.status >= 500);
      if (!retryable || last) return answer;
      const wait = Math.max(this.backoff(attempt), answer.retryAfterMs ?? 0);
      if (wait > this.maxDelayMs && answer.retryAfterMs !== undefined) return answer;
      await this.sleep(Math.min(wait, this.maxDelayMs), req.signal);
    }
  }

  /** Exponential backoff with jitter: drawn from [50 %, 100 %] of base x 2^(attempt-1), capped. */
  backoff(attempt: number): number {
    const exp = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(attempt - 1, 20));
    return Math.round(exp * (0.5 + 0.5 * this.random()));
  }

  /** Resolves after `ms` on the injected timers; rejects at once when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        this.timers.clearTimeout(handle);
        reject(signal!.reason);
      };
      const handle = this.timers.setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private async once(req: HttpRequest): Promise<HttpAnswer> {
    const headers: Record<string, string> = { accept: 'application/json', ...req.headers };
    let body: string | undefined;
    if (req.body !== undefined) {
      body = JSON.stringify(req.body);
      headers['content-type'] = 'application/json';
    }
    const timeout = AbortSignal.timeout(this.requestTimeoutMs);
    const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
    const res = await this.fetchImpl(req.url, { method: req.method, headers, signal, ...(body !== undefined ? { body } : {}) });
    const text = await res.text();
    return parseAnswer(res.status, text, res.headers.get('retry-after'));
  }
}

function parseAnswer(status: number, text: string, retryAfterHeader: string | null): HttpAnswer {
  let body: unknown = text === '' ? undefined : text;
  let json = false;
  if (text !== '') {
    try {
      body = JSON.parse(text) as unknown;
      json = true;
    } catch {
      // Not JSON: a proxy's error page, say. Kept as text for the error's diagnostics.
    }
  }
  const o = json && body !== null && typeof body === 'object' && !Array.isArray(body) ? (body as Record<string, unknown>) : undefined;
  const errcode = typeof o?.['errcode'] === 'string' ? o['errcode'] : null;
  const error = typeof o?.['error'] === 'string' ? o['error'] : null;
  let retryAfterMs = typeof o?.['retry_after_ms'] === 'number' && o['retry_after_ms'] >= 0 ? o['retry_after_ms'] : undefined;
  if (retryAfterMs === undefined && retryAfterHeader !== null && /^\d+$/.test(retryAfterHeader.trim())) retryAfterMs = Number(retryAfterHeader.trim()) * 1000;
  return { status, body, json, errcode, error, retryAfterMs };
}

function neverConnected(err: unknown): boolean {
  const code = (err as { cause?: { code?: unknown } } | undefined)?.cause?.code ?? (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && NOT_CONNECTED.has(code);
}

/** Percent-encodes one path segment (room ids, event types and state keys contain `!`, `:`, `#`, `@`, ...). */
export function segment(value: string): string {
  return encodeURIComponent(value);
}

/** `https://hs.example/` -> `https://hs.example`; keeps a path prefix (homeservers behind a sub-path). */
export function trimBaseUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new TypeError(`not a URL: ${JSON.stringify(url)}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new TypeError(`not an http(s) URL: ${JSON.stringify(url)}`);
  return (parsed.origin + parsed.pathname).replace(/\/+$/, '');
}
