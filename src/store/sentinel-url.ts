// Apart from the connection, so that reading the configuration does not load ioredis (a SQLite daemon never needs it).

/** A Sentinel deployment named in SIDECAR_STORE: `redis+sentinel://[[user]:password@]host:port,host:port/master[/db]`. */
export interface SentinelAddress {
  sentinels: Array<{ host: string; port: number }>;
  name: string;
  username?: string;
  password?: string;
  db?: number;
}

const SENTINEL_SCHEME = 'redis+sentinel://';
const DEFAULT_SENTINEL_PORT = 26379;

/**
 * Reads a Sentinel address; null when `url` is a plain `redis://`/`rediss://` URL. Throws a message fit for the
 * configuration error (never echoing a password) when the address is malformed.
 */
export function parseSentinelUrl(url: string): SentinelAddress | null {
  if (!url.startsWith(SENTINEL_SCHEME)) return null;
  let rest = url.slice(SENTINEL_SCHEME.length);
  let username: string | undefined;
  let password: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const auth = rest.slice(0, at);
    rest = rest.slice(at + 1);
    const colon = auth.indexOf(':');
    username = decodeURIComponent(colon >= 0 ? auth.slice(0, colon) : auth) || undefined;
    password = colon >= 0 ? decodeURIComponent(auth.slice(colon + 1)) || undefined : undefined;
  }
  const [hosts = '', name = '', db, ...extra] = rest.split('/');
  if (!name || extra.length > 0) throw new Error('a Sentinel store is redis+sentinel://host:port,host:port/master-name[/db]');
  if (db !== undefined && !/^\d{1,2}$/.test(db)) throw new Error('the database of a Sentinel store must be a number');
  const sentinels = hosts.split(',').map((entry) => {
    const m = /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(\d{1,5}))?$/i.exec(entry);
    if (!m) throw new Error(`a Sentinel address must be host:port, got ${JSON.stringify(entry)}`);
    const port = m[2] ? Number(m[2]) : DEFAULT_SENTINEL_PORT;
    if (port < 1 || port > 65535) throw new Error(`a Sentinel port must be 1-65535, got ${port}`);
    return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
  });
  return { sentinels, name: decodeURIComponent(name), ...(username ? { username } : {}), ...(password ? { password } : {}), ...(db !== undefined ? { db: Number(db) } : {}) };
}
