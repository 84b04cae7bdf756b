import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseRegistrationArgs, registrationDocument } from '../../src/appservice/registration.js';

describe('futures-sidecar registration', () => {
  it('prints the keys Synapse reads, with the tokens of the environment', () => {
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'registration', '--url', 'http://sidecar.internal:8089/'], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LIVEKIT_AS_TOKEN: 'as-secret', LIVEKIT_HS_TOKEN: 'hs-secret', LIVEKIT_HS_SERVER_NAME: 'hs.example' },
      encoding: 'utf8',
    });
    expect(run.status, run.stderr).toBe(0);
    const doc = parse(run.stdout) as Record<string, unknown>;
    expect(doc).toMatchObject({
      url: 'http://sidecar.internal:8089',
      as_token: 'as-secret',
      hs_token: 'hs-secret',
      rate_limited: false,
      namespaces: { users: [{ exclusive: false, regex: '@.*:hs\\.example' }] },
      'io.element.msc4512.proxy_prefix': 'rtc/livekit',
      'io.element.msc4512.proxy_url': 'http://sidecar.internal:8089',
      'io.element.msc4502.scopes': ['urn:matrix:client:io.element.msc4502:rooms:is_joined'],
    });
    expect(typeof doc.sender_localpart).toBe('string');
    expect(new RegExp(`^${(doc.namespaces as { users: Array<{ regex: string }> }).users[0]!.regex}$`).test('@alice:hs.example')).toBe(true);
    expect(new RegExp(`^${(doc.namespaces as { users: Array<{ regex: string }> }).users[0]!.regex}$`).test('@alice:hsXexample')).toBe(false);
  });

  it('generates distinct tokens when none are set, and names what is missing', () => {
    const input = parseRegistrationArgs(['--url=http://a:1', '--server-name', 'hs.example'], {});
    if (Array.isArray(input)) throw new Error(input.join());
    const [one, two] = [registrationDocument(input), registrationDocument(input)];
    expect(one.as_token).not.toBe(one.hs_token);
    expect(one.as_token).not.toBe(two.as_token);
    expect(String(one.as_token).length).toBeGreaterThanOrEqual(40);
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'registration'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, encoding: 'utf8' });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/--url is required/);
    expect(run.stderr).toMatch(/--server-name \(or LIVEKIT_HS_SERVER_NAME\) is required/);
    expect(parseRegistrationArgs(['--url', 'ftp://x', '--server-name', 'a'], {})).toEqual(['--url must be an http(s) URL, got "ftp://x"']);
  });
});
