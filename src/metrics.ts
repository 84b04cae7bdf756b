import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { SHARD_LOSS_REASONS } from './store/shard-leases.js';
import { ACTION_KINDS, DELEGATION_STATES, DIALECTS, type DelegationState, type Dialect } from './delegations/model.js';

const PREFIX = 'futures_sidecar_';
/** 1 ms to 60 s, roughly x2.5 per step. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const VERSION = '0.1.0';

export interface MetricsSources {
  /** Open delegations by state and dialect, computed when scraped. */
  countByStateAndDialect(): Iterable<{ state: DelegationState; dialect: Dialect; count: number }>;
  /** Smallest time left (s) before any open delegation's future would expire; +Inf when none. */
  smallestExpiryMarginSeconds(): number;
  limiterBacklog(): number;
}

/** Every metric of the daemon, in one registry per app instance (tests build several apps in one process). */
export class Metrics {
  readonly registry = new Registry();
  readonly registered: Counter<'dialect' | 'outcome'>;
  readonly tokensIssued: Counter<'route' | 'outcome'>;
  readonly refreshes: Counter<'outcome'>;
  readonly actions: Counter<'action' | 'outcome'>;
  readonly webhooks: Counter<'event' | 'outcome'>;
  readonly homeserverDuration: Histogram<'op' | 'outcome'>;
  readonly disconnectToAction: Histogram<'action'>;
  readonly reconcileCorrections: Counter<'kind'>;
  readonly lifecycle: Counter<'change'>;
  /** Standalone calls a homeserver refused 401: it requires authentication for management (MSC4140 as merged). */
  readonly homeserverAuthRequired: Counter<'op'>;
  /** Homeserver calls by the limit they are under: the per-origin bucket, or none (as a user, `rate_limited: false`). */
  readonly homeserverCallsByLimit: Counter<'limit'>;
  /** MSC4502 membership checks of participants (application-service mode) by answer. */
  readonly membershipChecks: Counter<'outcome'>;
  readonly refreshMargin: Gauge;
  /** Shard leases this replica stopped holding while running (Redis replicas), by why; shutdown is not counted. */
  readonly shardLeasesLost: Counter<'reason'>;
  private sources: MetricsSources | null = null;

  constructor() {
    const register = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
    new Gauge({ name: `${PREFIX}info`, help: 'Build information', labelNames: ['version'], registers: register }).set({ version: VERSION }, 1);
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    new Gauge({
      name: `${PREFIX}delegations`,
      help: 'Delegations held open by this process, by state and dialect',
      labelNames: ['state', 'dialect'],
      registers: register,
      collect() {
        this.reset();
        for (const state of DELEGATION_STATES) for (const dialect of DIALECTS) this.set({ state, dialect }, 0);
        for (const row of self.sources?.countByStateAndDialect() ?? []) this.set({ state: row.state, dialect: row.dialect }, row.count);
      },
    });
    new Gauge({
      name: `${PREFIX}expiry_margin_seconds`,
      help: 'Smallest time left before any open delegation\'s future would expire on its homeserver (+Inf when none)',
      registers: register,
      collect() {
        this.set(self.sources?.smallestExpiryMarginSeconds() ?? Infinity);
      },
    });
    this.refreshMargin = new Gauge({
      name: `${PREFIX}refresh_margin_seconds`,
      help: 'SIDECAR_REFRESH_MARGIN_MS: time left before the expiry when a delegation is refreshed (time_left policy), the homeserver outage it survives; timeouts too short for it keep SIDECAR_REFRESH_AT. Absent under the fraction policy',
      registers: register,
    });
    new Gauge({
      name: `${PREFIX}homeserver_limiter_backlog`,
      help: 'Homeserver calls waiting for their origin\'s rate limiter',
      registers: register,
      collect() {
        this.set(self.sources?.limiterBacklog() ?? 0);
      },
    });
    this.registered = new Counter({
      name: `${PREFIX}delegations_registered_total`,
      help: 'Delegation requests by dialect and outcome (created, existing, rejected)',
      labelNames: ['dialect', 'outcome'],
      registers: register,
    });
    this.tokensIssued = new Counter({
      name: `${PREFIX}tokens_issued_total`,
      help: 'Answers of /get_token and /sfu/get: tokens issued to full_access or restricted users, delegations carried by a request refused (delegation_refused), requests refused (4xx) or failed (5xx)',
      labelNames: ['route', 'outcome'],
      registers: register,
    });
    this.refreshes = new Counter({ name: `${PREFIX}refreshes_total`, help: 'Refresh calls by outcome', labelNames: ['outcome'], registers: register });
    this.actions = new Counter({ name: `${PREFIX}actions_total`, help: 'Action calls by action and outcome', labelNames: ['action', 'outcome'], registers: register });
    this.webhooks = new Counter({ name: `${PREFIX}webhooks_total`, help: 'LiveKit webhooks by event and outcome', labelNames: ['event', 'outcome'], registers: register });
    this.homeserverDuration = new Histogram({
      name: `${PREFIX}homeserver_request_duration_seconds`,
      help: 'Homeserver call latency by operation and outcome',
      labelNames: ['op', 'outcome'],
      buckets: LATENCY_BUCKETS,
      registers: register,
    });
    this.disconnectToAction = new Histogram({
      name: `${PREFIX}disconnect_to_action_seconds`,
      help: 'From noticing a departure (webhook receipt or reconcile) to the homeserver\'s 2xx for the action, grace included',
      labelNames: ['action'],
      buckets: LATENCY_BUCKETS,
      registers: register,
    });
    this.reconcileCorrections = new Counter({
      name: `${PREFIX}reconcile_corrections_total`,
      help: 'Changes made because LiveKit\'s RoomService disagreed with what the webhooks said',
      labelNames: ['kind'],
      registers: register,
    });
    this.lifecycle = new Counter({
      name: `${PREFIX}lifecycle_changes_total`,
      help: 'Delegation lifecycle changes by kind',
      labelNames: ['change'],
      registers: register,
    });
    for (const action of ACTION_KINDS) this.disconnectToAction.zero({ action });
    this.homeserverAuthRequired = new Counter({
      name: `${PREFIX}homeserver_auth_required_total`,
      help: 'Unauthenticated refresh or action calls a homeserver refused 401 (management requires authentication; use application-service mode)',
      labelNames: ['op'],
      registers: register,
    });
    for (const op of ['refresh', 'action']) this.homeserverAuthRequired.inc({ op }, 0);
    this.homeserverCallsByLimit = new Counter({
      name: `${PREFIX}homeserver_calls_total`,
      help: 'Refresh and action calls by the limit that applies: per_origin (one token bucket per homeserver address) or as_user (application-service mode, not limited by us)',
      labelNames: ['limit'],
      registers: register,
    });
    for (const limit of ['per_origin', 'as_user']) this.homeserverCallsByLimit.inc({ limit }, 0);
    this.membershipChecks = new Counter({
      name: `${PREFIX}membership_checks_total`,
      help: 'Matrix membership checks of call participants (application-service mode): joined, not_joined (removed from LiveKit, leave fired) or error (left alone)',
      labelNames: ['outcome'],
      registers: register,
    });
    for (const outcome of ['joined', 'not_joined', 'error']) this.membershipChecks.inc({ outcome }, 0);
    this.shardLeasesLost = new Counter({
      name: `${PREFIX}shard_leases_lost_total`,
      help: 'Shard leases this replica stopped holding while running: not_renewed (renewals lapsed, e.g. Redis unreachable), taken_over (another replica holds it), rebalanced (handed to a replica short of its share), load_failed',
      labelNames: ['reason'],
      registers: register,
    });
    for (const reason of SHARD_LOSS_REASONS) if (reason !== 'stopped') this.shardLeasesLost.inc({ reason }, 0);
  }

  attach(sources: MetricsSources): void {
    this.sources = sources;
  }
}
