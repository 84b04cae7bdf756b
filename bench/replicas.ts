/**
 * Benchmark 6, replicas: how many delegations one and three replicas on one Redis keep alive, and the refreshes per
 * second that takes. SIDECAR_HOMESERVER_RATE is the cluster's budget per homeserver origin (admission weighs the load
 * of every replica, kept in Redis), so three replicas at the same rate admit what one does, and three at three times
 * the rate three times as much; admission refuses what would make refreshes late, so the refresh capacity of a layout
 * is what it admits and then sustains without a future expiring.
 */
import { startFakeHomeserver, type FakeHomeserver } from '../test/fakes/homeserver.js';
import { mintParticipantToken } from '../test/fakes/livekit.js';
import { startRedis } from '../test/helpers/redis.js';
import { isMain, runAlone } from './lib/cli.js';
import { startBuiltDaemon, type BuiltDaemon } from './lib/daemon.js';
import type { BenchOptions, Section } from './lib/report.js';
import { fmt, sleep } from './lib/stats.js';
import { API_KEY, API_SECRET } from './lib/webhooks.js';

const RATE = 20;
const TIMEOUT_MS = 20_000;

interface LayoutResult {
  replicas: number;
  rate: number;
  admitted: number;
  refused: number;
  refreshesPerSecond: number;
  expired: number;
  windowSeconds: number;
}

async function layout(replicas: number, rate: number, hs: FakeHomeserver, redisUrl: string, windowMs: number, log: (s: string) => void): Promise<LayoutResult> {
  const daemons: BuiltDaemon[] = [];
  const prefix = `bench-${replicas}-${rate}-${Date.now()}:`;
  try {
    for (let i = 0; i < replicas; i++) {
      daemons.push(
        await startBuiltDaemon({
          SIDECAR_STORE: redisUrl,
          SIDECAR_REDIS_PREFIX: prefix,
          SIDECAR_REDIS_LEASE_MS: '3000',
          LIVEKIT_KEYS: `${API_KEY}: ${API_SECRET}`,
          SIDECAR_HOMESERVERS: hs.url,
          SIDECAR_HOMESERVER_RATE: String(rate),
          // Each participant from its own address (as through an ingress that says so): only the budget binds.
          SIDECAR_TRUST_PROXY: 'true',
          SIDECAR_MIN_TIMEOUT_MS: '1000',
          SIDECAR_RATE_LIMIT_PER_MINUTE: '100000',
          SIDECAR_MAX_DELEGATIONS_PER_ROOM: '100000',
          LOG_LEVEL: 'warn',
        }),
      );
    }
    // Let the shards spread before registering (each replica waits for its fair share).
    await sleep(replicas > 1 ? 4000 : 500);
    const tokens: string[] = [];
    let refusedInARow = 0;
    let refused = 0;
    for (let i = 0; refusedInARow < 20 && i < 2000; i++) {
      const room = `bench-room-${i % 50}`;
      const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: `user-${replicas}-${i}`, room });
      const { future_token } = await hs.createFuture({
        roomId: `!${room}:bench`,
        timeoutSeconds: TIMEOUT_MS / 1000,
        onTimeout: { type: 'org.matrix.msc3401.call.member', content: {}, state_key: `_user-${i}` },
      });
      const res = await fetch(`${daemons[i % replicas]!.url}/v1/delegations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json', 'x-forwarded-for': `198.18.${i >> 8}.${i & 255}` },
        body: JSON.stringify({ homeserver: hs.url, dialect: 'futures', token: future_token, timeout_ms: TIMEOUT_MS }),
      });
      if (res.status === 201) {
        tokens.push(future_token);
        refusedInARow = 0;
      } else if (res.status === 429) {
        refused++;
        refusedInARow++;
      } else throw new Error(`registration answered ${res.status}: ${await res.text()}`);
    }
    log(`${replicas} replica(s) at ${rate}/s: ${tokens.length} delegations admitted, ${refused} refused; measuring ${windowMs / 1000} s`);
    // Skip the first refreshes (a burst at registration), then count the steady state.
    await sleep(TIMEOUT_MS * 0.5);
    const owned = new Set(tokens);
    const from = Date.now();
    const before = hs.calls.filter((c) => c.op === 'refresh' && c.status === 200 && owned.has(c.handle ?? '')).length;
    await sleep(windowMs);
    const after = hs.calls.filter((c) => c.op === 'refresh' && c.status === 200 && owned.has(c.handle ?? '')).length;
    const seconds = (Date.now() - from) / 1000;
    const expired = tokens.filter((t) => hs.status(t) !== 'pending').length;
    return { replicas, rate, admitted: tokens.length, refused, refreshesPerSecond: (after - before) / seconds, expired, windowSeconds: seconds };
  } finally {
    for (const d of daemons) await d.stop();
  }
}

export async function run(o: BenchOptions): Promise<Section> {
  const started = new Date();
  const redis = await startRedis();
  const hs = await startFakeHomeserver();
  // At least one whole refresh period (half a timeout): refreshes come in waves that a shorter window can miss.
  const windowMs = o.quick ? 12_000 : 40_000;
  try {
    const one = await layout(1, RATE, hs, redis.url, windowMs, o.log);
    const three = await layout(3, RATE, hs, redis.url, windowMs, o.log);
    const threeRaised = await layout(3, 3 * RATE, hs, redis.url, windowMs, o.log);
    const same = three.admitted / Math.max(1, one.admitted);
    const raised = threeRaised.admitted / Math.max(1, one.admitted);
    const expired = one.expired + three.expired + threeRaised.expired;
    const table = [
      '| replicas | `SIDECAR_HOMESERVER_RATE` (the cluster\'s) | delegations admitted (20 s futures) | refused (429) | refreshes/s sustained | futures expired |',
      '|---|---|---|---|---|---|',
      ...[one, three, threeRaised].map((r) => `| ${r.replicas} | ${r.rate} | ${r.admitted} | ${r.refused} | ${fmt(r.refreshesPerSecond, 1)} | ${r.expired} |`),
    ].join('\n');
    return {
      name: 'replicas',
      title: '6. Replicas (Redis)',
      ranAt: started.toISOString(),
      seconds: 0,
      rows: [
        {
          measure: 'delegations kept alive per homeserver (refresh capacity): 1 replica, 3 at the same rate, 3 at 3x the rate',
          result: `${one.admitted} / ${three.admitted} (${fmt(same, 2)}x) / ${threeRaised.admitted} (${fmt(raised, 2)}x); ${fmt(one.refreshesPerSecond, 1)} / ${fmt(three.refreshesPerSecond, 1)} / ${fmt(threeRaised.refreshesPerSecond, 1)} refreshes/s; ${expired} expired`,
          target: 'same rate: same count (cluster budget); 3x rate: about 3x; none expired',
          verdict: Math.abs(same - 1) <= 0.05 && raised >= 2.5 && expired === 0 ? 'met' : 'missed',
        },
      ],
      body: [
        `Method: one real \`redis-server\` (AOF everysec), the built daemon (\`node dist/src/main.js\`) as 1 and then 3`,
        'processes on it, the fake homeserver in the benchmark\'s process. `SIDECAR_HOMESERVER_RATE` is the budget of the whole',
        `cluster for one homeserver origin (issue 18: every replica's load is kept in Redis and admission weighs it all): first`,
        `${RATE}/s for one replica and for three, then ${3 * RATE}/s for three. Futures of ${TIMEOUT_MS / 1000} s are delegated round-robin through`,
        'the replicas, each from its own address (`SIDECAR_TRUST_PROXY`), until admission control refuses 20 in a row (its',
        `limit: steady refreshes within 80 % of the rate); then, after half a timeout, refreshes are counted for ${Math.round(windowMs / 1000)} s and`,
        'every future is checked.',
        '',
        table,
        '',
        `At the same rate three replicas admit ${fmt(same, 2)}x what one does: the rate is the homeserver's budget, whichever replica`,
        `is asked (before issue 18 each replica spent its own, and three admitted 3.79x). Raised to the cluster's total they admit`,
        `${fmt(raised, 2)}x, spread over the replicas by shard. On one machine the replicas share two cores; the homeserver rate, not`,
        'CPU, is the limit at these sizes (see benchmark 2 for the CPU cost of a refresh).',
      ].join('\n'),
    };
  } finally {
    await hs.close();
    await redis.stop();
  }
}

if (isMain(import.meta.url)) await runAlone('replicas', import.meta.url, run);
