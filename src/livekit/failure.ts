/**
 * What may be logged of a failed call to LiveKit's RoomService: its HTTP status and Twirp code, or the network
 * error's code. Never the message: LiveKit's 401 text quotes the bearer token it refused.
 */
export function liveKitFailure(err: unknown): { status?: number; code?: string } {
  const e = err as { status?: unknown; code?: unknown; cause?: { code?: unknown } } | null;
  const status = typeof e?.status === 'number' ? e.status : undefined;
  const code = typeof e?.code === 'string' ? e.code : typeof e?.cause?.code === 'string' ? e.cause.code : undefined;
  return { ...(status !== undefined ? { status } : {}), ...(code !== undefined ? { code } : {}) };
}
