/**
 * Benchmark 9, a departure in LiveKit to the membership gone in the real Synapse: the rig of test/real/ (Synapse
 * 1.163.2, livekit-server 1.13.5, matrix-js-sdk + @livekit/rtc-node participants on Node 22, the daemon as its own
 * process) with single participants leaving on purpose one at a time, groups leaving at once, and groups whose
 * process is SIGKILLed (LiveKit reports the lost connection; the daemon waits the reconnect grace). The time runs
 * from LiveKit's `participant_left` webhook reaching the daemon (the rig's pass-through proxy notes it, as in
 * docs/interop.md) to the emptying event's `origin_server_ts`, and is broken down with the daemon's and Synapse's logs.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { sleep } from '../test/helpers/daemon.js';
import { webhookFor } from '../test/real/judge.js';
import { missingPeers } from '../test/real/peers.js';
import { startRig, type Call, type Member, type Rig } from '../test/real/rig.js';
import { CALL_MEMBER_TYPE, type SynapseUser } from '../test/real/synapse.js';
import { isMain, runAlone } from './lib/cli.js';
import { ContentionMeter } from './lib/contention.js';
import { RESULTS, type BenchOptions, type Section } from './lib/report.js';
import { fmt, median, percentile } from './lib/stats.js';

const GRACE_MS = 2_000;
const DELAY_MS = 30_000;
const TARGET_MS = 250;

type Kind = 'single' | 'group' | 'lost';

interface Sample {
  kind: Kind;
  round: number;
  /** LiveKit's event time (whole seconds: `createdAt`), the webhook at the proxy, and the daemon's acknowledgement. */
  createdAt: number | null;
  /** LiveKit's log: its `participant closing` line, and the webhook's sending (`sent webhook` less its send time). */
  closingAt: number | null;
  webhookSentAt: number | null;
  webhookAt: number;
  ackedAt: number | null;
  /** The daemon's `grace` and `firing` state lines (its decision to act). */
  graceAt: number | null;
  firingAt: number | null;
  /** Synapse's access log: the send request's arrival (log time less Synapse's own processing time) and its answer. */
  sendReceivedAt: number | null;
  sendAnsweredAt: number | null;
  /** The emptying event's `origin_server_ts`. */
  goneAt: number;
  /** The daemon sent it (the access log's send of this delayed event is unauthenticated). */
  byDaemon: boolean;
}

export async function run(opts: BenchOptions): Promise<Section> {
  const missing = missingPeers();
  if (missing.length) {
    console.warn(`\n!!! rig-leave: SKIPPED, the real peers are not installed (npm run peers:install): missing ${missing.join(', ')} !!!\n`);
    return storedOrPending();
  }
  const rounds = opts.quick ? 1 : Number(process.env.BENCH_RIG_ROUNDS ?? 7);
  const singles = opts.quick ? 1 : 4;
  const group = opts.quick ? 3 : 12;
  const lost = opts.quick ? 2 : 8;
  const rig = await startRig({ daemonEnv: { SIDECAR_RECONNECT_GRACE_MS: String(GRACE_MS) } });
  const samples: Sample[] = [];
  const meter = new ContentionMeter();
  let load: ReturnType<ContentionMeter['stop']>;
  let control: { atOnce: number[]; oneAtATime: number[] };
  const load0 = loadavg()[0]!;
  try {
    for (let r = 0; r < rounds; r++) {
      opts.log(`round ${r + 1}/${rounds}: ${singles} single calls, a group of ${group}, a group of ${lost} to be killed`);
      const calls = await Promise.all([
        ...Array.from({ length: singles }, () => rig.startCall(1, { delayMs: DELAY_MS, delegate: 'v1' })),
        rig.startCall(group, { delayMs: DELAY_MS, delegate: 'v1' }),
        rig.startCall(lost, { delayMs: DELAY_MS, delegate: 'v1' }),
      ]);
      const groupCall = calls[singles]!;
      const lostCall = calls[singles + 1]!;
      const asked = Date.now();
      // The lost connection first: LiveKit reports it about 20 s later, while the leaves below are measured.
      lostCall.participants.proc.kill('SIGKILL');
      const lostGone = Promise.all(lostCall.members.map((m) => measure(rig, lostCall, m, 'lost', r, asked, 120_000)));
      for (const call of calls.slice(0, singles)) {
        call.participants.send({ cmd: 'close' });
        samples.push(await measure(rig, call, call.members[0]!, 'single', r, asked, 30_000));
      }
      groupCall.participants.send({ cmd: 'close' });
      samples.push(...(await Promise.all(groupCall.members.map((m) => measure(rig, groupCall, m, 'group', r, asked, 60_000)))));
      samples.push(...(await lostGone));
    }
    opts.log(`Synapse alone: ${rounds} rooms of ${group} delayed leaves sent at once, and as many one at a time`);
    control = await synapseAlone(rig, rounds, group);
    // Synapse logs a request after answering it: the last sends may be written a little after their event.
    await sleep(1_000);
    fillFromLogs(rig, samples);
    if (process.env.BENCH_RIG_DUMP) writeFileSync(process.env.BENCH_RIG_DUMP, JSON.stringify(samples, null, 1));
  } finally {
    // The rig's processes are counted as ours only while they run.
    load = meter.stop();
    await rig.stop();
  }
  const section = report(samples, control, { rounds, singles, group, lost, foreignCores: load.foreignCores, oursCores: load.oursCores, load: [load0, loadavg()[0]!] });
  opts.log(section.rows.map((r) => `${r.measure}: ${r.result}`).join('; '));
  return section;
}

/** The member's departure: its webhook and the emptying event; the logs are read once at the end. */
async function measure(rig: Rig, call: Call, m: Member, kind: Kind, round: number, after: number, timeoutMs: number): Promise<Sample> {
  await sendAnswered(rig.synapse.logPath, m.delayId, timeoutMs);
  const ev = await rig.membership(call, m);
  if (!ev || Object.keys(ev.content).length !== 0) throw new Error(`Synapse answered the send of ${m.userId}'s delayed leave but the membership is not empty`);
  const goneAt = ev.origin_server_ts;
  const hook = await webhookFor(rig, m, kind === 'lost' ? ['participant_left', 'participant_connection_aborted'] : ['participant_left'], after);
  const delegated = call.participants.events.find((e) => e.ev === 'delegated' && e.i === call.members.indexOf(m));
  const id = (delegated?.body as { delegation_id?: string } | undefined)?.delegation_id ?? '';
  return Object.assign(
    { kind, round, createdAt: hook.createdAt ?? null, closingAt: null, webhookSentAt: null, webhookAt: hook.at, ackedAt: hook.ackedAt ?? null, graceAt: null, firingAt: null, sendReceivedAt: null, sendAnsweredAt: null, goneAt, byDaemon: false },
    { delegationId: id, delayId: m.delayId, identity: m.identity },
  );
}

/**
 * Synapse's access log, read as it grows: the delayed events whose `send` it answered 200. The bench waits on this
 * rather than polling each member's state: 20 members polled every 100 ms (the tests' `membershipGone`) are about
 * 200 requests/s, which loaded the very Synapse being measured.
 */
const answeredSends = { path: '', offset: 0, rest: '', ids: new Set<string>() };

async function sendAnswered(logPath: string, delayId: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    readAnsweredSends(logPath);
    if (answeredSends.ids.has(delayId)) return;
    if (Date.now() > deadline) throw new Error(`Synapse answered no send of the delayed leave within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function readAnsweredSends(logPath: string): void {
  const t = answeredSends;
  if (t.path !== logPath) Object.assign(t, { path: logPath, offset: 0, rest: '', ids: new Set<string>() });
  const size = statSync(logPath).size;
  if (size <= t.offset) return;
  const buf = Buffer.alloc(size - t.offset);
  const fd = openSync(logPath, 'r');
  try {
    readSync(fd, buf, 0, buf.length, t.offset);
  } finally {
    closeSync(fd);
  }
  t.offset = size;
  const lines = (t.rest + buf.toString('utf8')).split('\n');
  t.rest = lines.pop() ?? '';
  for (const line of lines) {
    const m = / Processed request: .* 200!? "POST [^ ]*\/delayed_events\/([^/ ]+)\/send HTTP/.exec(line);
    if (m) t.ids.add(decodeURIComponent(m[1]!));
  }
}

/** The daemon's state lines and Synapse's access-log lines for each sample's delegation and delayed event. */
function fillFromLogs(rig: Rig, samples: Sample[]): void {
  const states = new Map<string, { grace?: number; firing?: number }>();
  for (const line of rig.daemon.output) {
    if (!line.startsWith('{') || !line.includes('delegation state changed')) continue;
    const l = JSON.parse(line) as { time: number; delegation_id: string; state: string };
    const s = states.get(l.delegation_id) ?? {};
    if (l.state === 'grace') s.grace ??= l.time;
    if (l.state === 'firing') s.firing ??= l.time;
    states.set(l.delegation_id, s);
  }
  const sends = new Map<string, { received: number; answered: number; user: string }>();
  // `<ts> - synapse.access.http.N - INFO - <request> - <ip> - <port> - {<user>} Processed request: <total>sec/...`
  const re = / - \{([^}]*)\} Processed request: (\d+\.\d+)sec\/.* (\d{3})!? "POST ([^ ]+)\/send HTTP/;
  for (const line of readFileSync(rig.synapse.logPath, 'utf8').split('\n')) {
    const m = re.exec(line);
    if (!m || m[3] !== '200') continue;
    const answered = Date.parse(line.slice(0, 23).replace(' ', 'T').replace(',', '.'));
    const delayId = decodeURIComponent(m[4]!.slice(m[4]!.lastIndexOf('/') + 1));
    sends.set(delayId, { received: answered - Number(m[2]) * 1000, answered, user: m[1]! });
  }
  const closing = new Map<string, number[]>();
  const sent = new Map<string, number[]>();
  for (const line of rig.livekit.output().split('\n')) {
    if (!line.includes('"participant closing"') && !line.includes('"sent webhook"')) continue;
    const l = JSON.parse(line) as { ts: number; msg: string; participant?: string; event?: string; sendDuration?: number };
    if (!l.participant) continue;
    if (l.msg === 'participant closing') push(closing, l.participant, l.ts * 1000);
    else if (l.event === 'participant_left' || l.event === 'participant_connection_aborted') push(sent, l.participant, (l.ts - (l.sendDuration ?? 0)) * 1000);
  }
  // The last of LiveKit's lines for the identity before the webhook reached the daemon.
  const lastBefore = (xs: number[] | undefined, t: number) => (xs ?? []).filter((x) => x <= t + 1).pop() ?? null;
  for (const s of samples as Array<Sample & { delegationId: string; delayId: string; identity: string }>) {
    s.closingAt = lastBefore(closing.get(s.identity), s.webhookAt);
    s.webhookSentAt = lastBefore(sent.get(s.identity), s.webhookAt);
    const st = states.get(s.delegationId);
    s.graceAt = st?.grace ?? null;
    s.firingAt = st?.firing ?? null;
    const send = sends.get(s.delayId);
    s.sendReceivedAt = send?.received ?? null;
    s.sendAnsweredAt = send?.answered ?? null;
    s.byDaemon = send?.user === 'None';
  }
}

const MGMT = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';

/**
 * The control: the same sends made straight to Synapse, without LiveKit or the daemon. Per round a room with `n`
 * delayed leaves whose `send`s go out together (as the daemon's do for a group), then `n` more sent one at a time.
 * The time is the event's `origin_server_ts` less the moment the request left.
 */
async function synapseAlone(rig: Rig, rounds: number, n: number): Promise<{ atOnce: number[]; oneAtATime: number[] }> {
  const users: SynapseUser[] = [];
  for (let k = 0; k < n; k++) users.push(await rig.synapse.register(`ctl${k}x${Date.now() % 100000}`));
  const out = { atOnce: [] as number[], oneAtATime: [] as number[] };
  const schedule = async () => {
    const { room_id: roomId } = await rig.synapse.call(rig.observer, 'POST', '/_matrix/client/v3/createRoom', { preset: 'public_chat', power_level_content_override: { state_default: 0 } });
    const events: Array<{ roomId: string; stateKey: string; delayId: string }> = [];
    for (const user of users) {
      await rig.synapse.call(user, 'POST', `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {});
      const stateKey = `_${user.userId}_CTL_m.call`;
      const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${CALL_MEMBER_TYPE}/${encodeURIComponent(stateKey)}`;
      // The membership, then its delayed leave (empty content), as MatrixRTC clients schedule them.
      await rig.synapse.call(user, 'PUT', path, { application: 'm.call', call_id: '' });
      const { delay_id: delayId } = await rig.synapse.call(user, 'PUT', `${path}?org.matrix.msc4140.delay=${DELAY_MS}`, {});
      events.push({ roomId, stateKey, delayId });
    }
    return events;
  };
  const send = async (e: { roomId: string; stateKey: string; delayId: string }) => {
    const sentAt = Date.now();
    await rig.synapse.call(null, 'POST', `${MGMT}/${encodeURIComponent(e.delayId)}/send`, {});
    const ev = await rig.synapse.state(rig.observer, e.roomId, CALL_MEMBER_TYPE, e.stateKey);
    if (!ev || Object.keys(ev.content).length !== 0) throw new Error('the control send did not empty the membership');
    return ev.origin_server_ts - sentAt;
  };
  for (let r = 0; r < rounds; r++) {
    out.atOnce.push(...(await Promise.all((await schedule()).map(send))));
    for (const e of await schedule()) out.oneAtATime.push(await send(e));
  }
  return out;
}

/** Per position in the order Synapse created a group's events: time from the webhook, gap to the previous event. */
function rankTable(group: Sample[]): string[] {
  const rounds = new Map<number, Sample[]>();
  for (const s of group) push(rounds, s.round, s);
  const byRank: Array<{ total: number[]; gap: number[] }> = [];
  for (const xs of rounds.values()) {
    xs.sort((a, b) => a.goneAt - b.goneAt);
    xs.forEach((s, k) => {
      byRank[k] ??= { total: [], gap: [] };
      byRank[k]!.total.push(s.goneAt - s.webhookAt);
      if (k > 0) byRank[k]!.gap.push(s.goneAt - xs[k - 1]!.goneAt);
    });
  }
  return [
    '| k | from the webhook, median (max) | gap to event k-1, median |',
    '|---:|---|---|',
    ...byRank.map((r, k) => `| ${k + 1} | ${ms(median(r.total))} (${ms(Math.max(...r.total))}) | ${k === 0 ? '' : ms(median(r.gap))} |`),
  ];
}

function push<K, T>(m: Map<K, T[]>, k: K, v: T): void {
  const xs = m.get(k) ?? [];
  xs.push(v);
  m.set(k, xs);
}

interface RunInfo {
  rounds: number;
  singles: number;
  group: number;
  lost: number;
  foreignCores: number;
  oursCores: number;
  load: [number, number];
}

const nn = (xs: Array<number | null>): number[] => xs.filter((x): x is number => x !== null && Number.isFinite(x));
const ms = (v: number): string => (Number.isFinite(v) ? `${fmt(v, 0)} ms` : 'n/a');
const dist = (xs: number[]): string => `${ms(median(xs))} / ${ms(percentile(xs, 99))} / ${ms(Math.max(...xs))}`;

function report(samples: Sample[], control: { atOnce: number[]; oneAtATime: number[] }, info: RunInfo): Section {
  const leaves = samples.filter((s) => s.kind !== 'lost');
  const lost = samples.filter((s) => s.kind === 'lost');
  const toGone = (xs: Sample[]) => xs.map((s) => s.goneAt - s.webhookAt);
  const leaveMs = toGone(leaves);
  const lostMs = toGone(lost).map((v) => v - GRACE_MS);
  const fromCreated = (xs: Sample[], less = 0) => nn(xs.map((s) => (s.createdAt === null ? null : s.goneAt - s.createdAt - less)));
  const fromClosing = (xs: Sample[], less = 0) => nn(xs.map((s) => (s.closingAt === null ? null : s.goneAt - s.closingAt - less)));
  const p50p99 = (xs: number[]) => (xs.length ? `${ms(median(xs))} / ${ms(percentile(xs, 99))}` : 'n/a');
  const stage = (xs: Sample[], a: (s: Sample) => number | null, b: (s: Sample) => number | null) => nn(xs.map((s) => (a(s) === null || b(s) === null ? null : b(s)! - a(s)!)));
  const stages = (xs: Sample[], viaGrace: boolean) => [
    ['LiveKit `participant closing` (its log) -> webhook sent (LiveKit\'s `sent webhook` less its send time)', stage(xs, (s) => s.closingAt, (s) => s.webhookSentAt)],
    ['webhook sent -> at the daemon (the rig\'s proxy)', stage(xs, (s) => s.webhookSentAt, (s) => s.webhookAt)],
    ['webhook at the daemon -> acknowledged (recorded with its state change, one commit)', stage(xs, (s) => s.webhookAt, (s) => s.ackedAt)],
    ...(viaGrace
      ? [['webhook at the daemon -> `grace` line', stage(xs, (s) => s.webhookAt, (s) => s.graceAt)] as const, ['`grace` line -> `firing` line (grace over, action decided; minus the grace)', stage(xs, (s) => s.graceAt, (s) => s.firingAt).map((v) => v - GRACE_MS)] as const]
      : [['webhook at the daemon -> `firing` line (action decided)', stage(xs, (s) => s.webhookAt, (s) => s.firingAt)] as const]),
    ['`firing` -> send request at Synapse (limiter, store, HTTP)', stage(xs, (s) => s.firingAt, (s) => s.sendReceivedAt)],
    [viaGrace ? "the daemon's share: `firing` -> send request at Synapse" : "the daemon's share: webhook at the daemon -> send request at Synapse", stage(xs, (s) => (viaGrace ? s.firingAt : s.webhookAt), (s) => s.sendReceivedAt)],
    ['send at Synapse -> event `origin_server_ts`', stage(xs, (s) => s.sendReceivedAt, (s) => s.goneAt)],
    ['`origin_server_ts` -> Synapse answered the send', stage(xs, (s) => s.goneAt, (s) => s.sendAnsweredAt)],
  ] as Array<readonly [string, number[]]>;
  const table = (rows: Array<readonly [string, number[]]>) => ['| stage | samples | p50 / p99 / max |', '|---|---:|---|', ...rows.map(([name, xs]) => `| ${name} | ${xs.length} | ${xs.length ? dist(xs) : 'n/a'} |`)];
  const table2 = (a: Array<readonly [string, number[]]>, b: Array<readonly [string, number[]]>) => [
    '| stage | one at a time: p50 / p99 / max | at once: p50 / p99 / max |',
    '|---|---|---|',
    ...a.map(([name, xs], i) => `| ${name} | ${xs.length ? dist(xs) : 'n/a'} | ${b[i]![1].length ? dist(b[i]![1]) : 'n/a'} |`),
  ];
  const byKind = (k: Kind) => toGone(samples.filter((s) => s.kind === k)).map((v) => (k === 'lost' ? v - GRACE_MS : v));
  const slowest = [...leaves].sort((a, b) => b.goneAt - b.webhookAt - (a.goneAt - a.webhookAt)).slice(0, 5);
  const notByDaemon = samples.filter((s) => !s.byDaemon).length;
  const leaveP99 = percentile(leaveMs, 99);
  const ours = stage(leaves, (s) => s.webhookAt, (s) => s.sendReceivedAt);
  const lostP99 = percentile(lostMs, 99);
  const body = [
    `Method: the rig of test/real/ (real Synapse, livekit-server, participants; daemon as its own process, test settings:`,
    `homeserver rate 200/s, Synapse's limits opened), reconnect grace ${GRACE_MS} ms, delayed leaves of ${DELAY_MS / 1000} s delegated`,
    `through \`/v1/delegations\`. ${info.rounds} rounds; in each, ${info.singles} single-participant calls leave on purpose one after another`,
    `(each waits for the previous membership to be gone), then a process of ${info.group} participants leaves on purpose at once`,
    `(CLIENT_INITIATED), while a process of ${info.lost} participants was SIGKILLed at the round's start (LiveKit reports the lost`,
    'connection about 20 s later). Time = the emptying event\'s `origin_server_ts` in Synapse minus the webhook\'s arrival',
    "at the rig's pass-through proxy in front of the daemon (same clock); for lost connections, minus the grace too. The",
    "bench learns that a send was answered from Synapse's access log and then reads the state once (polling every member's",
    'state every 100 ms, as the tests do, is about 200 requests/s at Synapse here and loaded the server being measured).',
    `Load: other processes took ${fmt(info.foreignCores, 2)} cores on average during the run (the rig itself ${fmt(info.oursCores, 2)});`,
    `1-minute load average ${fmt(info.load[0], 1)} before, ${fmt(info.load[1], 1)} after. ${notByDaemon === 0 ? 'Every send was the daemon\'s (unauthenticated in Synapse\'s access log).' : `**${notByDaemon} sends were not found as the daemon's** in Synapse's access log.`}`,
    '',
    '| departure | samples | p50 | p99 | max | from LiveKit\'s `participant closing` p50 / p99 | from `createdAt` p50 / p99 (whole seconds, so up to 1 s more) |',
    '|---|---:|---:|---:|---:|---|---|',
    ...(['single', 'group', 'lost'] as const).map((k) => {
      const xs = byKind(k);
      const of = samples.filter((s) => s.kind === k);
      const less = k === 'lost' ? GRACE_MS : 0;
      return `| ${k === 'single' ? 'leave, one at a time' : k === 'group' ? `leave, ${info.group} at once` : `lost connection (beyond the ${GRACE_MS} ms grace)`} | ${xs.length} | ${ms(median(xs))} | ${ms(percentile(xs, 99))} | ${ms(Math.max(...xs))} | ${p50p99(fromClosing(of, less))} | ${p50p99(fromCreated(of, less))} |`;
    }),
    `| **all leaves** | ${leaveMs.length} | ${ms(median(leaveMs))} | ${ms(leaveP99)} | ${ms(Math.max(...leaveMs))} | ${p50p99(fromClosing(leaves))} | ${p50p99(fromCreated(leaves))} |`,
    '',
    'Where the time goes, leaves (daemon log `time` and Synapse access log, same clock; Synapse\'s arrival = its log time',
    'less the processing time it reports, to its millisecond):',
    '',
    ...table2(stages(samples.filter((s) => s.kind === 'single'), false), stages(samples.filter((s) => s.kind === 'group'), false)),
    '',
    `The group's departures by the order Synapse created their events in (${info.rounds} groups of ${info.group}; Synapse creates a room's`,
    'events one at a time, `room_event_creation_limit`): the k-th event of a group, its time from the webhook and the gap',
    "to the previous event's `origin_server_ts`:",
    '',
    ...rankTable(samples.filter((s) => s.kind === 'group')),
    '',
    `Control, the same \`send\`s made straight to Synapse from the bench (no LiveKit, no daemon; ${info.rounds} rooms): request sent ->`,
    '`origin_server_ts`, p50 / p99 / max:',
    '',
    '| sends | samples | p50 / p99 / max |',
    '|---|---:|---|',
    `| ${info.group} at once in one room | ${control.atOnce.length} | ${dist(control.atOnce)} |`,
    `| one at a time | ${control.oneAtATime.length} | ${dist(control.oneAtATime)} |`,
    '',
    'Lost connections:',
    '',
    ...table(stages(lost, true)),
    '',
    'The five slowest leaves (ms from the webhook: acknowledged / `firing` / send at Synapse / `origin_server_ts`):',
    '',
    ...slowest.map((s) => `- ${s.kind}: ${[s.ackedAt, s.firingAt, s.sendReceivedAt, s.goneAt].map((t) => (t === null ? 'n/a' : fmt(t - s.webhookAt, 0))).join(' / ')}`),
  ].join('\n');
  return {
    name: 'rigleave',
    title: '9. LiveKit departure to membership gone in the real Synapse',
    ranAt: new Date().toISOString(),
    seconds: 0,
    rows: [
      {
        measure: `LiveKit \`participant_left\` (webhook at the daemon) -> membership gone in the real Synapse, p99, ${leaveMs.length} leaves (single and ${info.group} at once); other load ${fmt(info.foreignCores, 1)} cores`,
        result: `p99 ${ms(leaveP99)} (p50 ${ms(median(leaveMs))})`,
        target: `<= ${TARGET_MS} ms`,
        verdict: leaveP99 <= TARGET_MS ? 'met' : 'missed',
      },
      {
        measure: "the daemon's share of those leaves: webhook at the daemon -> the send request at Synapse (Synapse's own log), p99",
        result: `p99 ${ms(percentile(ours, 99))} (p50 ${ms(median(ours))}); Synapse's control, ${info.group} sends at once without the daemon: p99 ${ms(percentile(control.atOnce, 99))}`,
        target: 'reported',
        verdict: 'reported',
      },
      {
        measure: `the same for a lost connection, ${lostMs.length} SIGKILLed participants, grace ${GRACE_MS} ms`,
        result: `grace + ${ms(lostP99)} (p50 grace + ${ms(median(lostMs))})`,
        target: `grace + ${TARGET_MS} ms`,
        verdict: lostP99 <= TARGET_MS ? 'met' : 'missed',
      },
    ],
    body,
  };
}

/** Without the peers the stored figures stay as they are (with their date); a first run without them has none. */
function storedOrPending(): Section {
  if (existsSync(RESULTS)) {
    const stored = (JSON.parse(readFileSync(RESULTS, 'utf8')) as { sections: Record<string, Section> }).sections.rigleave;
    if (stored) return stored;
  }
  return {
    name: 'rigleave',
    title: '9. LiveKit departure to membership gone in the real Synapse',
    ranAt: '',
    seconds: 0,
    rows: [{ measure: 'LiveKit `participant_left` -> membership gone in the real Synapse, p99', result: 'not measured (peers missing)', target: `<= ${TARGET_MS} ms`, verdict: 'pending' }],
    body: 'Not measured: the real peers were not installed (`npm run peers:install`).',
  };
}

if (isMain(import.meta.url)) await runAlone('rigleave', import.meta.url, run);
