import type { DelegationEngine } from '../delegations/engine.js';
import type { ClusterLoad } from '../delegations/homeserver-load.js';
import type { WebhookIntake } from '../livekit/webhook-intake.js';
import type { AppliedWebhooks, FeedMessage } from '../store/store.js';

/** What one process tells the owner of a delegation that it does not own itself. */
export type ControlMessage = Exclude<FeedMessage, { kind: 'webhook' }>;

/** Which delegations this process acts on, and how it reaches the owner of the others. */
export interface Ownership {
  /** Whether other processes own delegations too (so one this process does not hold may be held elsewhere). */
  readonly shared: boolean;
  owns(delegationId: string): boolean;
  /** Hands a message to the owner of its delegation (never needed when this process owns everything). */
  announce(message: ControlMessage): Promise<void>;
}

/**
 * How the work is split between processes and how recorded webhooks reach the process that acts on them. A single
 * node is a cluster of one that owns every shard; replicas on Redis split the shards by leases and read one stream.
 */
export interface Topology extends Ownership {
  /**
   * The bookkeeping of applied webhooks when each process applies what it records itself; null when every
   * process reads the recorded webhooks from a shared stream instead.
   */
  readonly applied: AppliedWebhooks | null;
  /** The load of every homeserver origin across the processes, when there are several; null for a single node. */
  readonly clusterLoad: ClusterLoad | null;
  /** Takes up the work (load what this process owns, replay or read what it missed); call before listening. */
  start(parts: { engine: DelegationEngine; intake: WebhookIntake }): Promise<void>;
  /** Hands the work over (at once, not when leases run out). */
  stop(): Promise<void>;
}

/** A process that owns every delegation: the single node, and engines built without a topology (tests, benches). */
export const OWNS_EVERYTHING: Ownership = {
  shared: false,
  owns: () => true,
  announce: () => Promise.reject(new Error('this process owns every delegation: there is no other owner to tell')),
};
