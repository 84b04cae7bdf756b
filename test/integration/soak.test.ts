import { describe, expect, it } from 'vitest';
import { SHORT_SOAK, formatReport, runSoak } from '../soak/soak.js';

/** The soak of issue 4 (`npm run soak`), same code, scaled down to fit in the test run. */
describe('short soak', () => {
  it('fires every departed participant once, never a connected one, and lets no future expire, through webhook loss, an outage and SIGKILLs', async () => {
    const report = await runSoak({ ...SHORT_SOAK, progressEveryMs: 600_000 });
    const table = formatReport(report, 5);
    expect(
      {
        falseFires: report.falseFires,
        missedRefreshes: report.missedRefreshes,
        firedTwice: report.firedTwice,
        departedWithoutAction: report.departedWithoutAction,
        notDelegated: report.notDelegated,
        wrongKind: report.connectionLost.wrongKind,
        unexpectedExits: report.daemon.unexpectedExits.length,
        kills: report.daemon.kills,
        aborted: report.aborted,
      },
      table,
    ).toEqual({ falseFires: 0, missedRefreshes: 0, firedTwice: 0, departedWithoutAction: 0, notDelegated: 0, wrongKind: 0, unexpectedExits: 0, kills: SHORT_SOAK.kills, aborted: false });
    expect(report.leaves.fired + report.leaves.byReconciliation, table).toBe(report.leaves.expected);
    expect(report.connectionLost.fired, table).toBe(report.connectionLost.expected);
    expect(report.webhooks.lost, table).toBeGreaterThan(0);
    expect(report.homeserver.unreachable, table).toBeGreaterThan(0);
    expect(report.daemon.exitCode, table).toBe(0);
  }, 150_000);
});
