import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** Where `npm run peers:install` puts the real servers (contract section 9; shared convention between branches). */
export const PEERS_DIR = resolve(process.env.SIDECAR_PEERS_DIR ?? join(import.meta.dirname, '..', '..', '.peers'));
export const SYNAPSE_PYTHON = join(PEERS_DIR, 'synapse', 'bin', 'python');
export const LIVEKIT_SERVER = join(PEERS_DIR, 'bin', 'livekit-server');
export const NODE22 = join(PEERS_DIR, 'node22', 'bin', 'node');

export function missingPeers(): string[] {
  return [SYNAPSE_PYTHON, LIVEKIT_SERVER, NODE22].filter((p) => !existsSync(p));
}

/**
 * Whether the real-server suites run here. Without the peers they are skipped with a loud notice, unless
 * SIDECAR_TEST_REQUIRE_PEERS=1 (set by .ci/run), which turns the skip into a failure.
 */
export function peersTestsEnabled(suite: string): boolean {
  const missing = missingPeers();
  if (missing.length === 0) return true;
  if (process.env.SIDECAR_TEST_REQUIRE_PEERS === '1') throw new Error(`${suite}: the real peers are required (SIDECAR_TEST_REQUIRE_PEERS=1) but missing: ${missing.join(', ')} (npm run peers:install)`);
  console.warn(`\n!!! ${suite}: SKIPPED — real Synapse / LiveKit / Node 22 not installed (npm run peers:install) !!!\n`);
  return false;
}
