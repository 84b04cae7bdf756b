/**
 * The alerts and the dashboard checked by Prometheus' own promtool (issue 20): `promtool check rules` on both
 * copies of the rules file, `promtool test rules` (test/deploy/rules-tests: every alert fires on one series and not
 * on another), `promtool check metrics` on a live daemon's /metrics, and every Grafana panel query evaluated by
 * promtool over a /metrics sample recorded from a daemon that did some work. promtool comes from
 * `npm run tools:install`; without it these tests skip loudly (fail with SIDECAR_TEST_REQUIRE_DEPLOY_TOOLS=1).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { startFakeRoomService, type FakeRoomService } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, startDaemon, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { REPO_ROOT, deployToolsEnabled, runTool } from '../helpers/deploy-tools.js';
import { actionsFired, delegate, delegationState, webhookSender } from '../helpers/scenario.js';

const read = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');
const RULE_COPIES = ['helm/futures-sidecar/rules/futures-sidecar-rules.yaml', 'deploy/prometheus/futures-sidecar-rules.yaml'];
const RULE_TESTS = 'test/deploy/rules-tests/futures-sidecar-rules.test.yaml';
const DASHBOARD = 'helm/futures-sidecar/dashboards/futures-sidecar.json';
const promtool = (args: string[], input?: string) => runTool('promtool', args, input === undefined ? {} : { input });

const alertNames = (file: string): string[] => (parse(read(file)) as { groups: { rules: { alert?: string }[] }[] }).groups.flatMap((g) => g.rules.map((r) => r.alert ?? ''));

// ---------------------------------------------------------------------------------------------------------------

/** One sample line of the Prometheus text format. */
interface Sample {
  name: string;
  labels: string;
  value: string;
}

/** Families by type (# TYPE lines) and the samples of a /metrics text. */
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\w+)$/.exec(line);
    if (type) types.set(type[1]!, type[2]!);
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\d+)?$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    samples.push({ name: m[1]!, labels: m[2] ? m[2].slice(1, -1) : '', value: m[3]! });
  }
  return { types, samples };
}

/** The family a sample belongs to: histogram series carry _bucket/_sum/_count after the family name. */
function familyOf(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return types.get(name);
  const base = name.replace(/_(bucket|sum|count)$/, '');
  return types.get(base);
}

/**
 * A recorded /metrics text as promtool input series, scraped as job="futures-sidecar" at one instance over 10
 * minutes: counters and histograms grow by their recorded value every minute (so rate() and increase() see them
 * move), gauges stay at their value. `up` is added, as Prometheus adds it to every target.
 */
function sampleAsSeries(text: string, instance: string): { series: string; values: string }[] {
  const { types, samples } = parseExposition(text);
  const target = `job="futures-sidecar",instance="${instance}"`;
  const out = [{ series: `up{${target}}`, values: '1+0x10' }];
  for (const s of samples) {
    const kind = familyOf(s.name, types);
    const grows = kind === 'counter' || kind === 'histogram' || kind === 'summary';
    // promtool's expanding notation takes +Inf and NaN only as a start value: "+Inf+0x10", not "+Infx10".
    out.push({ series: `${s.name}{${s.labels ? `${s.labels},` : ''}${target}}`, values: grows && Number.isFinite(Number(s.value)) ? `0+${s.value}x10` : `${s.value}+0x10` });
  }
  return out;
}

/** Grafana's variables as a user with "All" selected would send them, and its interval macros. */
function substituteVariables(expr: string): string {
  return expr
    .replace(/\$\{?job\}?/g, 'futures-sidecar')
    .replace(/\$\{?instance\}?/g, '.*')
    .replace(/\$\{?__rate_interval\}?/g, '2m')
    .replace(/\$\{?__interval\}?/g, '1m')
    .replace(/\$\{?__range\}?/g, '10m');
}

interface Panel {
  id?: number;
  title?: string;
  targets?: { expr?: string; refId?: string }[];
  panels?: Panel[];
}
const allPanels = (panels: Panel[]): Panel[] => panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);

/** Every query of the dashboard: panel targets and the query variables (label_values(expr, label) reads expr). */
function dashboardQueries(dashboard: { panels?: Panel[]; templating?: { list?: { name: string; type: string; query?: unknown }[] } }): { what: string; expr: string }[] {
  const out: { what: string; expr: string }[] = [];
  for (const p of allPanels(dashboard.panels ?? [])) {
    for (const t of p.targets ?? []) if (t.expr) out.push({ what: `panel ${p.id} "${p.title}" target ${t.refId ?? '?'}`, expr: t.expr });
  }
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : ((v.query as { query?: string } | undefined)?.query ?? '');
    const lv = /^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$/.exec(q);
    out.push({ what: `variable $${v.name}`, expr: lv ? `count by (${lv[2]}) (${lv[1]})` : q });
  }
  return out;
}

/**
 * A promtool unit-test file that evaluates each query over the recorded sample: `absent(<query>)` must be empty,
 * so a query that fails to parse, names a series the daemon does not serve, or selects nothing fails, under the
 * panel's name.
 */
function dashboardTestFile(queries: { what: string; expr: string }[], series: { series: string; values: string }[]): string {
  return stringify({
    rule_files: [],
    evaluation_interval: '1m',
    tests: queries.map((q) => ({
      name: q.what,
      interval: '1m',
      input_series: series,
      // The panel's name rides on the failing sample, so promtool's report says which query selected nothing.
      promql_expr_test: [{ expr: `label_replace(absent(${substituteVariables(q.expr)}), "query", ${JSON.stringify(q.what)}, "", "")`, eval_time: '10m', exp_samples: [] }],
    })),
  });
}

// ---------------------------------------------------------------------------------------------------------------

describe.runIf(deployToolsEnabled('promtool checks', 'promtool'))('promtool', () => {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-promtool-'));
  let hs: FakeHomeserver;
  let rs: FakeRoomService;
  let d: RunningDaemon;
  /** /metrics of a daemon that registered, refreshed, fired an action, reconciled and refused a forged webhook. */
  let recorded: string;

  beforeAll(async () => {
    hs = await startFakeHomeserver();
    rs = await startFakeRoomService({ apiKey: API_KEY, apiSecret: API_SECRET });
    d = await startDaemon({ LIVEKIT_URL: rs.url, SIDECAR_RECONCILE_INTERVAL_MS: '1000', SIDECAR_JOIN_TIMEOUT_MS: '30000', LOG_LEVEL: 'warn' });
    const lk = webhookSender(d.url);
    // Found by RoomService alone (its webhook "lost"): a reconcile correction; stays connected, so the expiry
    // margin is finite.
    // Its first refresh meets a 500: a homeserver error (outcome retry) for the error panels.
    hs.failNext('refresh', 1, { status: 500 });
    const staying = await delegate(d.url, hs, 'futures', { timeoutMs: 60_000 });
    rs.join(staying.room, { sid: staying.sid, identity: staying.identity, state: 'ACTIVE' });
    // Joins and leaves on purpose: a refresh, a leave action and its disconnect-to-action time.
    const leaving = await delegate(d.url, hs, 'delayed_events');
    rs.join(leaving.room, { sid: leaving.sid, identity: leaving.identity, state: 'ACTIVE' });
    await lk.participantJoined(leaving.room, leaving);
    await waitFor('connected', async () => (await delegationState(d.url, leaving)).state === 'connected');
    rs.leave(leaving.room, leaving.identity);
    await lk.participantLeft(leaving.room, leaving, 'CLIENT_INITIATED');
    await waitFor('leave fired', () => actionsFired(hs, leaving.token).length === 1);
    await waitFor('the lost webhook corrected', async () => (await delegationState(d.url, staying)).state === 'connected', 10_000);
    // A webhook signed with a key the daemon does not have.
    const forged = await fetch(`${d.url}/livekit/webhook`, { method: 'POST', headers: { 'content-type': 'application/webhook+json', authorization: 'Bearer not-a-jwt' }, body: '{}' });
    expect(forged.status).toBe(401);
    const res = await fetch(`${d.url}/metrics`);
    expect(res.status).toBe(200);
    recorded = await res.text();
  }, 60_000);
  afterAll(async () => {
    await d?.stop();
    await rs?.close();
    await hs?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(RULE_COPIES)('check rules accepts %s', (file) => {
    const r = promtool(['check', 'rules', file]);
    expect(r.status, r.output).toBe(0);
    expect(r.output).toMatch(new RegExp(`SUCCESS: ${alertNames(file).length} rules found`));
  });

  it('the unit tests cover every alert with a firing and a quiet case', () => {
    const tests = (parse(read(RULE_TESTS)) as { tests: { input_series: { series: string }[]; alert_rule_test?: { alertname: string; exp_alerts: { exp_labels: Record<string, string> }[] }[] }[] }).tests;
    for (const alert of alertNames(RULE_COPIES[0]!)) {
      const cases = tests.filter((t) => t.alert_rule_test?.some((a) => a.alertname === alert));
      expect(cases.length, `${alert} has a test`).toBeGreaterThan(0);
      const checks = cases.flatMap((t) => t.alert_rule_test!.filter((a) => a.alertname === alert).map((a) => ({ t, a })));
      expect(checks.some(({ a }) => a.exp_alerts.length > 0), `${alert} fires somewhere`).toBe(true);
      // Quiet: an evaluation expecting no alert, or series of another instance than the ones expected to alert.
      const quiet = checks.some(({ t, a }) => {
        if (a.exp_alerts.length === 0) return true;
        const alerting = new Set(a.exp_alerts.map((e) => e.exp_labels.instance));
        return t.input_series.some((s) => !alerting.has(/instance="([^"]*)"/.exec(s.series)?.[1]));
      });
      expect(quiet, `${alert} stays quiet somewhere`).toBe(true);
    }
  });

  it.each(RULE_COPIES)('test rules passes for every alert over %s', (file) => {
    // Rewritten as text: a YAML round trip would read series values such as 0x15 as hexadecimal numbers.
    const text = read(RULE_TESTS).replace(/^rule_files:\n(?:\s+- .*\n)+/m, `rule_files:\n  - ${JSON.stringify(join(REPO_ROOT, file))}\n`);
    expect(text).toContain(join(REPO_ROOT, file));
    const path = join(dir, `rules-${file.replace(/\W/g, '_')}.test.yaml`);
    writeFileSync(path, text);
    const r = promtool(['test', 'rules', path]);
    expect(r.status, r.output).toBe(0);
    expect(r.output).toContain('SUCCESS');
  });

  it('check metrics finds no problem in the live /metrics output beyond prom-client\'s own gauges', () => {
    expect(recorded).toContain('futures_sidecar_refreshes_total{');
    const r = promtool(['check', 'metrics'], recorded);
    const findings = r.output.split('\n').map((l) => l.trim()).filter(Boolean);
    // prom-client's default Node.js collectors name three gauges *_total; they cannot be renamed one by one.
    const promClientGauges = /^futures_sidecar_nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;
    expect(findings.filter((f) => !promClientGauges.test(f))).toEqual([]);
  });

  it('every dashboard query evaluates to data over the recorded sample', () => {
    const queries = dashboardQueries(JSON.parse(read(DASHBOARD)));
    expect(queries.length).toBeGreaterThan(20);
    const path = join(dir, 'dashboard.test.yaml');
    writeFileSync(path, dashboardTestFile(queries, sampleAsSeries(recorded, '127.0.0.1:8089')));
    const r = promtool(['test', 'rules', path]);
    expect(r.status, r.output).toBe(0);
  });
});
