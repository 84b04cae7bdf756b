/**
 * The tokens and rooms of lk-jwt-service's routes against a real LiveKit server (`room.auto_create: false`, as
 * lk-jwt-service's README requires): LiveKit's own `/rtc/validate` (what its clients ask before joining) accepts the
 * tokens we issue once our `CreateRoom` made the room, and answers 404 while it does not exist. The WebRTC join with
 * real participants and Synapse's OpenID tokens belongs to the real-server rig (test/real).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RoomServiceClient } from 'livekit-server-sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { legacyRoomName, liveKitRoomName } from '../../src/compat/livekit-names.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { freePort, waitFor } from '../helpers/daemon.js';
import { livekitServerEnabled, toolPath } from '../helpers/deploy-tools.js';
import { loopbackBind, spawnBareDaemon, type BareDaemon } from '../helpers/lk-jwt.js';
import { selfSignedLoopbackCert } from '../helpers/tls.js';

const KEY = 'lkkey';
const SECRET = 'lk-secret-0123456789abcdef0123456789';
const ROOM_ID = '!real:example.org';

const LIVEKIT_BINARY = toolPath('livekit-server');

describe.skipIf(!livekitServerEnabled('lk-jwt-service routes against a real LiveKit server'))('lk-jwt-service routes against a real LiveKit server', () => {
  let livekit: ChildProcess;
  let livekitUrl: string;
  let fed: FakeMatrixFederation;
  let remote: FakeMatrixFederation;
  let daemon: BareDaemon;
  let dir: string;
  const output: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-real-lk-'));
    const [port, tcpPort, udpPort] = [await freePort(), await freePort(), await freePort()];
    writeFileSync(
      join(dir, 'livekit.yaml'),
      [
        `port: ${port}`,
        'bind_addresses: ["127.0.0.1"]',
        'rtc:',
        `  tcp_port: ${tcpPort}`,
        `  udp_port: ${udpPort}`,
        '  node_ip: 127.0.0.1',
        '  use_external_ip: false',
        'keys:',
        `  ${KEY}: ${SECRET}`,
        'room:',
        '  auto_create: false',
        'logging:',
        '  level: warn',
      ].join('\n'),
    );
    livekit = spawn(LIVEKIT_BINARY, ['--config', join(dir, 'livekit.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
    livekit.stdout!.on('data', (d) => output.push(String(d)));
    livekit.stderr!.on('data', (d) => output.push(String(d)));
    livekitUrl = `ws://127.0.0.1:${port}`;
    await waitFor('LiveKit answering', async () => livekit.exitCode === null && (await fetch(`http://127.0.0.1:${port}/`).then((r) => r.ok, () => false)), 30_000);

    fed = await startFakeMatrixFederation({ tls: selfSignedLoopbackCert() });
    fed.addToken('tok-alice', `@alice:${fed.authority}`);
    remote = await startFakeMatrixFederation({ tls: selfSignedLoopbackCert() });
    remote.addToken('tok-remote', `@remote:${remote.authority}`);
    const bind = await loopbackBind();
    daemon = await spawnBareDaemon(
      {
        LIVEKIT_URL: livekitUrl,
        LIVEKIT_KEY: KEY,
        LIVEKIT_SECRET: SECRET,
        LIVEKIT_FULL_ACCESS_HOMESERVERS: fed.authority,
        LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'YES_I_KNOW_WHAT_I_AM_DOING',
        LIVEKIT_JWT_BIND: bind.bind,
        LIVEKIT_LOG_LEVEL: 'warn',
        SIDECAR_STORE: `sqlite:${join(dir, 'store.db')}`,
        // The restricted user's homeserver is on loopback too; a restricted server must otherwise be public.
        SIDECAR_ALLOW_PRIVATE_ADDRESSES: 'true',
      },
      bind.url,
    );
  }, 60_000);

  afterAll(async () => {
    await daemon?.stop();
    await fed?.close();
    await remote?.close();
    if (livekit && livekit.exitCode === null) {
      livekit.kill('SIGTERM');
      await new Promise((r) => livekit.once('exit', r));
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const post = async (path: string, body: unknown) => {
    const res = await fetch(daemon.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as { url: string; jwt: string } };
  };
  /** What LiveKit says to a client that connects with this token: 200 "success", 404 no room, 401 bad token. */
  const validate = async (jwt: string) => {
    const res = await fetch(`${livekitUrl.replace(/^ws/, 'http')}/rtc/validate?access_token=${jwt}`);
    return [res.status, (await res.text()).split(':')[0]];
  };
  const getToken = (slot: string, token: string, server: string, user: string) =>
    post('/get_token', { room_id: ROOM_ID, slot_id: slot, openid_token: { access_token: token, matrix_server_name: server }, member: { id: 'm1', claimed_user_id: user, claimed_device_id: 'DEV' } });

  it("refuses a restricted user's token while the room does not exist, and accepts it once a full-access user's request created the room", async () => {
    const slot = 'm.call#first';
    const restricted = await getToken(slot, 'tok-remote', remote.authority, `@remote:${remote.authority}`);
    expect(restricted.status).toBe(200);
    expect(restricted.json.url).toBe(livekitUrl);
    expect(await validate(restricted.json.jwt)).toEqual([404, 'requested room does not exist']);

    const full = await getToken(slot, 'tok-alice', fed.authority, `@alice:${fed.authority}`);
    expect(full.status).toBe(200);
    expect(await validate(full.json.jwt)).toEqual([200, 'success']);
    expect(await validate(restricted.json.jwt)).toEqual([200, 'success']);

    const rooms = await new RoomServiceClient(livekitUrl, KEY, SECRET).listRooms([liveKitRoomName(ROOM_ID, slot)]);
    expect(rooms.map((r) => [r.name, r.emptyTimeout, r.departureTimeout])).toEqual([[liveKitRoomName(ROOM_ID, slot), 300, 20]]);
  });

  it('issues /sfu/get tokens LiveKit accepts for the legacy room it created', async () => {
    const res = await post('/sfu/get', { room: ROOM_ID, openid_token: { access_token: 'tok-alice', matrix_server_name: fed.authority }, device_id: 'DEV' });
    expect(res.status).toBe(200);
    expect(await validate(res.json.jwt)).toEqual([200, 'success']);
    const rooms = await new RoomServiceClient(livekitUrl, KEY, SECRET).listRooms([legacyRoomName(ROOM_ID)]);
    expect(rooms).toHaveLength(1);
  });
});
