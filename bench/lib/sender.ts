import { Pool } from 'undici';
import { hrNow, sleep } from './stats.js';

export interface PacedResult {
  /** Per request: when it was handed to the connection pool, when its answer arrived (ms epoch), its status. */
  sentAt: Float64Array;
  ackedAt: Float64Array;
  status: Uint16Array;
  /** From the first send to the last one. */
  sendSpanMs: number;
}

/**
 * Posts pre-signed webhooks at a fixed rate (open loop: a slow answer does not delay the next send) over a pool of
 * keep-alive connections, the way LiveKit's notifier does.
 */
export async function sendPaced(url: string, requests: ReadonlyArray<{ body: string; authorization: string }>, perSecond: number, connections = 32): Promise<PacedResult> {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections, pipelining: 1, keepAliveTimeout: 30_000 });
  const n = requests.length;
  const sentAt = new Float64Array(n);
  const ackedAt = new Float64Array(n);
  const status = new Uint16Array(n);
  const inflight: Array<Promise<void>> = [];
  const start = hrNow();
  let i = 0;
  try {
    while (i < n) {
      const due = Math.min(n, Math.floor(((hrNow() - start) * perSecond) / 1000) + 1);
      for (; i < due; i++) {
        const r = requests[i]!;
        const k = i;
        sentAt[k] = hrNow();
        inflight.push(
          pool
            .request({ path: u.pathname, method: 'POST', headers: { 'content-type': 'application/webhook+json', authorization: r.authorization, 'user-agent': 'LiveKit' }, body: r.body })
            .then(async (res) => {
              await res.body.dump();
              ackedAt[k] = hrNow();
              status[k] = res.statusCode;
            })
            .catch(() => {
              ackedAt[k] = hrNow();
              status[k] = 0;
            }),
        );
      }
      if (i < n) await sleep(1);
    }
    const sendSpanMs = sentAt[n - 1]! - sentAt[0]!;
    await Promise.all(inflight);
    return { sentAt, ackedAt, status, sendSpanMs };
  } finally {
    await pool.close();
  }
}
