import type { LookupAddress } from 'node:dns';
import type { AddressResolver } from '../../src/homeserver/address-guard.js';

/** A `dns.lookup` stand-in that answers from a table (ENOTFOUND otherwise) and records what it was asked. */
export function fakeResolver(table: Record<string, string[]>): AddressResolver & { asked: string[] } {
  const asked: string[] = [];
  const resolve = ((hostname, _options, callback) => {
    asked.push(hostname);
    const addresses = table[hostname];
    if (!addresses) {
      const err = Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
      setImmediate(() => callback(err, []));
      return;
    }
    const list: LookupAddress[] = addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    setImmediate(() => callback(null, list));
  }) as AddressResolver & { asked: string[] };
  resolve.asked = asked;
  return resolve;
}
