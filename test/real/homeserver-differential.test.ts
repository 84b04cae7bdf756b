import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { peersTestsEnabled } from './peers.js';
import { startSynapse, type Synapse } from './synapse.js';

// The fake homeserver against the real Synapse: the same MSC4140 requests, the same answers (status and errcode).
// Where they differ, the fake is what must change (contract section 9).
const enabled = peersTestsEnabled('real servers: fake homeserver vs Synapse');
const UNSTABLE = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';

interface Target {
  url: string;
  token: string;
  roomId: string;
}

async function request(t: Target, method: string, path: string, body?: unknown, auth = false): Promise<{ status: number; errcode: string | null; body: any }> {
  const headers: Record<string, string> = {};
  if (auth) headers.authorization = `Bearer ${t.token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(t.url + path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  const parsed = text ? JSON.parse(text) : {};
  return { status: res.status, errcode: parsed.errcode ?? null, body: parsed };
}

async function schedule(t: Target, key: string): Promise<string> {
  const path = `/_matrix/client/v3/rooms/${encodeURIComponent(t.roomId)}/state/org.matrix.msc3401.call.member/${encodeURIComponent(key)}?org.matrix.msc4140.delay=60000`;
  const res = await request(t, 'PUT', path, {}, true);
  if (typeof res.body.delay_id !== 'string') throw new Error(`no delay_id: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.delay_id;
}

/** Each case runs its steps on a fresh delayed event and yields one (status, errcode) per step. */
const CASES: Record<string, (t: Target, id: string) => Promise<Array<[number, string | null]>>> = {
  'restart, unauthenticated, action in the path': async (t, id) => [await pick(request(t, 'POST', `${UNSTABLE}/${id}/restart`, {}))],
  'restart, action in the body': async (t, id) => [await pick(request(t, 'POST', `${UNSTABLE}/${id}`, { action: 'restart' }))],
  'send, then restart and send again': async (t, id) => [
    await pick(request(t, 'POST', `${UNSTABLE}/${id}/send`, {})),
    await pick(request(t, 'POST', `${UNSTABLE}/${id}/restart`, {})),
    await pick(request(t, 'POST', `${UNSTABLE}/${id}/send`, {})),
  ],
  'cancel, then restart': async (t, id) => [await pick(request(t, 'POST', `${UNSTABLE}/${id}/cancel`, {})), await pick(request(t, 'POST', `${UNSTABLE}/${id}/restart`, {}))],
  'unknown delay id': async (t) => [await pick(request(t, 'POST', `${UNSTABLE}/syd_doesnotexist0000000/restart`, {}))],
  'body action missing': async (t, id) => [await pick(request(t, 'POST', `${UNSTABLE}/${id}`, {}))],
  'body action unknown': async (t, id) => [await pick(request(t, 'POST', `${UNSTABLE}/${id}`, { action: 'bogus' }))],
};

async function pick(p: Promise<{ status: number; errcode: string | null }>): Promise<[number, string | null]> {
  const r = await p;
  return [r.status, r.errcode];
}

describe.runIf(enabled)('real servers: fake homeserver vs Synapse', () => {
  let synapse: Synapse;
  let fake: FakeHomeserver;
  let real: Target;
  let faked: Target;
  beforeAll(async () => {
    synapse = await startSynapse();
    const user = await synapse.register('differ');
    const { room_id } = await synapse.call(user, 'POST', '/_matrix/client/v3/createRoom', { preset: 'public_chat' });
    real = { url: synapse.url, token: user.accessToken, roomId: room_id };
    fake = await startFakeHomeserver({ clientAccessToken: 'fake-client-token' });
    faked = { url: fake.url, token: 'fake-client-token', roomId: '!room:fake' };
  }, 120_000);
  afterAll(async () => {
    await synapse?.stop();
    await fake?.close();
  });

  for (const [name, run] of Object.entries(CASES)) {
    it(`${name}: the fake answers as Synapse 1.163.2 does`, async () => {
      const fromSynapse = await run(real, await schedule(real, `_${name}`));
      const fromFake = await run(faked, await schedule(faked, `_${name}`));
      expect(fromFake).toEqual(fromSynapse);
    });
  }
});
