import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './daemon.js';

/**
 * Network namespaces for partition tests: each replica in its own namespace, linked to a hub namespace (Redis) by a
 * veth pair with addresses only inside these namespaces. The test process reaches into them only through Unix
 * sockets (a namespace does not separate the file system), bridged to loopback TCP by small forwarders.
 */
export function netnsAvailable(): boolean {
  return process.getuid?.() === 0 && spawnSync('ip', ['netns', 'list']).status === 0;
}

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

/** Copies bytes between a listening address and a connecting one: `tcp:<port>` (loopback) or `unix:<path>`. */
const FORWARDER = `const net = require('node:net');
const [, listen, target] = process.argv;
const at = (a) => (a.startsWith('tcp:') ? { host: a.split(':')[2] ?? '127.0.0.1', port: Number(a.split(':')[1]) } : { path: a.slice(5) });
net.createServer((s) => {
  const c = net.connect(at(target));
  s.pipe(c); c.pipe(s);
  s.on('error', () => c.destroy()); c.on('error', () => s.destroy());
  s.on('close', () => c.destroy()); c.on('close', () => s.destroy());
}).listen(at(listen), () => console.log('ready'));`;

export interface Namespaces {
  /** Namespace names by role: `hub` and one per replica. */
  names: Record<string, string>;
  /** The hub's address on a replica's link, and the replica's own. */
  hubAddress(replica: string): string;
  dir: string;
  /** Runs a command inside a namespace. */
  spawnIn(ns: string, cmd: string, args: string[], opts?: { env?: NodeJS.ProcessEnv }): ChildProcess;
  /** A forwarder inside `ns` (or here with null), listening on `listen` and connecting to `target`. */
  forward(ns: string | null, listen: string, target: string): Promise<void>;
  /** Cuts (or heals) a replica's only link: the replica and its processes keep running. */
  cut(replica: string): void;
  heal(replica: string): void;
  destroy(): void;
}

export function createNamespaces(replicas: string[]): Namespaces {
  const tag = randomBytes(3).toString('hex');
  const names: Record<string, string> = { hub: `fs18-${tag}-hub` };
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-netns-'));
  const procs: ChildProcess[] = [];
  const created: string[] = [];
  const add = (ns: string) => {
    ip('netns', 'add', ns);
    created.push(ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  };
  try {
    add(names.hub!);
    replicas.forEach((r, i) => {
      names[r] = `fs18-${tag}-${i}`;
      add(names[r]!);
      const [outer, inner] = [`fh${tag}${i}`, `fr${tag}${i}`];
      ip('link', 'add', outer, 'netns', names.hub!, 'type', 'veth', 'peer', 'name', inner, 'netns', names[r]!);
      ip('-n', names.hub!, 'addr', 'add', `10.218.${i + 1}.1/24`, 'dev', outer);
      ip('-n', names[r]!, 'addr', 'add', `10.218.${i + 1}.2/24`, 'dev', inner);
      ip('-n', names.hub!, 'link', 'set', outer, 'up');
      ip('-n', names[r]!, 'link', 'set', inner, 'up');
    });
  } catch (err) {
    for (const ns of created) spawnSync('ip', ['netns', 'del', ns]);
    throw err;
  }
  const linkOf = (replica: string) => `fr${tag}${replicas.indexOf(replica)}`;
  const spawnIn = (ns: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}) => {
    const p = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(p);
    return p;
  };
  return {
    names,
    dir,
    hubAddress: (replica) => `10.218.${replicas.indexOf(replica) + 1}.1`,
    spawnIn,
    async forward(ns, listen, target) {
      const p = ns ? spawnIn(ns, process.execPath, ['-e', FORWARDER, listen, target]) : spawn(process.execPath, ['-e', FORWARDER, listen, target], { stdio: ['ignore', 'pipe', 'pipe'] });
      if (!ns) procs.push(p);
      const out: string[] = [];
      p.stdout!.on('data', (d) => out.push(String(d)));
      p.stderr!.on('data', (d) => out.push(String(d)));
      for (let i = 0; !out.join('').includes('ready'); i++) {
        if (p.exitCode !== null || i > 200) throw new Error(`forwarder ${listen} -> ${target} did not start: ${out.join('')}`);
        await sleep(25);
      }
    },
    cut: (replica) => ip('-n', names[replica]!, 'link', 'set', linkOf(replica), 'down'),
    heal: (replica) => ip('-n', names[replica]!, 'link', 'set', linkOf(replica), 'up'),
    destroy() {
      for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      for (const ns of created) spawnSync('ip', ['netns', 'del', ns]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
