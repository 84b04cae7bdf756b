import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { waitFor } from '../helpers/daemon.js';
import { NODE22 } from './peers.js';
import type { ParticipantSpec } from './participant.js';

export type { ParticipantSpec };

interface ParticipantEvent {
  ev: string;
  i?: number;
  [key: string]: unknown;
}

export interface ParticipantProcess {
  proc: ChildProcess;
  events: ParticipantEvent[];
  /** Everything else the process printed (library logs), for failure messages. */
  log: string[];
  send(cmd: Record<string, unknown>): void;
  waitEvent(match: (e: ParticipantEvent) => boolean, what: string, timeoutMs?: number): Promise<ParticipantEvent>;
  exited: Promise<number | null>;
}

const SCRIPT = join(import.meta.dirname, 'participant.ts');

/**
 * Participant processes on Node 22 (matrix-js-sdk >= 39 needs it; the suite itself stays on Node 20). `wrap` runs
 * the process through another command first (`ip netns exec NS` for the network scenarios).
 */
export function spawnParticipants(specs: ParticipantSpec[], opts: { wrap?: string[] } = {}): ParticipantProcess {
  const argv = [...(opts.wrap ?? []), NODE22, '--import', 'tsx', SCRIPT];
  const proc = spawn(argv[0]!, argv.slice(1), {
    cwd: join(import.meta.dirname, '..', '..'),
    env: { ...process.env, RIG_PARTICIPANTS: JSON.stringify(specs) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const events: ParticipantEvent[] = [];
  const log: string[] = [];
  let buf = '';
  proc.stdout!.on('data', (d) => {
    buf += String(d);
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.startsWith('@@rig ')) events.push(JSON.parse(line.slice(6)));
      else log.push(line);
    }
  });
  proc.stderr!.on('data', (d) => log.push(String(d)));
  // A participant that closed is gone; a late command to it must not take the suite down with EPIPE.
  proc.stdin!.on('error', () => undefined);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return {
    proc,
    events,
    log,
    exited,
    send: (cmd) => proc.stdin!.write(`${JSON.stringify(cmd)}\n`),
    async waitEvent(match, what, timeoutMs = 60_000) {
      return waitFor(
        what,
        () => {
          const error = events.find((e) => e.ev === 'error');
          if (error) throw new Error(`participant failed: ${String(error.message)}\n${log.slice(-30).join('\n')}`);
          if (proc.exitCode !== null && !events.some(match)) throw new Error(`participant exited (${proc.exitCode})\n${log.slice(-30).join('\n')}`);
          return events.find(match);
        },
        timeoutMs,
        50,
      );
    },
  };
}
