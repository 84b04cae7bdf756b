/**
 * After a restart the membership monitor knows nobody until a token is issued again, yet the open delegations made
 * through the homeserver are still in the call. Their Matrix room is not stored with them (only LiveKit's hashed
 * names are), but their delayed event knows it: it is looked up once, as its owner, and the participant tracked again.
 */
import type { Delegation } from '../delegations/model.js';
import type { DelayLookup } from './homeserver-api.js';

/** At most this many lookups at once: they are made as the users, so no bucket paces them. */
const CONCURRENCY = 8;

export interface RecoveredMember {
  room: string;
  identity: string;
  matrixRoom: string;
  user: string;
}

export async function recoverMemberships(deps: {
  /** The open delegations of this process. */
  open: () => Iterable<Delegation>;
  /** The delay id of a delegation (read from the store only now). */
  delayIdOf: (id: string) => Promise<string | undefined>;
  lookup: (user: string, delayId: string) => Promise<DelayLookup>;
}): Promise<RecoveredMember[]> {
  const owned = [...deps.open()].filter((d): d is Delegation & { owner: string } => typeof d.owner === 'string');
  const found: RecoveredMember[] = [];
  for (let i = 0; i < owned.length; i += CONCURRENCY) {
    await Promise.all(
      owned.slice(i, i + CONCURRENCY).map(async (d) => {
        const delayId = await deps.delayIdOf(d.id);
        if (!delayId) return;
        const answer = await deps.lookup(d.owner, delayId);
        // Unknown: already sent or cancelled, the delegation finds out itself. An error fails open: untracked.
        if (answer.kind === 'found') found.push({ room: d.room, identity: d.identity, matrixRoom: answer.event.roomId, user: d.owner });
      }),
    );
  }
  return found;
}
