import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './daemon.js';

/**
 * Network namespaces joined by veth pairs whose addresses exist only on those pairs, so nothing a test sends in them
 * can leave the machine. A link set down inside a namespace is a pulled cable: packets just stop, and no TCP reset or
 * ICMP error reaches either side. Two shapes: `createNamespaces` (replicas each linked to a hub, for partitions) and
 * `createNetns` (one namespace linked to this one, for a participant whose network is cut).
 */
export function netnsAvailable(): boolean {
  return process.getuid?.() === 0 && spawnSync('ip', ['netns', 'list']).status === 0;
}

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

/** `ip` inside a namespace, or here for null. */
const ipIn = (ns: string | null, ...args: string[]): void => (ns ? ip('-n', ns, ...args) : ip(...args));

function addNamespace(ns: string): void {
  ip('netns', 'add', ns);
  ipIn(ns, 'link', 'set', 'lo', 'up');
}

interface LinkEnd {
  /** The namespace, or null for this one. */
  ns: string | null;
  dev: string;
  /** Address with prefix length, e.g. `10.218.1.1/24`. */
  address: string;
}

/** A veth pair between two namespaces, each end with its address and up. */
function addLink(a: LinkEnd, b: LinkEnd): void {
  ip('link', 'add', a.dev, ...(a.ns ? ['netns', a.ns] : []), 'type', 'veth', 'peer', 'name', b.dev, ...(b.ns ? ['netns', b.ns] : []));
  for (const end of [a, b]) {
    ipIn(end.ns, 'addr', 'add', end.address, 'dev', end.dev);
    ipIn(end.ns, 'link', 'set', end.dev, 'up');
  }
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
    addNamespace(ns);
    created.push(ns);
  };
  try {
    add(names.hub!);
    replicas.forEach((r, i) => {
      names[r] = `fs18-${tag}-${i}`;
      add(names[r]!);
      addLink({ ns: names.hub!, dev: `fh${tag}${i}`, address: `10.218.${i + 1}.1/24` }, { ns: names[r]!, dev: `fr${tag}${i}`, address: `10.218.${i + 1}.2/24` });
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

/** One namespace joined to this one by a veth pair of its own (a /30 of 10.213.0.0/16). */
export interface Netns {
  name: string;
  hostIp: string;
  nsIp: string;
  /** Prefix for spawn: run a command inside the namespace. */
  wrap: string[];
  cut(): void;
  restore(): void;
  /** Forwards hostIp:<port> to 127.0.0.1:<target>, for loopback-only servers the participant must reach. */
  forward(target: number): Promise<{ url: string; server: Server }>;
  remove(): void;
}

export function createNetns(): Netns {
  const n = process.pid % 250;
  const name = `fsrig${process.pid}`;
  const host = `fsh${process.pid}`;
  const peer = `fsp${process.pid}`;
  const hostIp = `10.213.${n}.1`;
  const nsIp = `10.213.${n}.2`;
  addNamespace(name);
  try {
    addLink({ ns: null, dev: host, address: `${hostIp}/30` }, { ns: name, dev: peer, address: `${nsIp}/30` });
  } catch (err) {
    spawnSync('ip', ['netns', 'del', name]);
    throw err;
  }
  const servers: Server[] = [];
  return {
    name,
    hostIp,
    nsIp,
    wrap: ['ip', 'netns', 'exec', name],
    cut: () => ipIn(name, 'link', 'set', peer, 'down'),
    restore: () => ipIn(name, 'link', 'set', peer, 'up'),
    async forward(target) {
      const server = createServer((sock) => {
        const up = createConnection(target, '127.0.0.1');
        sock.pipe(up).pipe(sock);
        sock.on('error', () => up.destroy());
        up.on('error', () => sock.destroy());
      });
      servers.push(server);
      await new Promise<void>((r) => server.listen(0, hostIp, r));
      const port = (server.address() as { port: number }).port;
      return { url: `http://${hostIp}:${port}`, server };
    },
    remove() {
      for (const s of servers) s.close();
      // Deleting the namespace deletes its veth end, and with it the pair.
      spawnSync('ip', ['netns', 'del', name]);
      spawnSync('ip', ['link', 'del', host]);
    },
  };
}
