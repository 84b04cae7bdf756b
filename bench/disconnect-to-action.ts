/**
 * Benchmark 3, disconnect to action: from a `participant_left` webhook leaving the load generator to the fake
 * homeserver receiving the `leave` action, at 1,000 webhooks/s; daemon, fake homeserver and load generator each in
 * their own process on loopback.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isMain, runAlone } from './lib/cli.js';
import { ContentionMeter, DISTURBED_CORES, MAX_REPEATS, waitForQuiet } from './lib/contention.js';
import { longestBusyStretches, monotonicUs, profileMarkdown, stretchesMarkdown, summariseCpuProfile, type ProfileSummary, type Stretch } from './lib/cpuprofile.js';
import { metricValue, scrape, startBuiltDaemon } from './lib/daemon.js';
import { RemoteHomeserver } from './lib/hs-remote.js';
import type { BenchOptions, Section } from './lib/report.js';
import { participantAt, seedDelegations } from './lib/seed.js';
import { sendPaced } from './lib/sender.js';
import { fmt, fmtMs, median, percentile, runs, sleep } from './lib/stats.js';
import { API_KEY, API_SECRET, WebhookSigner, participantLeftTemplate, type DisconnectReasonName } from './lib/webhooks.js';

const TARGET_P99_MS = 25;
const PER_ROOM = 10;

export interface DeliveryRun {
  /** Per webhook: ms from its send to the homeserver's receipt of the action; NaN when none arrived. */
  latencies: number[];
  acks: number[];
  delivered: number;
  sent: number;
  non2xx: number;
  /** From the first send to the last action's receipt. */
  lastMs: number;
  /** Receipt times of the actions, for the rate check. */
  receipts: number[];
  sendSpanMs: number;
  foreignCores: number;
  /** The daemon's event-loop delay during the measured phase (prom-client's default metrics), ms. */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  /** Send times of the webhooks (ms epoch), to see whether slow ones come together. */
  sentAt: Float64Array;
  /** Where the daemon wrote a CPU profile, when asked for one. */
  profileWindow?: [number, number];
}

/**
 * One run: `count` connected delegations (plus `warm` more for a warm-up) seeded for futures the fake homeserver
 * really holds, the built daemon on them, then `count` signed webhooks at `perSecond`, the last ones optionally
 * followed by `after` (e.g. room_finished). Waits until every action has arrived or `settleMs` passed.
 */
export async function deliveryRun(
  hs: RemoteHomeserver,
  opts: {
    count: number;
    warm: number;
    perSecond: number;
    perRoom: number;
    reason: DisconnectReasonName;
    rate: number;
    tag: string;
    settleMs: number;
    log: (s: string) => void;
    after?: (i: number) => { body: string; authorization: string } | null;
    nodeArgs?: string[];
  },
): Promise<DeliveryRun> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-d2a-'));
  const total = opts.count + opts.warm;
  const tokens = await hs.createFutures(total);
  const db = join(dir, 'd2a.db');
  await seedDelegations(db, { count: total, perRoom: opts.perRoom, homeserver: hs.url, tokenAt: (i) => tokens[i]!, prefix: opts.tag });
  const daemon = await startBuiltDaemon({
    SIDECAR_STORE: `sqlite:${db}`,
    LIVEKIT_KEYS: `${API_KEY}: ${API_SECRET}`,
    SIDECAR_HOMESERVERS: hs.url,
    SIDECAR_HOMESERVER_RATE: String(opts.rate),
  }, { nodeArgs: opts.nodeArgs ?? [] });
  try {
    const template = participantLeftTemplate(opts.reason);
    const signer = new WebhookSigner(API_KEY, API_SECRET);
    const webhook = (i: number): { body: string; authorization: string } => {
      const p = participantAt(i, opts.perRoom, opts.tag);
      const now = Math.floor(Date.now() / 1000);
      const body = template({ id: `EV_${opts.tag}${i.toString(36).padStart(10, '0')}`, room: p.room, roomSid: `RM_${opts.tag}${Math.floor(i / opts.perRoom)}`, identity: p.identity, sid: p.sid, createdAt: now });
      return { body, authorization: signer.sign(body, now) };
    };
    const url = `${daemon.url}/livekit/webhook`;
    if (opts.warm) {
      await sendPaced(url, Array.from({ length: opts.warm }, (_, k) => webhook(opts.count + k)), opts.perSecond);
      await sleep(1000);
    }
    const requests = Array.from({ length: opts.count }, (_, i) => webhook(i));
    const extra = opts.after?.(opts.count) ?? null;
    await scrape(daemon.url);
    const meter = new ContentionMeter();
    const w0 = monotonicUs();
    const sent = await sendPaced(url, extra ? [...requests, extra] : requests, opts.perSecond);
    const byToken = new Map<string, number>();
    const deadline = Date.now() + opts.settleMs;
    let receipts = await hs.receipts();
    for (;;) {
      byToken.clear();
      for (const r of receipts) if (r.op === 'action' && r.status === 200 && !byToken.has(r.handle)) byToken.set(r.handle, r.at);
      let delivered = 0;
      for (let i = 0; i < opts.count; i++) if (byToken.has(tokens[i]!)) delivered++;
      if (delivered === opts.count || Date.now() > deadline) break;
      await sleep(250);
      receipts = await hs.receipts();
    }
    const { foreignCores } = meter.stop();
    const page = await scrape(daemon.url);
    const profileWindow: [number, number] = [w0, monotonicUs()];
    const latencies: number[] = [];
    const acks: number[] = [];
    const actionTimes: number[] = [];
    let non2xx = 0;
    for (let i = 0; i < opts.count; i++) {
      const at = byToken.get(tokens[i]!);
      latencies.push(at === undefined ? NaN : at - sent.sentAt[i]!);
      if (at !== undefined) actionTimes.push(at);
      acks.push(sent.ackedAt[i]! - sent.sentAt[i]!);
      if (sent.status[i]! < 200 || sent.status[i]! >= 300) non2xx++;
    }
    const delivered = actionTimes.length;
    if (delivered < opts.count) opts.log(`only ${delivered} of ${opts.count} actions arrived`);
    return {
      latencies,
      acks,
      delivered,
      sent: opts.count,
      non2xx,
      lastMs: Math.max(...actionTimes) - sent.sentAt[0]!,
      receipts: actionTimes.sort((a, b) => a - b),
      sendSpanMs: sent.sendSpanMs,
      foreignCores,
      loopDelayP99Ms: metricValue(page, 'futures_sidecar_nodejs_eventloop_lag_p99_seconds') * 1000,
      loopDelayMaxMs: metricValue(page, 'futures_sidecar_nodejs_eventloop_lag_max_seconds') * 1000,
      sentAt: sent.sentAt,
      profileWindow,
    };
  } finally {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function run(opts: BenchOptions): Promise<Section> {
  const reps = opts.quick ? 1 : 3;
  const count = opts.quick ? 2_000 : 10_000;
  const perSecond = 1_000;
  const rate = 2_000;
  const quiet = await waitForQuiet(opts.quick ? 5_000 : 30_000);
  const hs = await RemoteHomeserver.start();
  const results: DeliveryRun[] = [];
  const setAside: DeliveryRun[] = [];
  try {
    for (let r = 0; r < reps; r++) {
      for (let attempt = 0; ; attempt++) {
        if (r > 0 || attempt > 0) await waitForQuiet(opts.quick ? 2_000 : 20_000);
        const res = await deliveryRun(hs, { count, warm: 1_000, perSecond, perRoom: PER_ROOM, reason: 'CLIENT_INITIATED', rate, tag: `l${r}${attempt}`, settleMs: 60_000, log: opts.log });
        const ok = res.latencies.filter((v) => !Number.isNaN(v));
        opts.log(`run ${r + 1}/${reps}: ${res.delivered}/${res.sent} delivered, p50 ${fmtMs(percentile(ok, 50))}, p99 ${fmtMs(percentile(ok, 99))}, other load ${res.foreignCores.toFixed(2)} cores`);
        if (res.foreignCores > DISTURBED_CORES && attempt < MAX_REPEATS) {
          setAside.push(res);
          continue;
        }
        results.push(res);
        break;
      }
    }
  } catch (err) {
    await hs.close();
    throw err;
  }
  const ok = (r: DeliveryRun): number[] => r.latencies.filter((v) => !Number.isNaN(v));
  const p = (q: number): number => median(results.map((r) => percentile(ok(r), q)));
  const p99 = p(99);
  let profile: ProfileSummary | null = null;
  let stretches: Stretch[] = [];
  let profiled: DeliveryRun | null = null;
  if (p99 > TARGET_P99_MS || process.argv.includes('--profile')) {
    const profDir = mkdtempSync(join(tmpdir(), 'bench-d2a-prof-'));
    await waitForQuiet(opts.quick ? 2_000 : 20_000);
    try {
      profiled = await deliveryRun(hs, { count, warm: 1_000, perSecond, perRoom: PER_ROOM, reason: 'CLIENT_INITIATED', rate, tag: 'lp', settleMs: 60_000, log: opts.log, nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] });
      const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
      if (file && profiled.profileWindow) {
        profile = summariseCpuProfile(join(profDir, file), { window: profiled.profileWindow, top: 12, inclusiveOf: ['handler (', 'processWebhook (', 'doAction (', 'saveDelegation (', 'markWebhooksProcessed (', 'recordWebhooks (', 'pruneWebhooks (', 'cycle (', 'emit (daemon', '(garbage collector)'] });
        stretches = longestBusyStretches(join(profDir, file), profiled.profileWindow, 6);
      }
    } finally {
      rmSync(profDir, { recursive: true, force: true });
    }
  }
  await hs.close();
  /** Slow webhooks and how many distinct 250 ms windows (by send time) they fell into: few windows = stalls. */
  const clustering = (r: DeliveryRun): { slow: number; windows: number } => {
    const windows = new Set<number>();
    let slow = 0;
    r.latencies.forEach((l, i) => {
      if (l > TARGET_P99_MS) {
        slow++;
        windows.add(Math.floor(r.sentAt[i]! / 250));
      }
    });
    return { slow, windows: windows.size };
  };
  const allDelivered = results.every((r) => r.delivered === r.sent);
  const table = [
    `| run | delivered | p50 | p90 | p99 | max | webhook answered p50 / p99 | over ${TARGET_P99_MS} ms (in how many 250 ms windows) | daemon event-loop delay p99 / max | other load on the machine |`,
    '|---|---:|---:|---:|---:|---:|---|---:|---|---:|',
    ...[...results, ...setAside, ...(profiled ? [profiled] : [])].map((r, i) => {
      const l = ok(r);
      const c = clustering(r);
      return `| ${i < results.length ? i + 1 : i < results.length + setAside.length ? 'set aside' : 'profiled'} | ${fmt(r.delivered)} / ${fmt(r.sent)} | ${fmtMs(percentile(l, 50))} | ${fmtMs(percentile(l, 90))} | ${fmtMs(percentile(l, 99))} | ${fmtMs(Math.max(...l))} | ${fmtMs(percentile(r.acks, 50))} / ${fmtMs(percentile(r.acks, 99))} | ${fmt(c.slow)} (${c.windows}) | ${fmtMs(r.loopDelayP99Ms)} / ${fmtMs(r.loopDelayMaxMs)} | ${r.foreignCores.toFixed(2)} cores |`;
    }),
  ].join('\n');
  const body = [
    `**Method.** Per run, ${fmt(count)} participants (plus 1,000 for a warm-up) each hold a \`connected\` delegation for a`,
    'future that the fake homeserver (`test/fakes/homeserver.ts`, its own process) really created; the built daemon',
    `loads them, then the load generator posts one signed 1.8 KB \`participant_left\` (CLIENT_INITIATED) per participant at`,
    `${fmt(perSecond)}/s, open loop, over 32 keep-alive connections. Latency = the homeserver's receipt of the \`leave\``,
    'action (stamped in its process once it has handled the call) minus the moment the webhook was handed to the',
    `connection (both wall clock with sub-millisecond resolution). \`SIDECAR_HOMESERVER_RATE=${fmt(rate)}\`: one origin serves`,
    `every participant here, and at the default of 1/s the limiter, not the path, would set the figure (see benchmark 5).`,
    `Log level \`info\` (two lines per delegation). Other load before the first run: ${quiet.toFixed(2)} cores. A run during`,
    `which other processes took more than ${DISTURBED_CORES} cores is set aside (shown, not counted) and repeated, at most ${MAX_REPEATS} times.`,
    '',
    table,
    '',
    `Median over runs: p50 ${fmtMs(p(50))}, p99 **${fmtMs(p99)}** (target <= ${TARGET_P99_MS} ms; runs ${runs(results.map((r) => percentile(ok(r), 99)), fmtMs)}).`,
    ...(profile
      ? [
          '',
          `**Profile** of the daemon during one more run (\`--cpu-prof\`, measured phase only):`,
          '',
          profileMarkdown(profile, 'Daemon at 1,000 webhooks/s'),
          '',
          'The longest stretches in which the daemon\'s event loop never went idle (every webhook and homeserver answer',
          'arriving meanwhile waits for the end of the stretch):',
          '',
          stretchesMarkdown(stretches),
        ]
      : []),
  ].join('\n');
  return {
    name: 'latency',
    title: '3. Disconnect to action',
    ranAt: new Date().toISOString(),
    seconds: 0,
    rows: [
      {
        measure: `webhook sent -> homeserver receives \`leave\`, ${fmt(perSecond)} webhooks/s`,
        result: `p50 ${fmtMs(p(50))}, p99 ${fmtMs(p99)}${allDelivered ? '' : ' (not all delivered)'}`,
        target: `p99 <= ${TARGET_P99_MS} ms`,
        verdict: p99 <= TARGET_P99_MS && allDelivered ? 'met' : 'missed',
      },
    ],
    body,
  };
}

if (isMain(import.meta.url)) await runAlone('latency', import.meta.url, run);
