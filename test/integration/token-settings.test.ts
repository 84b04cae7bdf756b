/**
 * The token routes' settings that lk-jwt-service's defaults leave off: LIVEKIT_CAN_UPDATE_OWN_METADATA=true and our
 * SIDECAR_RESTRICTED_USERS_CAN_PUBLISH=true (legacy federated calls), over real HTTP in this process.
 */
import { TokenVerifier } from 'livekit-server-sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RoomCreator } from '../../src/compat/livekit-token.js';
import { startFakeMatrixFederation, type FakeMatrixFederation } from '../fakes/matrix-federation.js';
import { API_KEY, API_SECRET, api, startDaemon, type RunningDaemon } from '../helpers/daemon.js';

describe('token settings', () => {
  let fed: FakeMatrixFederation;
  let d: RunningDaemon;
  const created: string[] = [];
  const rooms: RoomCreator = {
    async createRoom(o) {
      created.push(o.name);
      return {};
    },
  };

  beforeAll(async () => {
    fed = await startFakeMatrixFederation({ tokens: { 'tok-a': '@alice:example.com', 'tok-r': '@rem:remote.example' } });
    d = await startDaemon(
      {
        SIDECAR_HOMESERVERS: 'example.com',
        SIDECAR_FEDERATION_URL_OVERRIDES: `example.com=${fed.url},remote.example=${fed.url}`,
        LIVEKIT_CAN_UPDATE_OWN_METADATA: 'true',
        SIDECAR_RESTRICTED_USERS_CAN_PUBLISH: 'true',
        LOG_LEVEL: 'silent',
      },
      { roomCreator: rooms },
    );
  });
  afterAll(async () => {
    await d?.stop();
    await fed?.close();
  });

  const body = (token: string, server: string) => ({ room: '!r:example.com', openid_token: { access_token: token, matrix_server_name: server }, device_id: 'DEV' });

  it('grants canUpdateOwnMetadata, and publish to restricted users, when set; still never roomCreate or a room for them', async () => {
    const full = await api(d.url, 'POST', '/sfu/get', { body: body('tok-a', 'example.com') });
    const restricted = await api(d.url, 'POST', '/sfu/get', { body: body('tok-r', 'remote.example') });
    expect([full.status, restricted.status]).toEqual([200, 200]);
    const verify = (jwt: string) => new TokenVerifier(API_KEY, API_SECRET).verify(jwt);
    expect((await verify(full.body.jwt)).video).toMatchObject({ canUpdateOwnMetadata: true, canPublish: true, roomCreate: false });
    expect((await verify(restricted.body.jwt)).video).toMatchObject({ canUpdateOwnMetadata: true, canPublish: true, roomCreate: false });
    expect(created).toHaveLength(1);
  });
});
