import { execFileSync, spawnSync } from 'node:child_process';
import { createConnection, createServer, type Server } from 'node:net';

/**
 * A network namespace joined to this one by a veth pair of its own: a participant inside it reaches the host side's
 * address only, and `cut()` sets its end of the link down inside the namespace, so packets just stop and no TCP reset
 * or ICMP error reaches either side (a pulled cable, not a closed socket). Addresses are a /30 of 10.213.0.0/16 that
 * exist only on this pair.
 */
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

export function netnsUsable(): boolean {
  return process.getuid?.() === 0 && spawnSync('ip', ['-V']).status === 0;
}

export function createNetns(): Netns {
  const n = process.pid % 250;
  const name = `fsrig${process.pid}`;
  const host = `fsh${process.pid}`;
  const peer = `fsp${process.pid}`;
  const hostIp = `10.213.${n}.1`;
  const nsIp = `10.213.${n}.2`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ip('netns', 'add', name);
  ip('link', 'add', host, 'type', 'veth', 'peer', 'name', peer);
  ip('link', 'set', peer, 'netns', name);
  ip('addr', 'add', `${hostIp}/30`, 'dev', host);
  ip('link', 'set', host, 'up');
  ip('netns', 'exec', name, 'ip', 'addr', 'add', `${nsIp}/30`, 'dev', peer);
  ip('netns', 'exec', name, 'ip', 'link', 'set', peer, 'up');
  ip('netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up');
  const servers: Server[] = [];
  return {
    name,
    hostIp,
    nsIp,
    wrap: ['ip', 'netns', 'exec', name],
    cut: () => ip('netns', 'exec', name, 'ip', 'link', 'set', peer, 'down'),
    restore: () => ip('netns', 'exec', name, 'ip', 'link', 'set', peer, 'up'),
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
