import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import type { HomeserverAllowList } from '../config.js';

/**
 * Ranges a participant-supplied URL must not reach: loopback, private, link-local (cloud metadata), CGNAT, ...
 * IPv6 transition prefixes that can carry an IPv4 address to a gateway (SIIT, local-use NAT64, 6to4, Teredo,
 * IPv4-compatible) are refused whole: no homeserver needs one, and a gateway would take them to internal addresses.
 */
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
  ['::', 96],
  ['::1', 128],
  ['::ffff:0:0:0', 96],
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001::', 32],
  ['2001:db8::', 32],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  PRIVATE_RANGES.addSubnet(net, prefix, 'ipv6');
}

/**
 * Cloud instance metadata services (AWS, GCP, Azure, OpenStack, Oracle: 169.254.169.254 and the rest of link-local;
 * AWS ECS 169.254.170.2 and IPv6 fd00:ec2::254; Alibaba 100.100.100.200; Azure's WireServer 168.63.129.16). Refused
 * even where private addresses are allowed; only an origin the operator lists explicitly may be one.
 */
const METADATA_RANGES = new BlockList();
METADATA_RANGES.addSubnet('169.254.0.0', 16, 'ipv4');
METADATA_RANGES.addAddress('100.100.100.200', 'ipv4');
METADATA_RANGES.addAddress('168.63.129.16', 'ipv4');
METADATA_RANGES.addSubnet('fd00:ec2::', 32, 'ipv6');

export function isPrivateAddress(address: string): boolean {
  if (address.includes('%')) return true;
  const family = isIP(address);
  if (family === 4) return PRIVATE_RANGES.check(address, 'ipv4');
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return PRIVATE_RANGES.check(mapped[1]!, 'ipv4');
    return PRIVATE_RANGES.check(address, 'ipv6');
  }
  return true;
}

/** Is this a cloud metadata address, also in an IPv6 form that embeds one (mapped, SIIT, NAT64, 6to4, Teredo)? */
export function isMetadataAddress(address: string): boolean {
  const bare = address.replace(/%.*$/, '');
  const family = isIP(bare);
  if (family === 4) return METADATA_RANGES.check(bare, 'ipv4');
  if (family !== 6) return false;
  if (METADATA_RANGES.check(bare, 'ipv6')) return true;
  return embeddedIPv4(bare).some((v4) => METADATA_RANGES.check(v4, 'ipv4'));
}

/** The eight 16-bit groups of a valid IPv6 address (a dotted IPv4 tail included). */
export function ipv6Groups(address: string): number[] {
  let s = address;
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    s = `${s.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = s.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail === undefined ? null : tail ? tail.split(':') : [];
  const groups = t === null ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.map((g) => parseInt(g, 16));
}

/** IPv4 addresses an IPv6 address carries by a transition mechanism (RFC 4291, 6052, 6145, 3056, 4380). */
function embeddedIPv4(address: string): string[] {
  const g = ipv6Groups(address);
  const v4 = (hi: number, lo: number): string => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zeros = (from: number, to: number): boolean => g.slice(from, to).every((x) => x === 0);
  const found: string[] = [];
  if (zeros(0, 5) && (g[5] === 0xffff || g[5] === 0)) found.push(v4(g[6]!, g[7]!));
  if (zeros(0, 4) && g[4] === 0xffff && g[5] === 0) found.push(v4(g[6]!, g[7]!));
  if (g[0] === 0x64 && g[1] === 0xff9b) found.push(v4(g[6]!, g[7]!));
  if (g[0] === 0x2002) found.push(v4(g[1]!, g[2]!));
  if (g[0] === 0x2001 && g[1] === 0) found.push(v4(g[2]!, g[3]!), v4(~g[6]! & 0xffff, ~g[7]! & 0xffff));
  return found;
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
  if (!listed && isIP(host) && isMetadataAddress(host)) return 'cloud metadata addresses are refused unless listed explicitly';
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
 * was listed explicitly or private addresses are allowed, and cloud metadata addresses unless the host was listed.
 * Used by the connection pool, so it also covers DNS answers that change after the URL was checked.
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
      if (!listedHosts.has(hostname)) {
        if (list.some((a) => isMetadataAddress(a.address))) return callback(new AddressRefusedError(`${hostname} resolves to a cloud metadata address`) as NodeJS.ErrnoException, '', 0);
        if (!policy.allowPrivateAddresses && list.some((a) => isPrivateAddress(a.address))) {
          return callback(new AddressRefusedError(`${hostname} resolves to a private or loopback address`) as NodeJS.ErrnoException, '', 0);
        }
      }
      if (options.all) return callback(null, list);
      const first = list[0];
      if (!first) return callback(new Error(`no address for ${hostname}`) as NodeJS.ErrnoException, '', 0);
      callback(null, first.address, first.family);
    });
  };
}
