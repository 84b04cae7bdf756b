import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import type { HomeserverAllowList } from '../config.js';

/** Ranges a participant-supplied URL must not reach: loopback, private, link-local (cloud metadata), CGNAT, ... */
const PRIVATE_RANGES = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  PRIVATE_RANGES.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
  ['64:ff9b::', 96],
] as const) {
  PRIVATE_RANGES.addSubnet(net, prefix, 'ipv6');
}

export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return PRIVATE_RANGES.check(address, 'ipv4');
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return PRIVATE_RANGES.check(mapped[1]!, 'ipv4');
    return PRIVATE_RANGES.check(address, 'ipv6');
  }
  return true;
}

export class AddressRefusedError extends Error {
  readonly code = 'E_ADDRESS_REFUSED';
  constructor(message: string) {
    super(message);
    this.name = 'AddressRefusedError';
  }
}

export interface GuardPolicy {
  allow: HomeserverAllowList;
  allowPrivateAddresses: boolean;
  allowHttp: boolean;
}

/**
 * May we send a participant's token to this base URL at all? Origins listed explicitly may be http and private;
 * `*` admits any https origin whose addresses are public (checked again at connect time by `guardedLookup`).
 */
export function checkHomeserverUrl(baseUrl: string, policy: GuardPolicy): string | null {
  let u: URL;
  try {
    u = new URL(baseUrl);
  } catch {
    return 'not a URL';
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return 'only http(s) homeservers are supported';
  if (u.username || u.password) return 'credentials in the homeserver URL are not allowed';
  const listed = policy.allow.origins.has(u.origin);
  if (!listed && !policy.allow.any) return 'this homeserver is not in SIDECAR_HOMESERVERS';
  if (u.protocol === 'http:' && !listed && !policy.allowHttp) return 'homeservers must use https';
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (!listed && !policy.allowPrivateAddresses && isIP(host) && isPrivateAddress(host)) return 'private and loopback addresses are refused';
  return null;
}

/** Resolves every address of a host name; `dns.lookup` by default, replaced in tests. */
export type AddressResolver = (
  hostname: string,
  options: LookupAllOptions,
  callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void,
) => void;

/**
 * A `dns.lookup` replacement for outgoing connections: resolves, then refuses private addresses unless the host
 * was listed explicitly or private addresses are allowed. Used by the connection pool, so it also covers
 * DNS answers that change after the URL was checked.
 */
export function guardedLookup(policy: GuardPolicy, resolve: AddressResolver = dnsLookup) {
  const listedHosts = new Set([...policy.allow.origins].map((o) => new URL(o).hostname.replace(/^\[|\]$/g, '')));
  return (
    hostname: string,
    options: { all?: boolean; family?: number } & Record<string, unknown>,
    callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
  ): void => {
    resolve(hostname, { ...options, all: true }, (err, list) => {
      if (err) return callback(err, '', 0);
      if (!policy.allowPrivateAddresses && !listedHosts.has(hostname)) {
        const bad = list.find((a) => isPrivateAddress(a.address));
        if (bad) return callback(new AddressRefusedError(`${hostname} resolves to a private or loopback address`) as NodeJS.ErrnoException, '', 0);
      }
      if (options.all) return callback(null, list);
      const first = list[0];
      if (!first) return callback(new Error(`no address for ${hostname}`) as NodeJS.ErrnoException, '', 0);
      callback(null, first.address, first.family);
    });
  };
}
