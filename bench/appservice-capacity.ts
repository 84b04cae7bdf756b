/**
 * Benchmark 7, capacity per homeserver by mode: how many delegations with 2 h delays one homeserver carries at
 * Synapse's default limits when the daemon manages delayed events unauthenticated from one address (standalone:
 * every call in the address's `rc_delayed_event_mgmt` bucket, 1/s, burst 5) and when it makes them as the users
 * through its application-service registration (`rate_limited: false`). The accepted call rate is measured at the
 * rig's real Synapse 1.163.2 (its access log); the capacity is that rate over what one delegation costs (benchmark 4:
 * 0.625 calls per participant-hour at 2 h with the default refresh policy).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { registrationDocument } from '../src/appservice/registration.js';
import { missingPeers } from '../test/real/peers.js';
import { startSynapse, SYNAPSE_SERVER_NAME, type Synapse, type SynapseUser } from '../test/real/synapse.js';
import { isMain, runAlone } from './lib/cli.js';
import type { BenchOptions, Section } from './lib/report.js';
import { fmt } from './lib/stats.js';

const DELAY_MS = 2 * 3600_000;
/** Benchmark 4's steady-state cost of one delegation at 2 h (refresh by time left, 24 min margin). */
const CALLS_PER_DELEGATION_HOUR = 0.625;
/** Element Call's default delay (10 s) without delegation-sized delays: benchmark 4's rig figure, ~778 calls/h. */
const CALLS_PER_DELEGATION_HOUR_10S = 778;
const MGMT = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';
/** The first seconds of a window spend the bucket's burst; the rate is taken after them. */
const SETTLE_S = 6;

interface Window {
  mode: string;
  seconds: number;
  sent: number;
  /** Counted in Synapse's access log. */
  accepted: number;
  limited: number;
  other: number;
  /** Accepted per second after the settle time, from Synapse's log. */
  acceptedPerS: number;
}

export async function run(opts: BenchOptions): Promise<Section> {
  const missing = missingPeers();
  if (missing.length) throw new Error(`the real Synapse is needed (npm run peers:install): missing ${missing.join(', ')}`);
  const windowS = opts.quick ? 8 : 40;
  const users = opts.quick ? 4 : 40;
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-bench-as-'));
  const registration = registrationDocument({ url: 'http://127.0.0.1:9', serverName: SYNAPSE_SERVER_NAME }) as { as_token: string; rate_limited: boolean };
  const regPath = join(dir, 'registration.yaml');
  writeFileSync(regPath, JSON.stringify(registration));
  // Synapse's defaults for delayed-event management; every other limit opened, as in the rig.
  const synapse = await startSynapse({ defaultDelayedEventLimit: true, appServiceConfigFiles: [regPath] });
  const agent = new Agent({ connections: 16 });
  try {
    opts.log(`Synapse on ${synapse.url}; scheduling ${users} delayed leaves of 2 h`);
    const events = await scheduleDelayedLeaves(synapse, users);
    const post = async (path: string, token: string | null) => {
      const res = await request(`${synapse.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: '{}', dispatcher: agent });
      await res.body.dump();
      return res.statusCode;
    };
    // Standalone: the daemon's unauthenticated restart from one address, 4 at a time at most 5/s each (Synapse holds
    // a refused request 0.5 s before its 429, so one connection alone would offer barely 2/s).
    const standalone = await measure(synapse, 'standalone', windowS, { paceMs: 200, workers: 4 }, (i) => post(`${MGMT}/${encodeURIComponent(events[i % events.length]!.delayId)}/restart`, null));
    opts.log(`standalone: ${standalone.accepted} of ${standalone.sent} accepted, ${fmt(standalone.acceptedPerS, 2)}/s`);
    // Application service: the same restarts as each event's owner, as fast as 8 connections go.
    const asUser = await measure(synapse, 'appservice', windowS, { paceMs: 0, workers: 8 }, (i) => {
      const e = events[i % events.length]!;
      return post(`${MGMT}/${encodeURIComponent(e.delayId)}/restart?user_id=${encodeURIComponent(e.user.userId)}`, registration.as_token);
    });
    opts.log(`appservice: ${asUser.accepted} of ${asUser.sent} accepted, ${fmt(asUser.acceptedPerS, 1)}/s`);
    return section([standalone, asUser], users, windowS);
  } finally {
    await agent.close();
    await synapse.stop();
  }
}

async function scheduleDelayedLeaves(synapse: Synapse, n: number): Promise<Array<{ user: SynapseUser; delayId: string }>> {
  const owner = await synapse.register(`benchowner${Date.now() % 100000}`);
  const { room_id: roomId } = await synapse.call(owner, 'POST', '/_matrix/client/v3/createRoom', { preset: 'public_chat', power_level_content_override: { state_default: 0 } });
  const out: Array<{ user: SynapseUser; delayId: string }> = [];
  for (let i = 0; i < n; i++) {
    const user = await synapse.register(`bench${i}x${Date.now() % 100000}`);
    await synapse.call(user, 'POST', `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {});
    const key = encodeURIComponent(`_${user.userId}_BENCH_m.call`);
    const { delay_id } = await synapse.call(user, 'PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/org.matrix.msc3401.call.member/${key}?org.matrix.msc4140.delay=${DELAY_MS}`, {});
    out.push({ user, delayId: delay_id });
  }
  return out;
}

/** Offers restarts for `seconds`, then counts Synapse's own answers in its access log. */
async function measure(synapse: Synapse, mode: string, seconds: number, load: { paceMs: number; workers: number }, call: (i: number) => Promise<number>): Promise<Window> {
  // A fresh bucket: Synapse refills 1/s, so a pause longer than the burst leaves it full, as an idle daemon finds it.
  await new Promise((r) => setTimeout(r, 6_000));
  const from = Date.now();
  const until = from + seconds * 1000;
  let i = 0;
  let sent = 0;
  await Promise.all(
    Array.from({ length: load.workers }, async () => {
      while (Date.now() < until) {
        const started = Date.now();
        await call(i++);
        sent++;
        if (load.paceMs > 0) await new Promise((r) => setTimeout(r, Math.max(0, load.paceMs - (Date.now() - started))));
      }
    }),
  );
  // Synapse writes a request's line after answering it: wait until every request sent is in the log.
  const deadline = Date.now() + 30_000;
  let lines = synapse.accessLog().filter((r) => r.method === 'POST' && r.path.includes('/restart') && r.ts >= from - 1_000);
  while (lines.length < sent && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    lines = synapse.accessLog().filter((r) => r.method === 'POST' && r.path.includes('/restart') && r.ts >= from - 1_000);
  }
  const settled = lines.filter((r) => r.status === 200 && r.ts >= from + SETTLE_S * 1000);
  return {
    mode,
    seconds,
    sent,
    accepted: lines.filter((r) => r.status === 200).length,
    limited: lines.filter((r) => r.status === 429).length,
    other: lines.filter((r) => r.status !== 200 && r.status !== 429).length,
    acceptedPerS: settled.length / (seconds - SETTLE_S),
  };
}

function section(windows: Window[], users: number, windowS: number): Section {
  const [sa, as] = windows as [Window, Window];
  const capacity = (perS: number, perHour: number) => (perS * 3600) / perHour;
  const saCap = capacity(sa.acceptedPerS, CALLS_PER_DELEGATION_HOUR);
  const asCap = capacity(as.acceptedPerS, CALLS_PER_DELEGATION_HOUR);
  const body = [
    `Method: the rig's Synapse 1.163.2 with its default \`rc_delayed_event_mgmt\` (1/s, burst 5), an application-service`,
    `registration as \`futures-sidecar registration\` prints it (\`rate_limited: false\`), ${users} users with one 2 h delayed`,
    `leave each. For ${windowS} s per mode the management restarts the daemon makes are offered: standalone, unauthenticated`,
    'from 127.0.0.1, 4 connections at most 5/s each; application service, `Authorization: Bearer <as_token>` with `?user_id=<owner>`, 8 at a',
    `time. Synapse's access log gives the answers; the rate is taken after the first ${SETTLE_S} s (the burst). Capacity =`,
    `accepted calls per hour / ${CALLS_PER_DELEGATION_HOUR} calls per delegation-hour (benchmark 4, steady state at 2 h; each call`,
    'also costs its first refresh and its final send, so short calls fit fewer).',
    '',
    '| mode | offered | accepted (200) | refused 429 | other | accepted/s after the burst | delegations carried at 2 h |',
    '|---|---:|---:|---:|---:|---:|---:|',
    ...windows.map((w) => `| ${w.mode} | ${w.sent} | ${w.accepted} | ${w.limited} | ${w.other} | ${fmt(w.acceptedPerS, 2)} | ${fmt(capacity(w.acceptedPerS, CALLS_PER_DELEGATION_HOUR), 0)} |`),
    '',
    `- Standalone, every delegation of the homeserver shares one address's bucket: ${fmt(saCap, 0)} delegations at 2 h, and`,
    `  ${fmt(capacity(sa.acceptedPerS, CALLS_PER_DELEGATION_HOUR_10S), 1)} at Element Call's 10 s delays (${CALLS_PER_DELEGATION_HOUR_10S} calls/h each, the rig's figure).`,
    `- Application service, calls as the users are not limited (\`rate_limited: false\`): what bounds them is Synapse's`,
    `  own throughput on this machine, ${fmt(as.acceptedPerS, 0)} restarts/s, i.e. ${fmt(asCap, 0)} delegations at 2 h`,
    `  (x${fmt(asCap / saCap, 0)}). With \`rate_limited: true\` each user would have a 1/s bucket of its own, far above one`,
    "  delegation's 0.000174 calls/s, so the bound is the same.",
  ].join('\n');
  return {
    name: 'appservice',
    title: '7. Capacity per homeserver by mode',
    ranAt: new Date().toISOString(),
    seconds: 0,
    rows: [
      {
        measure: "management calls Synapse 1.163.2 accepts at its default limits, one address unauthenticated vs as the users (application service)",
        result: `${fmt(sa.acceptedPerS, 2)}/s vs ${fmt(as.acceptedPerS, 0)}/s`,
        target: 'reported',
        verdict: 'reported',
      },
      {
        measure: 'delegations one homeserver carries at those limits, 2 h delays (steady state): standalone vs application service',
        result: `${fmt(saCap, 0)} vs ${fmt(asCap, 0)} (x${fmt(asCap / saCap, 0)})`,
        target: 'reported',
        verdict: 'reported',
      },
    ],
    body,
  };
}

if (isMain(import.meta.url)) await runAlone('appservice', import.meta.url, run);
