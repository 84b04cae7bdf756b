/**
 * Deployment files (issue 7): the Helm chart, its values and schema, the Grafana dashboard, the alert rules, the
 * kustomize patch for the LiveKit pod and the Dockerfile, checked statically here, plus one live check: every
 * metric the dashboard and the alerts use must be served by the daemon's own /metrics. The real tools (helm,
 * kustomize, promtool, livekit-server) check the same files in tools.test.ts, promtool.test.ts and
 * livekit-config.test.ts; there is no Docker engine, so the Dockerfile stays checked only here.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CHART = join(ROOT, 'helm/futures-sidecar');
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };
const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

function walk(dir: string, skip: (rel: string) => boolean): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    const rel = relative(ROOT, full);
    if (skip(rel)) continue;
    if (entry.isDirectory()) out.push(...walk(full, skip));
    else out.push(rel);
  }
  return out;
}

/** Helm's merge of a user's values over the chart's: maps merge deeply, a null from the user deletes the key. */
function coalesce(base: JsonObject, override: JsonObject): JsonObject {
  const out: JsonObject = structuredClone(base);
  for (const [key, value] of Object.entries(override)) {
    const current = out[key];
    if (value === null) delete out[key];
    else if (isObject(value) && isObject(current)) out[key] = coalesce(current, value);
    else out[key] = value;
  }
  return out;
}

const chartValues = (): JsonObject => parse(read('helm/futures-sidecar/values.yaml')) as JsonObject;
const schema = (): JsonObject => JSON.parse(read('helm/futures-sidecar/values.schema.json')) as JsonObject;

function compileSchema(): ValidateFunction {
  // Draft-07 is Ajv 8's default draft. Union types such as ["integer", "null"] are deliberate (null = daemon default).
  const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
  return ajv.compile(schema());
}

const errorText = (errors: ErrorObject[] | null | undefined): string =>
  (errors ?? []).map((e) => `${e.instancePath || '(root)'} ${e.message ?? ''}`).join('; ');

// ---------------------------------------------------------------------------------------------------------------

describe('YAML files', () => {
  const files = walk(ROOT, (rel) => /^(node_modules|\.git|\.peers|dist|data|coverage)$/.test(rel) || /(^|\/)templates$/.test(rel) || /(^|\/)charts$/.test(rel))
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();

  it('finds the chart, the deploy files and the rules', () => {
    for (const f of [
      'helm/futures-sidecar/Chart.yaml',
      'helm/futures-sidecar/values.yaml',
      'helm/futures-sidecar/rules/futures-sidecar-rules.yaml',
      'deploy/prometheus/futures-sidecar-rules.yaml',
      'deploy/livekit-sidecar/kustomization.yaml',
      'deploy/livekit-sidecar/sidecar-patch.yaml',
    ]) {
      expect(files).toContain(f);
    }
  });

  it.each(files)('%s parses', (file) => {
    const docs = parseAllDocuments(read(file));
    const list = Array.isArray(docs) ? docs : [docs];
    for (const doc of list) expect(doc.errors.map((e) => e.message)).toEqual([]);
    expect(list.some((d) => d.contents !== null)).toBe(true);
  });

  it('Chart.yaml is a v2 application chart whose appVersion is the daemon version', () => {
    const chart = parse(read('helm/futures-sidecar/Chart.yaml')) as JsonObject;
    const pkg = JSON.parse(read('package.json')) as { version: string };
    expect(chart.apiVersion).toBe('v2');
    expect(chart.name).toBe('futures-sidecar');
    expect(chart.type).toBe('application');
    expect(chart.appVersion).toBe(pkg.version);
    expect(String(chart.version)).toMatch(/^\d+\.\d+\.\d+/);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('values.schema.json', () => {
  let validate: ValidateFunction;
  beforeAll(() => {
    validate = compileSchema();
  });

  it('is a draft-07 schema that refuses unknown top-level keys', () => {
    expect(schema().$schema).toBe('http://json-schema.org/draft-07/schema#');
    expect(schema().additionalProperties).toBe(false);
  });

  it('accepts the chart defaults', () => {
    const ok = validate(chartValues());
    expect(errorText(validate.errors)).toBe('');
    expect(ok).toBe(true);
  });

  const examples = walk(join(ROOT, 'deploy'), () => false).filter((f) => /futures-sidecar[-\w]*values\.yaml$/.test(f));
  it('has example values files in deploy/', () => {
    expect(examples.length).toBeGreaterThanOrEqual(2);
  });
  it.each(examples)('accepts the example %s over the defaults', (file) => {
    const ok = validate(coalesce(chartValues(), parse(read(file)) as JsonObject));
    expect(errorText(validate.errors)).toBe('');
    expect(ok).toBe(true);
  });

  const badDir = join(ROOT, 'test/deploy/bad-values');
  const bad = readdirSync(badDir).filter((f) => f.endsWith('.yaml')).sort();
  it('has a set of bad values files', () => {
    expect(bad.length).toBeGreaterThanOrEqual(10);
  });
  it.each(bad)('refuses bad-values/%s for the stated reason', (file) => {
    const text = readFileSync(join(badDir, file), 'utf8');
    const expected = /^# expect: (\S+)$/m.exec(text)?.[1];
    expect(expected, `${file} needs a "# expect: <instance path>" line`).toBeDefined();
    const ok = validate(coalesce(chartValues(), parse(text) as JsonObject));
    expect(ok).toBe(false);
    const paths = (validate.errors ?? []).map((e) => e.instancePath || '(root)');
    expect(paths, errorText(validate.errors)).toContain(expected);
  });
});

// ---------------------------------------------------------------------------------------------------------------

/** `.Values.a.b` paths in template text, as arrays of keys. */
function valuesPaths(text: string): string[][] {
  return [...text.matchAll(/\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)].map((m) => m[1]!.slice(1).split('.'));
}

function inValues(values: JsonObject, path: string[]): boolean {
  let node: Json = values;
  for (const key of path) {
    if (!isObject(node) || !Object.prototype.hasOwnProperty.call(node, key)) return false;
    node = node[key]!;
  }
  return true;
}

function inSchema(root: JsonObject, path: string[]): boolean {
  let node: Json | undefined = root;
  for (const key of path) {
    const props: Json | undefined = isObject(node) ? node.properties : undefined;
    if (!isObject(props) || !Object.prototype.hasOwnProperty.call(props, key)) return false;
    node = props[key];
  }
  return true;
}

describe('chart templates', () => {
  const templateDir = join(CHART, 'templates');
  const templates = readdirSync(templateDir).sort();
  const texts = new Map(templates.map((t) => [t, readFileSync(join(templateDir, t), 'utf8')]));

  it('finds the templates of both layouts and the monitoring objects', () => {
    for (const t of ['_helpers.tpl', 'deployment.yaml', 'service.yaml', 'configmap.yaml', 'secret.yaml', 'podmonitor.yaml', 'servicemonitor.yaml', 'prometheusrule.yaml', 'dashboard.yaml']) {
      expect(templates).toContain(t);
    }
  });

  it('uses only .Values paths that exist in values.yaml and values.schema.json', () => {
    const values = chartValues();
    const root = schema();
    const missing: string[] = [];
    let count = 0;
    for (const [name, text] of texts) {
      for (const path of valuesPaths(text)) {
        count++;
        if (!inValues(values, path)) missing.push(`${name}: .Values.${path.join('.')} is not in values.yaml`);
        if (!inSchema(root, path)) missing.push(`${name}: .Values.${path.join('.')} is not in values.schema.json`);
      }
    }
    expect(missing).toEqual([]);
    expect(count).toBeGreaterThan(40);
  });

  it('the path check catches a path that is not there', () => {
    const [path] = valuesPaths('{{ .Values.config.SIDECAR_PORTT | quote }}');
    expect(path).toEqual(['config', 'SIDECAR_PORTT']);
    expect(inValues(chartValues(), path!)).toBe(false);
    expect(inSchema(schema(), path!)).toBe(false);
    expect(inValues(chartValues(), ['config', 'SIDECAR_PORT'])).toBe(true);
  });

  it('includes only helpers that _helpers.tpl defines', () => {
    const defined = new Set([...texts.get('_helpers.tpl')!.matchAll(/define "([^"]+)"/g)].map((m) => m[1]));
    const used = [...texts.values()].flatMap((t) => [...t.matchAll(/include "([^"]+)"/g)].map((m) => m[1]));
    expect(used.length).toBeGreaterThan(10);
    expect(used.filter((u) => !defined.has(u))).toEqual([]);
  });

  it('reads the dashboard and the rules from files inside the chart', () => {
    expect(texts.get('dashboard.yaml')).toContain('.Files.Get "dashboards/futures-sidecar.json"');
    expect(texts.get('dashboard.yaml')).toContain('grafana_dashboard: "1"');
    expect(texts.get('prometheusrule.yaml')).toContain('.Files.Get "rules/futures-sidecar-rules.yaml"');
    expect(existsSync(join(CHART, 'dashboards/futures-sidecar.json'))).toBe(true);
  });

  it('keeps every monitoring object off by default, each with extraLabels', () => {
    const monitoring = chartValues().monitoring as Record<string, JsonObject>;
    for (const name of ['podMonitor', 'serviceMonitor', 'prometheusRule', 'grafanaDashboard']) {
      expect(monitoring[name]?.enabled, name).toBe(false);
      expect(monitoring[name], name).toHaveProperty('extraLabels');
    }
  });

  it('probes /livez and /readyz in the Deployment', () => {
    const d = texts.get('deployment.yaml')!;
    expect(d).toMatch(/livenessProbe:\s+httpGet:\s+path: \/livez/);
    expect(d).toMatch(/readinessProbe:\s+httpGet:\s+path: \/readyz/);
  });

  it('makes every daemon setting settable through values', () => {
    // Variables read by src/config.ts; the ones that are secrets or derived from `store` are handled elsewhere.
    const source = read('src/config.ts');
    const vars = new Set([...source.matchAll(/\b(?:get|int|num|bool|overrides)\('([A-Z][A-Z0-9_]+)'/g)].map((m) => m[1]!));
    expect(vars.size).toBeGreaterThan(20);
    const config = chartValues().config as JsonObject;
    const viaSecretOrStore = new Set(['LIVEKIT_KEYS', 'LIVEKIT_API_KEY', 'LIVEKIT_API_SECRET', 'SIDECAR_ADMIN_TOKEN', 'SIDECAR_TOKEN_KEY', 'SIDECAR_TOKEN_OLD_KEYS', 'SIDECAR_STORE']);
    const secretTemplate = texts.get('secret.yaml')!;
    for (const v of viaSecretOrStore) if (v !== 'LIVEKIT_API_KEY' && v !== 'LIVEKIT_API_SECRET') expect(secretTemplate + texts.get('configmap.yaml')!).toContain(`${v}:`);
    // Test switches (honoured only with --dev) are no deployment's business.
    const testOnly = new Set(['SIDECAR_TEST_IGNORE_LEASE_LOSS']);
    expect([...vars].filter((v) => !(v in config) && !viaSecretOrStore.has(v) && !testOnly.has(v))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------------

interface Panel {
  id?: number;
  type?: string;
  title?: string;
  datasource?: { type?: string; uid?: string } | string | null;
  targets?: { expr?: string; datasource?: { uid?: string } }[];
  panels?: Panel[];
  gridPos?: { h: number; w: number; x: number; y: number };
}
interface Dashboard {
  schemaVersion?: number;
  uid?: string;
  title?: string;
  panels?: Panel[];
  templating?: { list?: { name: string; type: string; query?: unknown; datasource?: { uid?: string } }[] };
}

const allPanels = (panels: Panel[]): Panel[] => panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
const usesDatasourceVariable = (ds: Panel['datasource']): boolean => {
  const uid = typeof ds === 'string' ? ds : ds?.uid;
  return uid === '${datasource}' || uid === '$datasource';
};

describe('Grafana dashboard', () => {
  const chartCopy = 'helm/futures-sidecar/dashboards/futures-sidecar.json';
  const deployCopy = 'deploy/grafana/futures-sidecar.json';
  const dashboard = JSON.parse(read(chartCopy)) as Dashboard;
  const panels = allPanels(dashboard.panels ?? []);

  it('the copy in deploy/grafana is identical to the chart\'s', () => {
    expect(read(deployCopy)).toBe(read(chartCopy));
  });

  it('has a schemaVersion, a uid, a title and panels', () => {
    expect(typeof dashboard.schemaVersion).toBe('number');
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.uid).toMatch(/^[A-Za-z0-9_-]{1,40}$/);
    expect(dashboard.title).toBeTruthy();
    expect(panels.length).toBeGreaterThan(15);
  });

  it('has unique panel ids', () => {
    const ids = panels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('has a datasource variable of type datasource for Prometheus', () => {
    const v = dashboard.templating?.list?.find((x) => x.name === 'datasource');
    expect(v).toBeDefined();
    expect(v!.type).toBe('datasource');
    expect(v!.query).toBe('prometheus');
  });

  it('uses the datasource variable in every panel, target and query variable', () => {
    const wrong: string[] = [];
    for (const p of panels) {
      if (!usesDatasourceVariable(p.datasource)) wrong.push(`panel ${p.id} ${p.title}`);
      for (const t of p.targets ?? []) if (!usesDatasourceVariable(t.datasource ?? null)) wrong.push(`target of panel ${p.id}`);
    }
    for (const v of dashboard.templating?.list ?? []) if (v.type === 'query' && !usesDatasourceVariable(v.datasource ?? null)) wrong.push(`variable ${v.name}`);
    expect(wrong).toEqual([]);
  });

  it('keeps panels on the 24-column grid without overlaps', () => {
    const cells = new Set<string>();
    for (const p of panels) {
      const g = p.gridPos!;
      expect(g.x + g.w, `panel ${p.id}`).toBeLessThanOrEqual(24);
      for (let x = g.x; x < g.x + g.w; x++)
        for (let y = g.y; y < g.y + g.h; y++) {
          expect(cells.has(`${x},${y}`), `panel ${p.id} overlaps at ${x},${y}`).toBe(false);
          cells.add(`${x},${y}`);
        }
    }
  });

  it('shows what the issue asks for', () => {
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? '')).join('\n');
    for (const needle of [
      'futures_sidecar_delegations{',
      'futures_sidecar_expiry_margin_seconds',
      'futures_sidecar_refreshes_total',
      'futures_sidecar_actions_total',
      'futures_sidecar_webhooks_total',
      'histogram_quantile(0.5, sum by (le, op) (rate(futures_sidecar_homeserver_request_duration_seconds_bucket',
      'histogram_quantile(0.99, sum by (le, op) (rate(futures_sidecar_homeserver_request_duration_seconds_bucket',
      'futures_sidecar_disconnect_to_action_seconds_bucket',
      'futures_sidecar_reconcile_corrections_total',
      'up{',
      'futures_sidecar_process_cpu_seconds_total',
      'futures_sidecar_process_resident_memory_bytes',
    ]) {
      expect(exprs).toContain(needle);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------

interface Rule {
  alert?: string;
  expr?: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rulesFile = 'deploy/prometheus/futures-sidecar-rules.yaml';
const rules = (): Rule[] => ((parse(read(rulesFile)) as { groups: { rules: Rule[] }[] }).groups ?? []).flatMap((g) => g.rules);

/** GitHub's heading anchor: lower case, spaces to dashes, most punctuation dropped. */
const anchor = (heading: string): string => heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');

describe('alert rules', () => {
  it('the plain rules file is identical to the chart\'s', () => {
    expect(read(rulesFile)).toBe(read('helm/futures-sidecar/rules/futures-sidecar-rules.yaml'));
  });

  it('every rule is an alert with an expression, a severity, a summary, a description and a runbook', () => {
    const list = rules();
    expect(list.length).toBeGreaterThanOrEqual(6);
    for (const r of list) {
      expect(r.alert, JSON.stringify(r)).toMatch(/^FuturesSidecar[A-Za-z]+$/);
      expect(r.expr?.trim()).toBeTruthy();
      expect(['critical', 'warning', 'info']).toContain(r.labels?.severity);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect(r.annotations?.description, r.alert).toBeTruthy();
      expect(r.annotations?.runbook, r.alert).toMatch(/^docs\/operations\.md#/);
    }
    expect(new Set(list.map((r) => r.alert)).size).toBe(list.length);
  });

  it('every runbook link lands on a heading of docs/operations.md', () => {
    const headings = new Set([...read('docs/operations.md').matchAll(/^#{1,6} (.+)$/gm)].map((m) => anchor(m[1]!)));
    const broken = rules().map((r) => r.annotations!.runbook!.split('#')[1]!).filter((a) => !headings.has(a));
    expect(broken).toEqual([]);
  });

  it('covers expiry margin, refresh failures, failing actions, missing and forged webhooks, and a replica down', () => {
    const byExpr = (re: RegExp): Rule[] => rules().filter((r) => re.test(r.expr ?? ''));
    expect(byExpr(/futures_sidecar_expiry_margin_seconds[^<]*<\s*\d/)).not.toHaveLength(0);
    expect(byExpr(/futures_sidecar_refreshes_total\{[^}]*outcome=~"retry\|failed"/)).not.toHaveLength(0);
    expect(byExpr(/futures_sidecar_actions_total\{[^}]*outcome="failed"/)).not.toHaveLength(0);
    expect(byExpr(/futures_sidecar_delegations\{[\s\S]*unless[\s\S]*futures_sidecar_webhooks_total/)).not.toHaveLength(0);
    expect(byExpr(/futures_sidecar_webhooks_total\{[^}]*event="unverified",outcome="rejected"/)).not.toHaveLength(0);
    expect(byExpr(/^up\{job="futures-sidecar"\} == 0$/)).not.toHaveLength(0);
  });
});

// ---------------------------------------------------------------------------------------------------------------

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan', 'atan2']);
/** Names that are not the daemon's but may appear: `up` is Prometheus' own scrape health. */
const BUILTIN_SERIES = new Set(['up']);

/**
 * Metric names in a PromQL expression: identifiers left after removing strings, label matchers, ranges, label
 * lists (by/without/on/ignoring/group_*), Grafana variables, function calls and keywords.
 */
function metricNamesIn(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\$\{[^}]*\}|\$\w+/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const rest = stripped.slice(m.index + m[0].length);
    if (/^\s*\(/.test(rest)) continue; // a function
    if (PROMQL_WORDS.has(m[0].toLowerCase())) continue;
    names.add(m[0]);
  }
  return [...names];
}

/** Metric names a Grafana query variable reads: label_values(metric{...}, label) and plain expressions. */
function variableMetricNames(query: string): string[] {
  const lv = /^\s*label_values\(\s*([^,)]+)(?:,\s*\w+)?\s*\)\s*$/.exec(query);
  if (lv) return metricNamesIn(lv[1]!);
  return /^\s*label_values\(\s*\w+\s*\)\s*$/.test(query) ? [] : metricNamesIn(query);
}

/** Every sample name /metrics can carry: the exposed families plus _bucket/_sum/_count of histograms and summaries. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\w+)/.exec(line);
    if (type) {
      names.add(type[1]!);
      if (type[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(type[1]! + s);
      if (type[2] === 'summary') for (const s of ['_sum', '_count']) names.add(type[1]! + s);
      continue;
    }
    const sample = /^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]/.exec(line);
    if (sample) names.add(sample[1]!);
  }
  return names;
}

describe('metric names in the dashboard and the alerts', () => {
  let exposed: Set<string>;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-deploy-'));
    const daemon = await buildApp(loadConfig({ SIDECAR_STORE: `sqlite:${join(dir, 'futures-sidecar.db')}`, LOG_LEVEL: 'silent' }, { dev: true }));
    await daemon.start();
    try {
      const res = await daemon.app.inject({ method: 'GET', url: '/metrics' });
      expect(res.statusCode).toBe(200);
      exposed = exposedNames(res.body);
    } finally {
      await daemon.shutdown();
    }
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const unknown = (names: Iterable<string>): string[] => [...names].filter((n) => !exposed.has(n) && !BUILTIN_SERIES.has(n));

  it('reads the daemon\'s metric families, histograms as _bucket/_sum/_count and counters with _total', () => {
    for (const n of [
      'futures_sidecar_delegations',
      'futures_sidecar_refreshes_total',
      'futures_sidecar_webhooks_total',
      'futures_sidecar_homeserver_request_duration_seconds_bucket',
      'futures_sidecar_homeserver_request_duration_seconds_count',
      'futures_sidecar_disconnect_to_action_seconds_bucket',
      'futures_sidecar_expiry_margin_seconds',
      'futures_sidecar_process_cpu_seconds_total',
      'futures_sidecar_process_resident_memory_bytes',
    ]) {
      expect(exposed.has(n), n).toBe(true);
    }
    expect(exposed.has('futures_sidecar_refreshes')).toBe(false);
  });

  it('the name extraction skips functions, label names, keywords and variables, and flags unknown names', () => {
    const expr =
      'histogram_quantile(0.99, sum by (le, op) (rate(futures_sidecar_nope_seconds_bucket{job=~"$job",op="refresh"}[$__rate_interval])))' +
      ' / on (instance) group_left (version) futures_sidecar_info unless up{job="x"} == 0 offset 5m > bool +Inf';
    expect(metricNamesIn(expr).sort()).toEqual(['futures_sidecar_info', 'futures_sidecar_nope_seconds_bucket', 'up']);
    expect(unknown(metricNamesIn(expr))).toEqual(['futures_sidecar_nope_seconds_bucket']);
    expect(variableMetricNames('label_values(futures_sidecar_info{job=~"$job"}, instance)')).toEqual(['futures_sidecar_info']);
  });

  it('the dashboard uses only names the daemon serves (and up)', () => {
    const dashboard = JSON.parse(read('helm/futures-sidecar/dashboards/futures-sidecar.json')) as Dashboard;
    const used = new Set<string>();
    for (const p of allPanels(dashboard.panels ?? [])) for (const t of p.targets ?? []) for (const n of metricNamesIn(t.expr ?? '')) used.add(n);
    for (const v of dashboard.templating?.list ?? []) {
      if (v.type !== 'query') continue;
      const q = typeof v.query === 'string' ? v.query : ((v.query as { query?: string } | undefined)?.query ?? '');
      for (const n of variableMetricNames(q)) used.add(n);
    }
    expect(used.size).toBeGreaterThan(10);
    expect(unknown(used)).toEqual([]);
  });

  it('the alert rules use only names the daemon serves (and up)', () => {
    const used = new Set(rules().flatMap((r) => metricNamesIn(r.expr ?? '')));
    expect(used.size).toBeGreaterThan(5);
    expect(unknown(used)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('LiveKit-pod sidecar (deploy/livekit-sidecar)', () => {
  type Container = {
    name: string;
    restartPolicy?: string;
    ports?: { name: string; containerPort: number }[];
    envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
    livenessProbe?: { httpGet?: { path: string } };
    readinessProbe?: unknown;
    startupProbe?: { httpGet?: { path: string } };
  };
  const podSpec = (file: string): { initContainers?: Container[]; containers?: Container[] } =>
    (parse(read(file)) as { spec: { template: { spec: { initContainers?: Container[]; containers?: Container[] } } } }).spec.template.spec;
  const native = podSpec('deploy/livekit-sidecar/sidecar-patch.yaml').initContainers?.find((c) => c.name === 'futures-sidecar');
  const plain = podSpec('deploy/livekit-sidecar/sidecar-patch-plain.yaml').containers?.find((c) => c.name === 'futures-sidecar');
  const sidecarValues = coalesce(chartValues(), parse(read('deploy/livekit-sidecar/futures-sidecar-values.yaml')) as JsonObject);
  const port = (sidecarValues.config as JsonObject).SIDECAR_PORT;

  it('is a native sidecar (init container with restartPolicy: Always) in the default patch', () => {
    expect(native).toBeDefined();
    expect(native!.restartPolicy).toBe('Always');
    expect(plain).toBeDefined();
    expect(plain!.restartPolicy).toBeUndefined();
  });

  it.each([
    ['native', () => native!],
    ['plain', () => plain!],
  ])('the %s variant probes /livez only, so its store never takes the SFU out of service', (_name, get) => {
    const c = get();
    expect(c.livenessProbe?.httpGet?.path).toBe('/livez');
    expect(c.startupProbe?.httpGet?.path).toBe('/livez');
    expect(c.readinessProbe).toBeUndefined();
    expect(JSON.stringify(c)).not.toContain('/readyz');
  });

  it.each([
    ['native', () => native!],
    ['plain', () => plain!],
  ])('the %s variant reads the chart\'s ConfigMap and Secret and listens on the configured port', (_name, get) => {
    const c = get();
    expect(sidecarValues.mode).toBe('livekit-sidecar');
    expect(c.envFrom?.map((e) => e.configMapRef?.name ?? e.secretRef?.name)).toEqual(['futures-sidecar', 'futures-sidecar']);
    const p = c.ports?.find((x) => x.name === (sidecarValues.livekitSidecar as JsonObject).portName);
    expect(p?.containerPort).toBe(port);
  });

  it('LiveKit\'s webhook URL reaches the sidecar on loopback at that port', () => {
    const lk = parse(read('deploy/livekit-sidecar/livekit-values.yaml')) as { livekit: { webhook: { api_key: string; urls: string[] }; keys: Record<string, string> } };
    expect(lk.livekit.webhook.urls).toContain(`http://127.0.0.1:${port}/livekit/webhook`);
    expect(Object.keys(lk.livekit.keys)).toContain(lk.livekit.webhook.api_key);
    const ours = String((sidecarValues.secret as JsonObject).livekitKeys);
    expect(ours).toContain(`${lk.livekit.webhook.api_key}:`);
  });

  it('the kustomization patches LiveKit\'s Deployment with the native sidecar', () => {
    const k = parse(read('deploy/livekit-sidecar/kustomization.yaml')) as { patches: { path: string; target: { kind: string } }[]; helmCharts: { name: string }[] };
    expect(k.helmCharts.map((c) => c.name)).toContain('livekit-server');
    expect(k.patches).toContainEqual(expect.objectContaining({ path: 'sidecar-patch.yaml', target: expect.objectContaining({ kind: 'Deployment' }) }));
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile');
  const lines = dockerfile.split('\n').filter((l) => !l.trim().startsWith('#'));
  const stages = lines.filter((l) => /^FROM /i.test(l));

  it('builds in stages on a slim Node 22 or 24 image', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/^ARG NODE_MAJOR=(22|24)$/m);
    for (const s of stages) expect(s).toMatch(/^FROM (node:\$\{NODE_MAJOR\}-bookworm-slim|\w+) AS \w+/);
  });

  it('installs the toolchain for better-sqlite3, builds, and ships production dependencies only', () => {
    expect(dockerfile).toMatch(/apt-get install[^\n]*python3 make g\+\+/);
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
    expect(dockerfile).toMatch(/RUN npm run build/);
    // `npm run build` emits dist/src/main.js because the build's rootDir is the repository and outDir dist.
    const ts = JSON.parse(read('tsconfig.json')) as { compilerOptions: { outDir: string; rootDir: string } };
    expect([ts.compilerOptions.outDir, ts.compilerOptions.rootDir]).toEqual(['dist', '.']);
  });

  it('runs node directly under tini as a non-root user, with /data and port 8089', () => {
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    expect(runtime).toMatch(/apt-get install[^\n]*\btini\b/);
    expect(runtime).toMatch(/^ENTRYPOINT \["\/usr\/bin\/tini", "--"\]$/m);
    expect(runtime).toMatch(/^CMD \["node", "dist\/src\/main\.js"\]$/m);
    expect(runtime).not.toMatch(/npm start/);
    expect(runtime).toMatch(/^USER (?!0\b|root\b)\S+$/m);
    expect(runtime).toMatch(/^EXPOSE 8089$/m);
    expect(runtime).toMatch(/SIDECAR_STORE=sqlite:\/data\/futures-sidecar\.db/);
    expect(runtime).toMatch(/^VOLUME \["\/data"\]$/m);
    expect(runtime).toMatch(/^COPY package\.json/m); // "type": "module" for the compiled ESM
  });

  it('.dockerignore keeps host node_modules, data and git out of the build context', () => {
    const ignore = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    expect(ignore[0]).toBe('*');
    expect(ignore.filter((l) => l.startsWith('!'))).toEqual(expect.arrayContaining(['!package.json', '!package-lock.json', '!src/']));
    expect(ignore.some((l) => /^!(node_modules|data|\.git)/.test(l))).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('docs/operations.md', () => {
  const doc = read('docs/operations.md');

  it('documents every setting the daemon reads', () => {
    const vars = [...read('src/config.ts').matchAll(/\b(?:get|int|num|bool|overrides)\('([A-Z][A-Z0-9_]+)'/g)].map((m) => m[1]!);
    expect(vars.filter((v) => !doc.includes(`\`${v}\``))).toEqual([]);
  });

  it('gives the LiveKit webhook config, the alias and the sizing rule', () => {
    expect(doc).toContain('/livekit/webhook');
    expect(doc).toContain('/sfu_webhook');
    expect(doc).toContain('api_key');
    expect(doc).toMatch(/3,600 x 0\.5 x/);
    expect(doc).toMatch(/appendfsync everysec/);
  });
});
