/**
 * The test suite's fake homeserver in a process of its own, so that the daemon's calls are received on an event
 * loop that neither the daemon nor the load generator shares. Driven over IPC by `RemoteHomeserver`.
 */
import type { CallRecord } from '../../test/fakes/homeserver.js';
import { startFakeHomeserver } from '../../test/fakes/homeserver.js';
import { hrNow } from './stats.js';

export type ToChild =
  | { type: 'create'; count: number; timeoutSeconds: number; concurrency: number }
  | { type: 'report' }
  | { type: 'close' };

export interface Receipt {
  handle: string;
  op: string;
  status: number;
  /** Receipt time (ms epoch, sub-millisecond). */
  at: number;
}

export type FromChild = { type: 'ready'; url: string } | { type: 'created'; tokens: string[] } | { type: 'report'; receipts: Receipt[] } | { type: 'error'; message: string };

const send = (m: FromChild): void => void process.send!(m);

const hs = await startFakeHomeserver();
const receipts: Receipt[] = [];
// The fake logs each call once it has answered it; the receipt is stamped there (its body is read, its effect done).
const calls = hs.calls as CallRecord[];
calls.push = (...items: CallRecord[]): number => {
  const at = hrNow();
  for (const c of items) if (c.op !== 'create') receipts.push({ handle: c.handle ?? '', op: c.op, status: c.status, at });
  return Array.prototype.push.apply(calls, items);
};

// A timeline event rather than a state event: the fake re-checks every pending future after each state event it
// sends, which would put its own O(futures) cost into the receipt times.
const member = { type: 'org.matrix.msc3401.call.member', content: { membership: 'left' } };

async function create(count: number, timeoutSeconds: number, concurrency: number): Promise<string[]> {
  const tokens = new Array<string>(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < count; i = next++) {
        const r = await hs.createFuture({ roomId: `!bench${i % 1000}:hs`, timeoutSeconds, onTimeout: member, actions: { leave: member, connection_lost: member } });
        tokens[i] = r.future_token;
      }
    }),
  );
  return tokens;
}

process.on('message', (m: ToChild) => {
  void (async () => {
    try {
      if (m.type === 'create') send({ type: 'created', tokens: await create(m.count, m.timeoutSeconds, m.concurrency) });
      else if (m.type === 'report') send({ type: 'report', receipts });
      else if (m.type === 'close') {
        await hs.close();
        process.exit(0);
      }
    } catch (err) {
      send({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  })();
});
process.on('disconnect', () => process.exit(0));
send({ type: 'ready', url: hs.url });
