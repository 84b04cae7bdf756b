import { Redis, type RedisOptions } from 'ioredis';
import { parseSentinelUrl } from './sentinel-url.js';

/**
 * A connection to the store: a plain URL directly, a Sentinel address through its sentinels (ioredis asks them for
 * the current primary, and again after a failover).
 */
export function redisClient(url: string, options: RedisOptions): Redis {
  const sentinel = parseSentinelUrl(url);
  if (!sentinel) return new Redis(url, options);
  return new Redis({ ...options, sentinels: sentinel.sentinels, name: sentinel.name, ...(sentinel.username ? { username: sentinel.username } : {}), ...(sentinel.password ? { password: sentinel.password } : {}), ...(sentinel.db !== undefined ? { db: sentinel.db } : {}), failoverDetector: true });
}
