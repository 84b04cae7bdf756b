import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CONSOLE_CSP, findConsoleDir } from '../../src/http/console.js';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken, type WebhookSender } from '../fakes/livekit.js';
import { ADMIN_TOKEN, API_KEY, API_SECRET, api, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { createHomeserverToken, delegate, uniqueName, webhookSender, type Participant } from '../helpers/scenario.js';
import { browserAvailable, CHROMIUM_PATH, launchBrowser, signIn, type PageDocument, type PageElement } from './browser.js';

const requireBrowser = process.env.SIDECAR_TEST_REQUIRE_BROWSER === '1';
const haveBrowser = browserAvailable();
if (!haveBrowser && !requireBrowser) {
  const bar = '!'.repeat(100);
  console.warn(
    `\n${bar}\n!! SKIPPED: the operator console's browser tests need ${CHROMIUM_PATH} (apt-get install -y chromium).\n` +
      `!! Set SIDECAR_TEST_REQUIRE_BROWSER=1 to make a missing browser a failure (CI does).\n${bar}\n`,
  );
}

// The callbacks given to page.evaluate and friends run in the browser; the project compiles for Node without the DOM
// library, so they see the page's globals through these declarations.
declare const document: PageDocument;
declare const localStorage: { length: number };
declare const sessionStorage: { length: number };

const CONSOLE_DIR = fileURLToPath(new URL('../../public/console/', import.meta.url));

describe('console files', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    d = await startDaemon({ LOG_LEVEL: 'silent' });
  });
  afterAll(async () => {
    await d?.stop();
    await hs?.close();
  });

  it.each([
    ['/console', 'text/html; charset=utf-8'],
    ['/console/console.js', 'text/javascript; charset=utf-8'],
    ['/console/console.css', 'text/css; charset=utf-8'],
  ])('serves %s without a token, as %s, with the security headers', async (path, type) => {
    const res = await fetch(d.url + path);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(type);
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    const csp = res.headers.get('content-security-policy')!;
    expect(csp).toBe(CONSOLE_CSP);
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("connect-src 'self';");
    expect(csp).not.toContain('unsafe');
    const again = await fetch(d.url + path, { headers: { 'if-none-match': res.headers.get('etag')! } });
    expect(again.status).toBe(304);
  });

  it('redirects /console/ to the page, relatively so that a path prefix survives', async () => {
    const res = await fetch(`${d.url}/console/`, { redirect: 'manual' });
    expect(res.status).toBe(308);
    expect(res.headers.get('location')).toBe('../console');
  });

  it('finds the files from the source module and from the compiled one, and fails clearly elsewhere', () => {
    const fromSource = new URL('../../src/http/console.ts', import.meta.url).href;
    const fromDist = new URL('../../dist/src/http/console.js', import.meta.url).href;
    expect(findConsoleDir(fromSource)).toBe(CONSOLE_DIR);
    expect(findConsoleDir(fromDist)).toBe(CONSOLE_DIR);
    expect(() => findConsoleDir('file:///nowhere/at/all/console.js')).toThrow(/operator console files not found.*index\.html.*\/nowhere\//);
  });

  it('never writes markup from data and never stores the token', () => {
    const script = readFileSync(`${CONSOLE_DIR}console.js`, 'utf8');
    for (const banned of ['innerHTML', 'outerHTML', 'insertAdjacentHTML', 'document.write', 'localStorage', 'sessionStorage', 'document.cookie', 'eval(', 'new Function']) {
      expect(script.includes(banned), `console.js uses ${banned}`).toBe(false);
    }
    const html = readFileSync(`${CONSOLE_DIR}index.html`, 'utf8');
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)/);
    expect(html).not.toMatch(/\son[a-z]+=/i);
    expect(html).not.toMatch(/\sstyle=/i);
  });
});

describe.skipIf(!haveBrowser && !requireBrowser)('operator console in Chromium', () => {
  let hs: FakeHomeserver;
  let d: RunningDaemon;
  let lk: WebhookSender;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  /** What the page sent and received, to prove no secret went either way. */
  let seen: { urls: string[]; bodies: Promise<string>[]; framesIn: string[]; framesOut: string[]; dialogs: string[]; errors: string[] };

  beforeAll(async () => {
    if (!haveBrowser) throw new Error(`SIDECAR_TEST_REQUIRE_BROWSER=1 but ${CHROMIUM_PATH} is missing: apt-get install -y chromium`);
    hs = await startFakeHomeserver();
    // Nothing should fire by itself while the page is looked at: delegations that never join wait ten minutes.
    d = await startDaemon({ LOG_LEVEL: 'silent', SIDECAR_JOIN_TIMEOUT_MS: '600000' });
    lk = webhookSender(d.url);
    browser = await launchBrowser();
  });
  afterAll(async () => {
    await browser?.close();
    await d?.stop();
    await hs?.close();
  });

  beforeEach(async () => {
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    seen = { urls: [], bodies: [], framesIn: [], framesOut: [], dialogs: [], errors: [] };
    page.on('request', (r) => seen.urls.push(r.url()));
    page.on('response', (r) => {
      if (new URL(r.url()).pathname.startsWith('/v1/')) seen.bodies.push(r.text().catch(() => ''));
    });
    page.on('websocket', (ws) => {
      seen.urls.push(ws.url());
      ws.on('framereceived', (f) => seen.framesIn.push(String(f.payload)));
      ws.on('framesent', (f) => seen.framesOut.push(String(f.payload)));
    });
    page.on('dialog', (dialog) => {
      seen.dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    page.on('pageerror', (err) => seen.errors.push(String(err)));
  });
  afterEach(async () => {
    await context?.close();
    expect(seen.errors).toEqual([]);
  });

  const row = (p: Participant) => `#rows tr[data-id="${p.delegationId}"]`;
  const badge = (p: Participant, state: string) => `${row(p)} .badge[data-state="${state}"]`;
  /** Delegation ids of the rows in the table right now. */
  const shownIds = () => page.$$eval('#rows tr[data-id]', (trs) => trs.map((tr) => (tr as unknown as PageElement).dataset.id));
  /** Shows only this room (the list is sorted by room, and only rows in view exist in the DOM). */
  const filterRoom = async (room: string) => {
    await page.fill('#f-room', room);
    await page.click('#filters button[type=submit]');
    await page.waitForSelector('#count:text-is("0 shown")');
  };
  /** Waits until the table shows every one of `shown` and none of `hidden`. */
  const waitForRows = (shown: Participant[], hidden: Participant[]) =>
    page.waitForFunction(
      ([yes, no]) => {
        const ids = new Set([...document.querySelectorAll('#rows tr[data-id]')].map((tr) => tr.dataset.id));
        return yes.every((id) => ids.has(id)) && no.every((id) => !ids.has(id));
      },
      [shown.map((p) => p.delegationId), hidden.map((p) => p.delegationId)] as const,
    );

  it('refuses a wrong admin token with a clear error and shows no data', async () => {
    await delegate(d.url, hs, 'futures', { timeoutMs: 600_000 });
    await page.goto(`${d.url}/console`);
    await page.fill('#token', 'not-the-admin-token-0123456789');
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#signin-error:not([hidden])');
    expect(await page.textContent('#signin-error')).toMatch(/admin token was refused \(403 M_FORBIDDEN\)/);
    expect(await page.isHidden('#app')).toBe(true);
    expect(await page.$$('#rows tr')).toHaveLength(0);
    expect(await page.textContent('#t-open')).toBe('–');
    expect(await page.inputValue('#token')).toBe('');
    expect(seen.urls.filter((u) => u.includes('not-the-admin-token'))).toEqual([]);
  });

  it('says so when the daemon has no admin API', async () => {
    const bare = await startDaemon({ LOG_LEVEL: 'silent', SIDECAR_ADMIN_TOKEN: '' });
    try {
      await page.goto(`${bare.url}/console`);
      await page.fill('#token', ADMIN_TOKEN);
      await page.click('#signin-form button[type=submit]');
      await page.waitForSelector('#signin-error:not([hidden])');
      expect(await page.textContent('#signin-error')).toMatch(/no admin API: start it with SIDECAR_ADMIN_TOKEN set/);
      expect(await page.isHidden('#app')).toBe(true);
    } finally {
      await context.close();
      await bare.stop();
    }
  });

  it('signs in, shows delegations appear and change live, opens a history, filters, and never sees a secret', async () => {
    await signIn(page, d.url, ADMIN_TOKEN);
    expect(await page.isVisible('#signin')).toBe(false);
    const roomA = uniqueName('room-a');
    const a = await delegate(d.url, hs, 'futures', { room: roomA, timeoutMs: 600_000 });
    await page.waitForSelector(badge(a, 'awaiting_join'));
    expect(await page.textContent(`${row(a)} td:nth-child(1)`)).toBe(roomA);
    expect(await page.textContent(`${row(a)} td:nth-child(2)`)).toBe(a.identity);
    expect(await page.textContent(`${row(a)} td:nth-child(3)`)).toBe('futures');

    await lk.participantJoined(a.room, a);
    await page.waitForSelector(badge(a, 'connected'));

    await page.click(`${row(a)} td:nth-child(2)`);
    await page.waitForSelector('#drawer:not([hidden]) #d-history li .what');
    await page.waitForFunction(() => /participant_joined: awaiting_join -> connected/.test(document.getElementById('d-history')!.textContent!));
    const history = await page.$$eval('#d-history li .what', (lis) => lis.map((li) => li.textContent));
    expect(history[0]).toMatch(/^registered/);
    expect(await page.textContent('#d-title')).toBe(a.delegationId);
    const fields = await page.$$eval('#d-fields dt, #d-fields dd', (nodes) => nodes.map((n) => n.textContent));
    expect(fields[fields.indexOf('route') + 1]).toBe('/v1/delegations');
    await page.keyboard.press('Escape');
    await page.waitForSelector('#drawer', { state: 'hidden' });

    const b = await delegate(d.url, hs, 'delayed_events', { room: uniqueName('room-b'), timeoutMs: 600_000 });
    await page.waitForSelector(badge(b, 'awaiting_join'));

    // Server-side: exact room.
    await page.fill('#f-room', roomA);
    await page.click('#filters button[type=submit]');
    await waitForRows([a], [b]);
    expect(await shownIds()).toEqual([a.delegationId]);
    await page.click('#f-clear');
    await waitForRows([a, b], []);

    // Client-side: a part of the identity.
    await page.fill('#f-search', b.identity.slice(2, 10));
    await waitForRows([b], [a]);
    expect(await shownIds()).toEqual([b.delegationId]);
    await page.fill('#f-search', '');
    await waitForRows([a, b], []);

    // Server-side: one state.
    await page.selectOption('#f-state', 'connected');
    await waitForRows([a], [b]);
    await page.selectOption('#f-state', 'open');
    await waitForRows([a, b], []);

    // A deliberate leave fires at once; the row stays a moment, marked as ended, and the totals count the action.
    await lk.participantLeft(a.room, a, 'CLIENT_INITIATED');
    await page.waitForSelector(`${badge(a, 'fired')}`);
    expect(await page.getAttribute(row(a), 'class')).toMatch(/\bended\b/);
    await page.waitForFunction(() => Number(document.getElementById('t-actions')!.textContent) >= 1);

    // Nothing secret reached the page, and the token went only into the watch stream's first message.
    const received = [...(await Promise.all(seen.bodies)), ...seen.framesIn].join('\n');
    expect(received).toContain(a.delegationId);
    for (const secret of [a.token, b.token, a.jwt, b.jwt, ADMIN_TOKEN]) expect(received.includes(secret), 'a secret reached the page').toBe(false);
    expect(seen.urls.some((u) => u.includes(ADMIN_TOKEN))).toBe(false);
    expect(seen.framesOut).toEqual([JSON.stringify({ type: 'auth', token: ADMIN_TOKEN })]);
    expect(await page.evaluate(() => localStorage.length + sessionStorage.length + document.cookie.length)).toBe(0);
    expect(await context.cookies()).toEqual([]);
    expect(await page.content()).not.toContain(ADMIN_TOKEN);

    await page.click('#sign-out');
    await page.waitForSelector('#signin:not([hidden])');
    expect(await page.$$('#rows tr')).toHaveLength(0);
  });

  it('shows a participant-chosen identity and room as text, never as markup', async () => {
    const identity = '<img src=x onerror=alert(1)>';
    const room = `<b id=injected>room</b><script>alert(2)</script>-${uniqueName('x')}`;
    await signIn(page, d.url, ADMIN_TOKEN);
    const p = await delegate(d.url, hs, 'futures', { room, identity, timeoutMs: 600_000 });
    await page.waitForSelector(row(p));
    expect(await page.textContent(`${row(p)} td:nth-child(2)`)).toBe(identity);
    expect(await page.textContent(`${row(p)} td:nth-child(1)`)).toBe(room);
    await page.click(row(p));
    await page.waitForSelector('#d-fields dd');
    await page.waitForSelector('#d-history li .what');
    expect(await page.$$eval('#d-fields dd', (dds) => dds.map((dd) => dd.textContent))).toEqual(expect.arrayContaining([identity, room]));
    const injected = await page.evaluate(() => document.querySelectorAll('img, b, #injected, script:not([src])').length);
    expect(injected).toBe(0);
    expect(seen.dialogs).toEqual([]);
  });

  it('colours a thin expiry margin', async () => {
    await signIn(page, d.url, ADMIN_TOKEN);
    const room = uniqueName('margins');
    await filterRoom(room);
    const healthy = await delegate(d.url, hs, 'futures', { room, timeoutMs: 600_000 });
    // This homeserver keeps refusing the future's refreshes, so its expiry never moves: 30 s left at most.
    const identity = uniqueName('user');
    const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity, room });
    const token = await createHomeserverToken(hs, 'futures', `!${room}:hs`, 30_000);
    hs.failNext('refresh', 1_000, { status: 503, handle: token });
    const res = await api(d.url, 'POST', '/v1/delegations', { token: jwt, body: { homeserver: hs.url, dialect: 'futures', token, timeout_ms: 30_000 } });
    expect(res.status).toBe(201);
    const failing = { ...healthy, identity, jwt, token, delegationId: res.body.delegation_id as string };
    await waitForRows([healthy, failing], []);
    expect(await page.getAttribute(`${row(failing)} td:nth-child(6)`, 'class')).toMatch(/margin-danger/);
    expect(await page.getAttribute(`${row(healthy)} td:nth-child(6)`, 'class')).toMatch(/margin-ok/);
    expect(await page.textContent(`${row(healthy)} td:nth-child(6)`)).toMatch(/^(9|10)m \d\ds$/);
    await page.waitForFunction(() => document.getElementById('t-margin')!.dataset.level === 'danger');
    await api(d.url, 'DELETE', `/v1/admin/delegations/${failing.delegationId}`, { token: ADMIN_TOKEN });
  });

  it('reconnects the live stream when the daemon drops it, and catches up with what it missed', async () => {
    await signIn(page, d.url, ADMIN_TOKEN);
    const room = uniqueName('reconnect');
    await filterRoom(room);
    await page.waitForSelector('#live[data-state=live]');
    d.daemon.watch.closeAll();
    await page.waitForSelector('#live[data-state=down]');
    const p = await delegate(d.url, hs, 'delayed_events', { room, timeoutMs: 600_000 });
    await page.waitForSelector('#live[data-state=live]');
    await page.waitForSelector(badge(p, 'awaiting_join'));
    await lk.participantJoined(p.room, p);
    await page.waitForSelector(badge(p, 'connected'));
  });
  it('keeps the table virtual and up to date with hundreds of delegations registered at once', async () => {
    await signIn(page, d.url, ADMIN_TOKEN);
    const room = uniqueName('big-room');
    await filterRoom(room);
    const ps: Participant[] = [];
    for (let i = 0; i < 600; i += 50) {
      ps.push(...(await Promise.all(Array.from({ length: 50 }, () => delegate(d.url, hs, 'futures', { room, timeoutMs: 600_000 })))));
    }
    // The burst arrives as 600 watch events; the console answers it with a reload instead of 600 look-ups.
    await page.waitForSelector('#count:text-is("600 shown")', { timeout: 20_000 });
    const rendered = await page.$$eval('#rows tr[data-id]', (trs) => trs.length);
    expect(rendered).toBeGreaterThan(10);
    expect(rendered).toBeLessThan(100);
    // Scrolling to the end renders the last rows.
    await page.$eval('#scroller', (el) => el.scrollTo(0, el.scrollHeight));
    await page.waitForFunction(() => {
      const ids = [...document.querySelectorAll('#rows tr[data-id]')];
      const last = ids[ids.length - 1];
      const sc = document.getElementById('scroller')!.getBoundingClientRect();
      return !!last && last.getBoundingClientRect().bottom <= sc.bottom + 1 && last.getBoundingClientRect().bottom > sc.bottom - 40;
    });
    await page.fill('#f-search', ps[599]!.identity);
    await page.waitForFunction(() => document.querySelectorAll('#rows tr[data-id]').length === 1);
    expect(await shownIds()).toEqual([ps[599]!.delegationId]);
    const lookups = seen.urls.filter((u) => /\/v1\/admin\/delegations\/dg_/.test(u)).length;
    expect(lookups).toBeLessThan(100);
  });
});
