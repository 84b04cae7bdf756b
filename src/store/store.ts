import type { HistoryEntry } from '../delegations/history.js';
import type { Delegation, DelegationSecrets, DelegationState } from '../delegations/model.js';

/** A verified LiveKit webhook reduced to what we act on, recorded before it is acknowledged. */
export interface WebhookRecord {
  id: string;
  event: string;
  room: string | null;
  identity: string | null;
  sid: string | null;
  /** DisconnectReason name, when the event carries one. */
  reason: string | null;
  /** When the participant's session joined (ms, LiveKit's `joinedAtMs`), when the event carries it. */
  joinedAt?: number | null;
  /** LiveKit's createdAt, ms. */
  createdAt: number;
  receivedAt: number;
}

/** What the replicated store's stream carries: webhooks, and what one replica tells a delegation's owner. */
export type FeedMessage =
  | { kind: 'webhook'; record: WebhookRecord }
  | { kind: 'registered'; id: string }
  | { kind: 'revoke'; id: string };

export interface DelegationFilter {
  room?: string;
  identity?: string;
  state?: DelegationState;
  limit: number;
  /** Opaque: the id after which to continue. */
  cursor?: string;
}

/** One line of one delegation's history, as the store keeps it. */
export interface HistoryLine {
  id: string;
  entry: HistoryEntry;
}

/** How long a delegation's history is kept after its last line (the console shows recent delegations). */
export const HISTORY_RETENTION_MS = 7 * 24 * 3600_000;

/** Where a reload read the open delegations from: the snapshot of the last graceful shutdown, or the rows (and why not the snapshot, when there was one). */
export interface ReloadSource {
  from: 'snapshot' | 'rows';
  snapshotRefused?: string;
}

export class DuplicateTokenError extends Error {
  constructor() {
    super('a delegation for this token already exists');
    this.name = 'DuplicateTokenError';
  }
}

/**
 * Durable state every backend keeps: the delegations, their secrets, and the webhook journal (each event recorded
 * once). Every method resolves only once what it wrote is durable (for SQLite: committed in WAL). Implementations:
 * `SqliteStore` (embedded default), `RedisStore` (replicas). Who acts on which delegation, and how recorded events
 * reach it, is the `Topology`'s.
 */
export interface Store {
  readonly kind: 'sqlite' | 'redis';
  /**
   * Creates a delegation; throws DuplicateTokenError when `tokenKey` (the idempotency key of its token, see
   * `tokenKeyOf`) exists. Only the store's index keeps the key: nothing in memory needs it.
   */
  insertDelegation(d: Delegation, secrets: DelegationSecrets, tokenKey: string): Promise<void>;
  /** Writes a delegation's mutable fields. */
  saveDelegation(d: Delegation): Promise<void>;
  getDelegation(id: string): Promise<Delegation | undefined>;
  findByTokenKey(tokenKey: string): Promise<Delegation | undefined>;
  getSecrets(id: string): Promise<DelegationSecrets | undefined>;
  /** Replace the secrets (e.g. drop an access token the homeserver refused). */
  saveSecrets(id: string, secrets: DelegationSecrets): Promise<void>;
  /** The open delegations of exactly this (room, identity), whoever owns them. */
  openOfParticipant(room: string, identity: string): Promise<Delegation[]>;
  /** Every delegation that is not terminal (in one shard, for the replicated store). */
  loadOpen(shard?: number): Promise<Delegation[]>;
  /**
   * Every delegation that is not terminal, handed to `visit` one at a time as it is read (a store that can stream:
   * a reload then holds no array of them all). Each object is the visitor's.
   */
  eachOpen?(visit: (d: Delegation) => void): Promise<ReloadSource | void>;
  /**
   * Keeps the open delegations `open` (what this process holds, which equals what the store has once its writes
   * are committed) where the next `eachOpen` reads them faster than the rows, valid only until the next write.
   * Called at a graceful shutdown, after the last write. Resolves with how many it kept, or null when it kept none.
   */
  saveOpenSnapshot?(open: Iterable<Delegation>): Promise<number | null>;
  listDelegations(filter: DelegationFilter): Promise<{ items: Delegation[]; nextCursor: string | null }>;
  /**
   * Records webhooks (dedupe mark + pending work) in one commit. Returns, per record, true when it is new and
   * false when its id was already recorded.
   */
  recordWebhooks(records: WebhookRecord[]): Promise<boolean[]>;
  /**
   * Appends lines to delegations' histories; each keeps only its last `perDelegation` lines, and lines older than
   * `HISTORY_RETENTION_MS` go (so what the store keeps for histories stays bounded).
   */
  appendHistory(lines: HistoryLine[], perDelegation: number): Promise<void>;
  /** A delegation's stored history, oldest first. */
  historyOf(id: string): Promise<HistoryEntry[]>;
  /** Throws when the store cannot be reached. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Which recorded webhooks this process has applied, kept by a store whose process applies every webhook it records
 * (a single node): what a crash left unapplied is applied again at the next start.
 */
export interface AppliedWebhooks {
  /**
   * Records webhooks like `Store.recordWebhooks`, and calls `apply` for each new one, in order, inside the same
   * commit: every store write `apply` starts before its first await joins that commit, which also marks the record
   * processed. So a record and the state change it causes are durable together (one commit per batch, not three),
   * and nothing is left to replay for it. The writes' promises settle once the commit is done; if it fails they
   * reject with it and nothing of the batch is stored.
   */
  recordApplying(records: WebhookRecord[], apply: (rec: WebhookRecord) => void): Promise<boolean[]>;
  markWebhooksProcessed(ids: string[]): Promise<void>;
  pendingWebhooks(): Promise<WebhookRecord[]>;
  /** Forget processed webhook ids received before `before` (they are kept at least the dedupe window). */
  pruneWebhooks(before: number): Promise<void>;
}
