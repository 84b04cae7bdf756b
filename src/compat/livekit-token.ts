/**
 * The LiveKit access token lk-jwt-service hands out (facts section 2, contract section 7): HS256 with our key,
 * one hour, `nbf` now (the SDK sets it), a join-only grant for one room. Never `roomCreate`: rooms are created by us
 * for full-access users, and LiveKit's `auto_create: false` keeps everyone else from creating them.
 */
import { AccessToken } from 'livekit-server-sdk';

const TOKEN_TTL_SECONDS = 3600;

export interface TokenGrant {
  identity: string;
  room: string;
  canPublish: boolean;
  canUpdateOwnMetadata: boolean;
}

export async function mintLiveKitToken(apiKey: string, apiSecret: string, grant: TokenGrant): Promise<string> {
  const token = new AccessToken(apiKey, apiSecret, { identity: grant.identity, ttl: TOKEN_TTL_SECONDS });
  token.addGrant({
    room: grant.room,
    roomJoin: true,
    roomCreate: false,
    canSubscribe: true,
    canPublish: grant.canPublish,
    hidden: false,
    canUpdateOwnMetadata: grant.canUpdateOwnMetadata,
  });
  return token.toJwt();
}

/** The room lk-jwt-service creates for full-access users: gone 5 min after it empties, 20 s after the last leaves. */
export const CREATE_ROOM_OPTIONS = { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 0 } as const;

/** The part of LiveKit's RoomService the token routes use. */
export interface RoomCreator {
  createRoom(options: { name: string; emptyTimeout: number; departureTimeout: number; maxParticipants: number }): Promise<unknown>;
}
