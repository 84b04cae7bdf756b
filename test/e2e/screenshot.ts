// Produces docs/console.png: the operator console with a few hundred delegations in several rooms and states.
//   npx tsx test/e2e/screenshot.ts [output.png]
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mintParticipantToken } from '../fakes/livekit.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, startDaemon, waitFor } from '../helpers/daemon.js';
import { createHomeserverToken, webhookSender, type DialectName } from '../helpers/scenario.js';
import { browserAvailable, CHROMIUM_PATH, launchBrowser, signIn, type PageDocument } from './browser.js';

// Page-side callbacks run in the browser (the project compiles without the DOM library).
declare const document: PageDocument;

const out = resolve(process.argv[2] ?? fileURLToPath(new URL('../../docs/console.png', import.meta.url)));
const HOUR = 3_600_000;

const ROOMS = [
  { name: '!weekly-standup:example.org', people: 64 },
  { name: '!kTqzWbXmPaRvLcYe:matrix.example.net', people: 52 },
  { name: '!design-review:example.org', people: 41 },
  { name: '!GfHsJdKeLwQpZxNb:chat.example.com', people: 38 },
  { name: '!town-hall:example.org', people: 46 },
  { name: '!incident-2291:ops.example.org', people: 24 },
  { name: '!pairing:example.org', people: 35 },
];
const FIRST_ROOM = '!design-review:example.org';
const NAMES = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'niaj', 'olivia', 'peggy', 'rupert', 'sybil', 'trent', 'victor', 'walter', 'yara'];
const SERVERS = ['example.org', 'matrix.example.net', 'chat.example.com'];

interface Seeded {
  room: string;
  identity: string;
  sid: string;
  id: string;
}

/** Like scenario.delegate, but lets the homeserver refuse this future's refreshes from the very first one. */
async function seed(url: string, hs: FakeHomeserver, dialect: DialectName, room: string, identity: string, timeoutMs: number, failRefreshes: boolean): Promise<Seeded> {
  const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
  const token = await createHomeserverToken(hs, dialect, `!${room}:hs`, timeoutMs);
  if (failRefreshes) hs.failNext('refresh', 10_000, { status: 503, handle: token });
  const res = await api(url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect, token, timeout_ms: timeoutMs } });
  if (res.status !== 201) throw new Error(`delegation failed: ${res.status} ${JSON.stringify(res.body)}`);
  return { room, identity, sid: `PA_${Math.random().toString(36).slice(2, 10)}`, id: res.body.delegation_id };
}

async function inBatches<T, R>(items: T[], size: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < items.length; i += size) results.push(...(await Promise.all(items.slice(i, i + size).map((x, j) => fn(x, i + j)))));
  return results;
}

async function main(): Promise<void> {
  if (!browserAvailable()) throw new Error(`${CHROMIUM_PATH} is missing: apt-get install -y chromium`);
  const hs = await startFakeHomeserver();
  // A long reconnect grace, so that delegations put into grace are still there when the picture is taken.
  const d = await startDaemon({ SIDECAR_RECONNECT_GRACE_MS: String(15 * 60_000), LOG_LEVEL: 'silent' });
  const lk = webhookSender(d.url);
  const browser = await launchBrowser();
  try {
    const plan: Array<{ room: string; identity: string; dialect: DialectName; timeoutMs: number; fail: boolean; fate: 'join' | 'await' | 'grace' | 'leave' }> = [];
    let n = 0;
    for (const room of ROOMS) {
      for (let i = 0; i < room.people; i++, n++) {
        const name = NAMES[(n * 7) % NAMES.length]!;
        const identity = `@${name}${n % 13 === 0 ? '' : n}:${SERVERS[n % SERVERS.length]}:${Math.random().toString(36).slice(2, 12).toUpperCase()}`;
        const roll = (n * 37) % 100;
        // A few whose homeserver keeps refusing refreshes, with little time left: the rows an operator must see. Some
        // in the room that sorts first, so that the picture shows them.
        const fail = room.name === FIRST_ROOM ? i === 2 || i === 9 || i === 15 : n % 47 === 5;
        const fate = fail ? 'join' : roll < 70 ? 'join' : roll < 80 ? 'await' : roll < 90 ? 'grace' : 'leave';
        plan.push({ room: room.name, identity, dialect: n % 3 === 0 ? 'delayed_events' : 'futures', timeoutMs: fail ? (i % 2 ? 150_000 : 50_000) : [2, 2, 4, 8][n % 4]! * HOUR, fail, fate });
      }
    }
    const seeded = await inBatches(plan, 25, (p) => seed(d.url, hs, p.dialect, p.room, p.identity, p.timeoutMs, p.fail));
    await inBatches(seeded, 25, async (s, i) => {
      const fate = plan[i]!.fate;
      if (fate === 'await') return;
      await lk.participantJoined(s.room, s);
      if (fate === 'grace') await lk.participantLeft(s.room, s, 'CONNECTION_TIMEOUT');
      if (fate === 'leave') await lk.participantLeft(s.room, s, 'CLIENT_INITIATED');
    });
    await waitFor('every leave fired', async () => {
      const r = await api(d.url, 'GET', '/v1/admin/delegations?state=fired&limit=1000', { token: ADMIN_TOKEN });
      return r.body.delegations.length === plan.filter((p) => p.fate === 'leave').length;
    });

    const page = await browser.newPage({ viewport: { width: 1440, height: 900 }, colorScheme: 'light' });
    await signIn(page, d.url, ADMIN_TOKEN);
    await page.selectOption('#f-state', 'all');
    await page.waitForFunction((count) => document.querySelector('#count')?.textContent === `${count} shown`, plan.length);
    await page.waitForSelector('#t-open:not(:empty)');
    await page.waitForFunction(() => document.getElementById('t-open')?.textContent !== '–');
    // What an operator looks at first: the futures closest to expiring.
    await page.click('th[data-sort=expires_at]');
    await page.waitForSelector('th[data-sort=expires_at][data-dir=asc]');
    // Let the "changed" highlight of the last events fade, and the failing refreshes fall overdue.
    await page.waitForTimeout(8000);
    mkdirSync(dirname(out), { recursive: true });
    await page.screenshot({ path: out });
    console.log(`wrote ${out} (${plan.length} delegations)`);
  } finally {
    await browser.close();
    await d.stop();
    await hs.close();
  }
}

await main();
