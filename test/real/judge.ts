import { sleep } from '../helpers/daemon.js';
import type { Call, Member, Rig, WebhookSeen } from './rig.js';

/**
 * Verdicts come from Synapse's room state (contract section 9), never from the daemon. These poll Synapse and
 * LiveKit with deadlines; none waits a fixed time for something to happen.
 */

/** Waits until the member's membership is emptied in Synapse and returns the emptying event's server timestamp. */
export async function membershipGone(rig: Rig, call: Call, m: Member, timeoutMs: number, onPoll?: (listed: boolean, left: boolean) => void): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const listed = onPoll ? await rig.livekitLists(call, m).catch(() => false) : false;
    const ev = await rig.membership(call, m);
    if (!ev) throw new Error(`no membership event for ${m.userId}`);
    const left = Object.keys(ev.content).length === 0;
    onPoll?.(listed, left);
    if (left) return ev.origin_server_ts;
    if (Date.now() > deadline) throw new Error(`membership of ${m.userId} not emptied within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/**
 * Holds for `ms`, failing at once if any member's membership is emptied or replaced meanwhile. Replaced counts: a
 * MatrixRTC client that is still running answers its membership being emptied by joining again at once, so an early
 * leave can show only as a new membership event.
 */
export async function membershipsHeld(rig: Rig, call: Call, members: Member[], ms: number, note = ''): Promise<number> {
  const joinEvents = new Map<string, string>();
  for (const m of members) {
    const ev = await rig.membership(call, m);
    if (!ev || Object.keys(ev.content).length === 0) throw new Error(`the leave of ${m.userId} was sent while it was still in the call ${note}`);
    joinEvents.set(m.stateKey, ev.event_id);
  }
  const until = Date.now() + ms;
  let polls = 0;
  while (Date.now() < until) {
    for (const m of members) {
      const ev = await rig.membership(call, m);
      if (!ev || Object.keys(ev.content).length === 0) throw new Error(`the leave of ${m.userId} was sent while it was still in the call ${note}`);
      if (ev.event_id !== joinEvents.get(m.stateKey)) throw new Error(`the membership of ${m.userId} was replaced (left and joined again) while it was in the call ${note}`);
    }
    polls++;
    await sleep(250);
  }
  return polls;
}

export async function webhookFor(rig: Rig, m: Member, events: string[], after = 0, timeoutMs = 60_000): Promise<WebhookSeen> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const w = rig.webhooks.find((x) => x.identity === m.identity && events.includes(x.event) && x.at >= after);
    if (w) return w;
    if (Date.now() > deadline) throw new Error(`no ${events.join('/')} webhook for ${m.identity} within ${timeoutMs} ms: ${JSON.stringify(rig.webhooks)}`);
    await sleep(50);
  }
}

/** Appends a measured figure to a JSON-lines file for docs/interop.md (RIG_FIGURES=path). */
export async function recordFigure(figure: Record<string, unknown>): Promise<void> {
  const path = process.env.RIG_FIGURES;
  if (!path) return;
  const { appendFileSync } = await import('node:fs');
  appendFileSync(path, `${JSON.stringify({ ...figure, at: new Date().toISOString() })}\n`);
}

/**
 * The restarts of one delayed event that Synapse answered 200, from Synapse's own access log; `daemon` keeps only
 * those made without an access token (the daemon's; the SDK authenticates its own).
 */
export function restartsAt(rig: Rig, delayId: string, by: 'any' | 'daemon' = 'any'): number[] {
  return rig.synapse
    .accessLog()
    .filter((r) => r.path.includes(delayId) && r.method === 'POST' && r.status === 200 && !r.path.endsWith('/send') && !r.path.endsWith('/cancel'))
    .filter((r) => by === 'any' || r.user === null)
    .map((r) => r.ts);
}

/** The first restart by the daemon after `after`, waited for. */
export async function nextRestart(rig: Rig, delayId: string, after: number, timeoutMs = 60_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const t = restartsAt(rig, delayId, 'daemon').find((ts) => ts > after);
    if (t !== undefined) return t;
    if (Date.now() > deadline) throw new Error(`Synapse saw no restart of the delayed leave by the daemon within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/**
 * Who sent each successful `send` of a delayed event, per Synapse's log: null for an unauthenticated call (the
 * daemon). Waits for the first one: Synapse logs a request after answering it, so the state change can be seen first.
 */
export async function sendsOf(rig: Rig, delayId: string, timeoutMs = 10_000): Promise<Array<string | null>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const sends = rig.synapse
      .accessLog()
      .filter((r) => r.path.includes(delayId) && r.path.endsWith('/send') && r.status === 200)
      .map((r) => r.user);
    if (sends.length > 0 || Date.now() > deadline) return sends;
    await sleep(100);
  }
}
