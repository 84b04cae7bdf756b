import type { AddressInfo, Server } from 'node:net';
import { Server as TlsServer } from 'node:tls';

/** Listens on a free loopback port and returns the server's base URL (https for a TLS server). */
export async function listenOnLoopback(server: Server): Promise<string> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  return `${server instanceof TlsServer ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
