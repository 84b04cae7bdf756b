import { registerDelegation, type MachineContext } from '../../src/delegations/machine.js';
import type { Delegation } from '../../src/delegations/model.js';

/** What a registration takes (the machine derives the rest). */
export type DelegationInit = Parameters<typeof registerDelegation>[0];

const TEST_MACHINE_SETTINGS = { reconnectGraceMs: 10_000, joinTimeoutMs: 300_000, refreshAt: 0.5, refreshMarginMs: null };

/**
 * A delegation as the state machine registers it: `dg_1` of `alice` in `room`, futures dialect, 2 h, through the
 * API, created at `ctx.now` (1,000,000 by default). Override what a test is about; `sid` registers it connected.
 */
export function aDelegation(
  overrides: Partial<DelegationInit> = {},
  opts: { sid?: string | null; ctx?: MachineContext } = {},
): Delegation {
  const ctx = opts.ctx ?? { now: overrides.createdAt ?? 1_000_000, settings: TEST_MACHINE_SETTINGS, random: () => 0.5 };
  const init: DelegationInit = {
    id: 'dg_1',
    dialect: 'futures',
    homeserver: 'https://hs.example',
    room: 'room',
    identity: 'alice',
    altIdentity: null,
    altRoom: null,
    sid: null,
    actions: { leave: 'leave', connection_lost: 'connection_lost' },
    timeoutMs: 7_200_000,
    source: 'api',
    createdAt: ctx.now,
    ...overrides,
  };
  return registerDelegation(init, ctx, opts.sid ?? null).delegation;
}
