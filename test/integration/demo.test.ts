import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

/** `npm run demo` as a newcomer runs it: its own process, its own exit code, nothing prepared beforehand. */
describe('npm run demo', () => {
  it('plays the scripted call, shows every kind of lifecycle event, passes its own checks and exits 0 by itself', async () => {
    const started = Date.now();
    const proc = spawn(process.execPath, ['--import', 'tsx', 'demo/run.ts'], {
      cwd: process.cwd(),
      env: { ...process.env, FORCE_COLOR: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d) => (out += String(d)));
    proc.stderr.on('data', (d) => (out += String(d)));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
    const seconds = (Date.now() - started) / 1000;

    expect(code, out).toBe(0);
    expect(seconds).toBeLessThan(40);
    // Piped output: the progress comes as plain lines, never as terminal control sequences.
    expect(out).toMatch(/^progress: \[1\/\d+\]/m);
    expect(out).not.toContain('\u001b[');
    for (const line of [
      /alice\s+registered with the sidecar as dg_/,
      /bob\s+connected: the sidecar saw the LiveKit session/,
      /refreshed by the sidecar/,
      /frank\s+refreshed the future himself/,
      /frank\s+handed over to the sidecar/,
      /bob\s+connection lost: grace of/,
      /carol\s+reconnected within the grace/,
      /alice\s+fired leave -> sent \(why: left on purpose\)/,
      /bob\s+fired connection_lost -> sent \(why: did not reconnect within the grace\)/,
      /erin\s+fired connection_lost -> sent \(why: never joined before the join deadline\)/,
      /dave\s+revoked/,
      /homeserver\s+alice: sent an empty membership \(left the call\) \(action leave\)/,
    ]) {
      expect(out, `timeline line ${line}`).toMatch(line);
    }
    expect(out).toMatch(/^who\s+dialect\s+created with/m);
    expect(out).not.toMatch(/FAIL|WRONG|EXPIRED/);
    expect(out).toContain('demo passed');
  }, 90_000);
});
