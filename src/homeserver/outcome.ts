/** A homeserver answer, as the homeserver client classifies it and the state machine consumes it. */
export type HomeserverOutcome =
  | { kind: 'ok'; sentAt: number }
  | { kind: 'finalised'; detail: string }
  | { kind: 'retry'; detail: string; retryAfterMs?: number }
  | { kind: 'permanent'; detail: string };

/** For a delegation's history: the outcome in words, never a token. */
export function describeOutcome(o: HomeserverOutcome): string {
  if (o.kind === 'ok') return 'ok';
  return `${o.kind} ${o.detail}${o.kind === 'retry' && o.retryAfterMs !== undefined ? ` (retry after ${o.retryAfterMs} ms)` : ''}`;
}
