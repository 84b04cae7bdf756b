import { randomBytes } from 'node:crypto';
import type { FakeHomeserver } from '../fakes/homeserver.js';
import { WebhookSender, mintParticipantToken } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, api } from './daemon.js';

export type DialectName = 'futures' | 'delayed_events';

/** A participant of a test call: its LiveKit token, a future on the homeserver, and its delegation. */
export interface Participant {
  identity: string;
  room: string;
  sid: string;
  jwt: string;
  token: string;
  delegationId: string;
}

export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** Creates a future (or delayed event) the way a client would, over HTTP to the fake homeserver. */
export async function createHomeserverToken(hs: FakeHomeserver, dialect: DialectName, roomId: string, timeoutMs: number): Promise<string> {
  const member = { type: 'org.matrix.msc3401.call.member', content: {}, state_key: `_${roomId}` };
  if (dialect === 'futures') {
    const r = await hs.createFuture({
      roomId,
      timeoutSeconds: timeoutMs / 1000,
      onTimeout: member,
      actions: { leave: member, connection_lost: member },
    });
    return r.future_token;
  }
  return hs.createDelayedEvent({ roomId, eventType: member.type, content: {}, stateKey: member.state_key, delayMs: timeoutMs });
}

export async function delegate(
  daemonUrl: string,
  hs: FakeHomeserver,
  dialect: DialectName,
  opts: { room?: string; identity?: string; timeoutMs?: number; forwardedFor?: string } = {},
): Promise<Participant> {
  const room = opts.room ?? uniqueName('room');
  const identity = opts.identity ?? uniqueName('user');
  const timeoutMs = opts.timeoutMs ?? 4000;
  const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
  const token = await createHomeserverToken(hs, dialect, `!${room}:hs`, timeoutMs);
  const res = await api(daemonUrl, 'POST', '/v1/delegations', {
    token: jwt,
    body: { homeserver: hs.url, dialect, token, timeout_ms: timeoutMs },
    ...(opts.forwardedFor ? { forwardedFor: opts.forwardedFor } : {}),
  });
  if (res.status !== 201) throw new Error(`delegation failed: ${res.status} ${JSON.stringify(res.body)}`);
  return { identity, room, sid: `PA_${randomBytes(4).toString('hex')}`, jwt, token, delegationId: res.body.delegation_id };
}

/** Actions the homeserver actually executed for a token (its own record). */
export function actionsFired(hs: FakeHomeserver, token: string): string[] {
  return hs.sent.filter((e) => e.handle === token && e.cause === 'action').map((e) => e.actionName ?? '?');
}

export function refreshCalls(hs: FakeHomeserver, token: string): number {
  return hs.calls.filter((c) => c.handle === token && (c.op === 'refresh' || c.op === 'restart') && c.status === 200).length;
}

export function webhookSender(daemonUrl: string): WebhookSender {
  return new WebhookSender({ url: `${daemonUrl}/livekit/webhook`, apiKey: API_KEY, apiSecret: API_SECRET });
}

export async function delegationState(daemonUrl: string, p: Participant): Promise<{ state: string; pending_action: string | null; outcome: string | null; expires_at: number }> {
  const res = await api(daemonUrl, 'GET', `/v1/delegations/${p.delegationId}`, { token: p.jwt });
  if (res.status !== 200) throw new Error(`GET delegation: ${res.status}`);
  return res.body;
}
