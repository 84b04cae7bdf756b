import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

/** The little of the DOM that the page-side callbacks of these tests use. */
export interface PageElement {
  dataset: Record<string, string | undefined>;
  textContent: string | null;
  scrollHeight: number;
  getBoundingClientRect(): { top: number; bottom: number };
  scrollTo(x: number, y: number): void;
}
export interface PageDocument {
  getElementById(id: string): PageElement | null;
  querySelectorAll(selector: string): ArrayLike<PageElement> & Iterable<PageElement>;
  querySelector(selector: string): PageElement | null;
  cookie: string;
}
declare const document: PageDocument;

/** Debian's Chromium; playwright-core drives it without downloading a browser of its own. */
export const CHROMIUM_PATH = process.env.SIDECAR_TEST_CHROMIUM ?? '/usr/bin/chromium';

/** As root in a container: no sandbox; nothing that phones home or updates itself during a test. */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export function browserAvailable(): boolean {
  return existsSync(CHROMIUM_PATH);
}

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS });
}

/** Opens the console and signs in; resolves once the first list has been loaded. */
export async function signIn(page: Page, daemonUrl: string, token: string): Promise<void> {
  await page.goto(`${daemonUrl}/console`);
  await page.fill('#token', token);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForFunction(() => /shown/.test(document.getElementById('count')?.textContent ?? ''));
}
