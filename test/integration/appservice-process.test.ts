/**
 * Application-service mode as operators start it: lk-jwt-service's environment with the registration file that
 * `futures-sidecar registration` printed, the daemon as its own process.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loopbackBind, requestJson, spawnBareDaemon, type BareDaemon } from '../helpers/lk-jwt.js';

const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-as-'));
const running: BareDaemon[] = [];
afterAll(async () => {
  for (const d of running) await d.stop();
  rmSync(dir, { recursive: true, force: true });
});

const BASE = { PATH: process.env.PATH ?? '/usr/bin:/bin', LIVEKIT_URL: 'ws://127.0.0.1:1', LIVEKIT_KEY: 'lkkey', LIVEKIT_SECRET: 'lk-secret-0123456789abcdef0123456789' };

describe('application-service mode from the registration file', { timeout: 180_000 }, () => {
  it('starts with the file the registration command printed and answers the homeserver with its hs_token only', async () => {
    const { bind, url } = await loopbackBind();
    const printed = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'registration', '--url', url, '--server-name', 'hs.test'], { env: { PATH: BASE.PATH }, encoding: 'utf8' });
    expect(printed.status, printed.stderr).toBe(0);
    const file = join(dir, 'registration.yaml');
    writeFileSync(file, printed.stdout);
    const reg = parse(printed.stdout) as { as_token: string; hs_token: string };
    const d = await spawnBareDaemon(
      { ...BASE, LIVEKIT_JWT_BIND: bind, LIVEKIT_AS_REGISTRATION_FILE: file, LIVEKIT_HS_SERVER_NAME: 'hs.test', SIDECAR_STORE: `sqlite:${join(dir, 'as.db')}`, LIVEKIT_LOG_LEVEL: 'warn' },
      url,
    );
    running.push(d);
    const ping = (token: string) => requestJson(`${url}/_matrix/app/v1/ping`, 'POST', { transaction_id: 'x' }, { authorization: `Bearer ${token}` });
    expect((await ping(reg.hs_token)).status).toBe(200);
    const wrong = await ping(reg.as_token);
    expect([wrong.status, wrong.json?.errcode]).toEqual([401, 'M_UNKNOWN_TOKEN']);
    expect(d.output.join('\n')).not.toContain(reg.hs_token);
  });

  it('refuses to start with part of the settings, naming what is missing', () => {
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      env: { ...BASE, LIVEKIT_FULL_ACCESS_HOMESERVERS: 'hs.test', LIVEKIT_AS_TOKEN: 'only-this-one' },
      encoding: 'utf8',
    });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/all or none\); missing: LIVEKIT_HS_TOKEN \(or LIVEKIT_AS_REGISTRATION_FILE\), LIVEKIT_HS_SERVER_NAME/);
    expect(run.stderr).not.toContain('only-this-one');
  });
});
