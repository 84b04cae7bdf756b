import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { parseSentinelUrl } from '../../src/store/sentinel-url.js';

describe('SIDECAR_STORE with Redis Sentinel (issue 18)', () => {
  it('reads the sentinels, the master name, the password and the database', () => {
    expect(parseSentinelUrl('redis+sentinel://10.0.0.1:26379,sentinel-b,[::1]:26380/mymaster')).toEqual({
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: 'sentinel-b', port: 26379 },
        { host: '::1', port: 26380 },
      ],
      name: 'mymaster',
    });
    expect(parseSentinelUrl('redis+sentinel://:s%40cret@h:1/m/2')).toEqual({ sentinels: [{ host: 'h', port: 1 }], name: 'm', password: 's@cret', db: 2 });
    expect(parseSentinelUrl('redis://127.0.0.1:6379')).toBeNull();
  });

  it('refuses a malformed address with a clear error that never shows the password', () => {
    for (const bad of ['redis+sentinel://h:1', 'redis+sentinel://h:99999/m', 'redis+sentinel://h_1:1/m', 'redis+sentinel://:pw-secret@h:1/m/x']) {
      const env = { SIDECAR_STORE: bad, SIDECAR_HOMESERVERS: '*', LIVEKIT_KEYS: 'key1: s3cret-one' };
      let message = '';
      try {
        loadConfig(env, { dev: false });
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message, bad).toContain('SIDECAR_STORE');
      expect(message).not.toContain('pw-secret');
    }
    const ok = loadConfig({ SIDECAR_STORE: 'redis+sentinel://127.0.0.1:26379/mymaster', SIDECAR_HOMESERVERS: '*', LIVEKIT_KEYS: 'key1: s3cret-one' }, { dev: false });
    expect(ok.store).toEqual({ kind: 'redis', url: 'redis+sentinel://127.0.0.1:26379/mymaster' });
  });
});
