import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PEERS_DIR } from '../real/peers.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Where `npm run tools:install` (helm, promtool, kustomize) and `npm run peers:install` (livekit-server) put binaries. */
export const PEERS_BIN = join(PEERS_DIR, 'bin');

export type DeployTool = 'helm' | 'promtool' | 'kustomize';

export const toolPath = (name: DeployTool | 'livekit-server'): string => join(PEERS_BIN, name);

/**
 * Whether the tests of `suite` can run `tools`. A missing tool skips them with a loud notice, unless
 * SIDECAR_TEST_REQUIRE_DEPLOY_TOOLS=1 (set by .ci/run), which turns the skip into a failure.
 */
export function deployToolsEnabled(suite: string, ...tools: DeployTool[]): boolean {
  const missing = tools.filter((t) => !existsSync(toolPath(t)));
  if (missing.length === 0) return true;
  const what = `${missing.join(', ')} not found in ${PEERS_BIN}`;
  if (process.env.SIDECAR_TEST_REQUIRE_DEPLOY_TOOLS === '1') throw new Error(`${suite}: ${what} (SIDECAR_TEST_REQUIRE_DEPLOY_TOOLS=1); run npm run tools:install`);
  console.warn(`\n!!! ${suite}: SKIPPED — ${what}; run npm run tools:install !!!\n`);
  return false;
}

/** The same for the real LiveKit server, under SIDECAR_TEST_REQUIRE_PEERS (installed by npm run peers:install). */
export function livekitServerEnabled(suite: string): boolean {
  if (existsSync(toolPath('livekit-server'))) return true;
  const what = `livekit-server not found in ${PEERS_BIN}`;
  if (process.env.SIDECAR_TEST_REQUIRE_PEERS === '1') throw new Error(`${suite}: ${what} (SIDECAR_TEST_REQUIRE_PEERS=1); run npm run peers:install`);
  console.warn(`\n!!! ${suite}: SKIPPED — ${what}; run npm run peers:install !!!\n`);
  return false;
}

export interface ToolRun {
  status: number | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr together, for messages and for tools that report on either. */
  output: string;
}

/** Runs a tool to completion from the repository root; the caller asserts on the status. */
export function runTool(name: DeployTool, args: string[], opts: { cwd?: string; input?: string; env?: Record<string, string> } = {}): ToolRun {
  const r = spawnSync(toolPath(name), args, {
    cwd: opts.cwd ?? REPO_ROOT,
    input: opts.input,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    // helm keeps a cache and config of its own; keep them out of the user's home.
    env: { ...process.env, HELM_CACHE_HOME: join(PEERS_BIN, '..', 'helm-home', 'cache'), HELM_CONFIG_HOME: join(PEERS_BIN, '..', 'helm-home', 'config'), HELM_DATA_HOME: join(PEERS_BIN, '..', 'helm-home', 'data'), ...opts.env },
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, output: `${r.stdout}\n${r.stderr}` };
}
