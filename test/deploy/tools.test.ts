/**
 * The chart and the LiveKit-pod patch checked by the tools an operator runs first (issue 20): `helm lint` and
 * `helm template` with the chart's defaults and with every values preset under deploy/, the schema refusing bad
 * values through `helm lint`, and `kustomize build` of the livekit-sidecar kustomization. The tools come from
 * `npm run tools:install`; without them these tests skip loudly (fail with SIDECAR_TEST_REQUIRE_DEPLOY_TOOLS=1).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { PEERS_BIN, REPO_ROOT, deployToolsEnabled, runTool } from '../helpers/deploy-tools.js';

const CHART = 'helm/futures-sidecar';
const read = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');
// The release name the livekit-sidecar patch expects (it reads the ConfigMap and Secret by that name).
const RELEASE = 'futures-sidecar';
const NAMESPACE = 'livekit';

type K8s = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [key: string]: any };
type Container = {
  name: string;
  image?: string;
  restartPolicy?: string;
  ports?: { name: string; containerPort: number }[];
  env?: { name: string; value?: string; valueFrom?: any }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  startupProbe?: { httpGet?: { path: string; port: string | number } };
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  lifecycle?: unknown;
};

function walk(dir: string): string[] {
  return readdirSync(join(REPO_ROOT, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));
}

/**
 * Every values preset for this chart under deploy/: files named *futures-sidecar*values*.yaml. Presets added later
 * (lk-jwt-service migration, application-service mode) are picked up by that name; a values file that sets the
 * chart's `mode` under another name fails the check below instead of being left out.
 */
const valuesFiles = walk('deploy').filter((f) => /values[^/]*\.ya?ml$/.test(f)).sort();
const PRESETS = valuesFiles.filter((f) => /futures-sidecar[^/]*values[^/]*\.ya?ml$/.test(f));

const parseDocs = (text: string): K8s[] =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as K8s | null)
    .filter((d): d is K8s => d !== null);

const podSpecOf = (o: K8s): { containers: Container[]; initContainers?: Container[]; hostNetwork?: boolean } => o.spec.template.spec;

/** Names of the variables that hold secrets: they may only reach a container through a Secret. */
const SECRET_VARS = ['LIVEKIT_KEYS', 'LIVEKIT_API_KEY', 'LIVEKIT_API_SECRET', 'LIVEKIT_SECRET', 'LIVEKIT_AS_TOKEN', 'LIVEKIT_HS_TOKEN', 'SIDECAR_ADMIN_TOKEN', 'SIDECAR_TOKEN_KEY', 'SIDECAR_TOKEN_OLD_KEYS', 'SIDECAR_STORE'];

/** No container takes a secret variable as a plain value, and no ConfigMap carries one (SQLite's path is no secret). */
function plainSecretsIn(objects: K8s[]): string[] {
  const found: string[] = [];
  for (const o of objects) {
    if (o.kind === 'ConfigMap') {
      for (const [k, v] of Object.entries((o.data ?? {}) as Record<string, string>)) {
        if (SECRET_VARS.includes(k) && !(k === 'SIDECAR_STORE' && v.startsWith('sqlite:'))) found.push(`ConfigMap ${o.metadata.name} holds ${k}`);
      }
    }
    if (!o.spec?.template?.spec) continue;
    const pod = podSpecOf(o);
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      for (const e of c.env ?? []) if (SECRET_VARS.includes(e.name) && (e.value !== undefined || !e.valueFrom?.secretKeyRef)) found.push(`${o.kind} ${o.metadata.name} container ${c.name} sets ${e.name} without a Secret ref`);
    }
  }
  return found;
}

describe.runIf(deployToolsEnabled('helm lint/template', 'helm'))('helm lint and helm template', () => {
  const helm = (args: string[]) => runTool('helm', args);
  const template = (values: string[], set: string[] = []) => {
    const r = helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, ...values.flatMap((v) => ['-f', v]), ...set.flatMap((s) => ['--set', s])]);
    expect(r.status, r.output).toBe(0);
    return { text: r.stdout, objects: parseDocs(r.stdout) };
  };
  // What a bare install must still be told: the chart refuses to render without them.
  const REQUIRED = [
    'image.repository=registry.example.com/futures-sidecar',
    'config.LIVEKIT_URL=http://livekit-livekit-server.livekit.svc:80',
    'config.SIDECAR_HOMESERVERS=https://matrix.example.org',
    'secret.livekitKeys=APIdefault: a-secret-only-the-test-knows-0123',
  ];

  it('is the pinned helm v4', () => {
    const r = helm(['version', '--short']);
    expect(r.status, r.output).toBe(0);
    expect(r.stdout).toMatch(/^v4\.3/);
  });

  it('finds the presets, and every futures-sidecar values file under deploy/ is named as one', () => {
    expect(PRESETS).toEqual(expect.arrayContaining(['deploy/standalone/futures-sidecar-values.yaml', 'deploy/standalone/futures-sidecar-redis-values.yaml', 'deploy/livekit-sidecar/futures-sidecar-values.yaml', 'deploy/lk-jwt-service/futures-sidecar-values.yaml', 'deploy/appservice/futures-sidecar-values.yaml']));
    const misnamed = valuesFiles.filter((f) => !PRESETS.includes(f) && 'mode' in ((parse(read(f)) as Record<string, unknown> | null) ?? {}));
    expect(misnamed).toEqual([]);
  });

  it('lints the chart with its default values', () => {
    const r = helm(['lint', '--strict', CHART]);
    expect(r.status, r.output).toBe(0);
    expect(r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
  });

  it('refuses to render the bare defaults, naming what is required', () => {
    const r = helm(['template', RELEASE, CHART]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/secret\.livekitKeys is required|image\.repository is required|SIDECAR_HOMESERVERS is required|LIVEKIT_URL is required/);
  });

  it('renders the defaults plus the required settings: a probed Deployment, no monitoring objects, secrets by ref', () => {
    const { text, objects } = template([], REQUIRED);
    const kinds = objects.map((o) => o.kind).sort();
    expect(kinds).toEqual(['ConfigMap', 'Deployment', 'PersistentVolumeClaim', 'Secret', 'Service', 'ServiceAccount']);
    const deployment = objects.find((o) => o.kind === 'Deployment')!;
    const c = podSpecOf(deployment).containers.find((x) => x.name === 'futures-sidecar')!;
    expect(c.startupProbe?.httpGet).toEqual({ path: '/livez', port: 'http' });
    expect(c.livenessProbe?.httpGet).toEqual({ path: '/livez', port: 'http' });
    expect(c.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'http' });
    expect(text).not.toContain('a-secret-only-the-test-knows-0123');
    expect(plainSecretsIn(objects)).toEqual([]);
  });

  it.each([
    ['monitoring.podMonitor.enabled=true', 'PodMonitor'],
    ['monitoring.serviceMonitor.enabled=true', 'ServiceMonitor'],
    ['monitoring.prometheusRule.enabled=true', 'PrometheusRule'],
  ])('renders a monitoring object only when asked: %s', (flag, kind) => {
    expect(template([], REQUIRED).objects.filter((o) => o.kind === kind)).toHaveLength(0);
    expect(template([], [...REQUIRED, flag]).objects.filter((o) => o.kind === kind)).toHaveLength(1);
  });

  describe.each(PRESETS)('preset %s', (preset) => {
    const values = (parse(read(preset)) ?? {}) as Record<string, any>;
    const mode: string = values.mode ?? 'standalone';
    const existingSecret: string = values.secret?.existingSecret ?? '';
    const asked = (key: string): boolean => values.monitoring?.[key]?.enabled === true;
    // Secrets the test adds (where the chart creates the Secret), so the "never in plain values" check has a value
    // to look for even when the preset sets none.
    const adminToken = `admin-${randomBytes(12).toString('hex')}`;
    const tokenKey = randomBytes(32).toString('base64');
    const extra = existingSecret ? [] : [`secret.adminToken=${adminToken}`, `secret.tokenKey=${tokenKey}`];

    it('passes helm lint --strict', () => {
      const r = helm(['lint', '--strict', CHART, '-f', preset]);
      expect(r.status, r.output).toBe(0);
      expect(r.stdout).toContain('0 chart(s) failed');
    });

    it('renders with helm template: probes, monitoring as asked, dashboard, secrets only from Secret refs', () => {
      const { text, objects } = template([preset], extra);
      const byKind = (kind: string) => objects.filter((o) => o.kind === kind);
      const configMap = byKind('ConfigMap').find((o) => !o.metadata.labels?.grafana_dashboard)!;
      expect(configMap, 'the env ConfigMap').toBeDefined();
      const secretName = existingSecret || byKind('Secret')[0]?.metadata.name;
      expect(secretName, 'a Secret, created or named').toBeTruthy();
      expect(byKind('Secret')).toHaveLength(existingSecret ? 0 : 1);

      if (mode === 'standalone') {
        const [deployment] = byKind('Deployment');
        expect(deployment, 'standalone renders its Deployment').toBeDefined();
        const c = podSpecOf(deployment!).containers.find((x) => x.name === 'futures-sidecar')!;
        expect(c.startupProbe?.httpGet?.path).toBe('/livez');
        expect(c.livenessProbe?.httpGet?.path).toBe('/livez');
        expect(c.readinessProbe?.httpGet?.path).toBe('/readyz');
        expect(c.envFrom).toEqual(expect.arrayContaining([{ configMapRef: { name: configMap.metadata.name } }, { secretRef: { name: secretName } }]));
      } else {
        // The LiveKit pod is rendered by the kustomize patch (below); the chart gives it the ConfigMap and Secret
        // under the names the patch reads.
        expect(byKind('Deployment')).toHaveLength(0);
        const patch = parse(read('deploy/livekit-sidecar/sidecar-patch.yaml')) as K8s;
        const sidecar = podSpecOf(patch).initContainers!.find((x) => x.name === 'futures-sidecar')!;
        expect(sidecar.envFrom).toEqual([{ configMapRef: { name: configMap.metadata.name } }, { secretRef: { name: secretName } }]);
      }

      expect(byKind('PodMonitor')).toHaveLength(asked('podMonitor') ? 1 : 0);
      expect(byKind('ServiceMonitor')).toHaveLength(asked('serviceMonitor') ? 1 : 0);
      expect(byKind('PrometheusRule')).toHaveLength(asked('prometheusRule') ? 1 : 0);
      for (const m of [...byKind('PodMonitor'), ...byKind('ServiceMonitor')]) {
        const endpoints = m.spec.podMetricsEndpoints ?? m.spec.endpoints;
        expect(endpoints[0].path).toBe('/metrics');
        expect(endpoints[0].relabelings).toContainEqual(expect.objectContaining({ targetLabel: 'job', replacement: 'futures-sidecar' }));
      }
      for (const rule of byKind('PrometheusRule')) {
        const shipped = (parse(read(`${CHART}/rules/futures-sidecar-rules.yaml`)) as { groups: { rules: { alert: string }[] }[] }).groups.flatMap((g) => g.rules.map((r) => r.alert));
        const disabled: string[] = values.monitoring?.prometheusRule?.disabledAlerts ?? [];
        const rendered = (rule.spec.groups as { rules: { alert?: string }[] }[]).flatMap((g) => g.rules.map((r) => r.alert));
        expect(rendered).toEqual(shipped.filter((a) => !disabled.includes(a)));
      }
      const dashboards = byKind('ConfigMap').filter((o) => o.metadata.labels?.grafana_dashboard === '1');
      expect(dashboards).toHaveLength(asked('grafanaDashboard') ? 1 : 0);
      for (const d of dashboards) expect(JSON.parse(d.data['futures-sidecar.json'])).toEqual(JSON.parse(read(`${CHART}/dashboards/futures-sidecar.json`)));

      expect(plainSecretsIn(objects)).toEqual([]);
      const secrets = [
        ...String(values.secret?.livekitKeys ?? '')
          .split('\n')
          .map((l) => l.split(':').slice(1).join(':').trim()),
        values.store?.redis?.url,
        ...(extra.length ? [adminToken, tokenKey] : []),
      ].filter((s): s is string => typeof s === 'string' && s.length > 0);
      for (const s of secrets) expect(text.includes(s), `a secret value of ${preset} appears in plain text`).toBe(false);
      if (!existingSecret) {
        const data = byKind('Secret')[0]!.data as Record<string, string>;
        for (const s of extra.length ? [adminToken, tokenKey] : []) expect(Object.values(data).map((v) => Buffer.from(v, 'base64').toString())).toContain(s);
      }
    });
  });

  it('application-service preset: all four AS settings reach the daemon, the two tokens only through secretKeyRef', () => {
    const { objects } = template(['deploy/appservice/futures-sidecar-values.yaml']);
    const deployment = objects.find((o) => o.kind === 'Deployment')!;
    const env = podSpecOf(deployment).containers.find((x) => x.name === 'futures-sidecar')!.env ?? [];
    const byName = new Map(env.map((e) => [e.name, e]));
    expect([...byName.keys()]).toEqual(expect.arrayContaining(['LIVEKIT_AS_TOKEN', 'LIVEKIT_HS_TOKEN', 'LIVEKIT_HS_SERVER_NAME', 'LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS']));
    for (const name of ['LIVEKIT_AS_TOKEN', 'LIVEKIT_HS_TOKEN']) {
      const e = byName.get(name)!;
      expect(e.value, `${name} as a plain value`).toBeUndefined();
      expect(e.valueFrom?.secretKeyRef, `${name} from a Secret`).toEqual({ name: expect.any(String), key: expect.any(String) });
    }
    expect(byName.get('LIVEKIT_AS_TOKEN')!.valueFrom.secretKeyRef.key).not.toBe(byName.get('LIVEKIT_HS_TOKEN')!.valueFrom.secretKeyRef.key);
    // SIDECAR_HOMESERVERS names the registered homeserver, so the daemon may call it as the user.
    const configMap = objects.find((o) => o.kind === 'ConfigMap' && !o.metadata.labels?.grafana_dashboard)!;
    expect(String(configMap.data.SIDECAR_HOMESERVERS).split(/[\s,]+/)).toContain(byName.get('LIVEKIT_HS_SERVER_NAME')!.value);
    expect(Number(byName.get('LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS')!.value)).toBeGreaterThanOrEqual(0);
  });

  const badDir = 'test/deploy/bad-values';
  const bad = readdirSync(join(REPO_ROOT, badDir)).filter((f) => f.endsWith('.yaml')).sort();
  it.each(bad)('helm lint refuses bad-values/%s at the stated path', (file) => {
    const text = read(join(badDir, file));
    const expected = /^# expect: (\S+)$/m.exec(text)![1]!;
    const r = helm(['lint', '--strict', CHART, '-f', join(badDir, file)]);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toContain("values don't meet the specifications of the schema");
    expect(r.stdout).toContain(`at '${expected === '(root)' ? '' : expected}'`);
  });
});

describe.runIf(deployToolsEnabled('kustomize build', 'kustomize'))('kustomize: LiveKit pod with the sidecar', () => {
  const dir = mkdtempSync(join(tmpdir(), 'futures-sidecar-kustomize-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const fixture = 'test/deploy/fixtures/livekit-server-deployment.yaml';
  const preset = parse(read('deploy/livekit-sidecar/futures-sidecar-values.yaml')) as { config: { SIDECAR_PORT: number }; livekitSidecar: { portName: string } };

  /** The LiveKit Deployment after the patch, checked for what the sidecar layout promises. */
  function patchedPod(rendered: string) {
    const objects = parseDocs(rendered);
    const livekit = objects.find((o) => o.kind === 'Deployment' && o.metadata.labels?.['app.kubernetes.io/name'] === 'livekit-server');
    expect(livekit, rendered).toBeDefined();
    expect(plainSecretsIn(objects)).toEqual([]);
    return { objects, deployment: livekit!, pod: podSpecOf(livekit!) };
  }

  function expectSidecar(c: Container | undefined) {
    expect(c, 'the futures-sidecar container').toBeDefined();
    expect(c!.image).toBe('registry.example.com/futures-sidecar:0.1.0');
    expect(c!.startupProbe?.httpGet?.path).toBe('/livez');
    expect(c!.livenessProbe?.httpGet?.path).toBe('/livez');
    expect(c!.readinessProbe).toBeUndefined();
    expect(c!.envFrom).toEqual([{ configMapRef: { name: RELEASE } }, { secretRef: { name: RELEASE } }]);
    expect(c!.ports).toContainEqual(expect.objectContaining({ name: preset.livekitSidecar.portName, containerPort: preset.config.SIDECAR_PORT }));
  }

  it('builds deploy/livekit-sidecar/kustomization.yaml (its helm chart swapped for a local stand-in) with the native sidecar first', () => {
    // The kustomization's helmCharts entry downloads LiveKit's chart; everything else (patch, target, images,
    // namespace) is the file as shipped.
    const k = parse(read('deploy/livekit-sidecar/kustomization.yaml')) as Record<string, unknown>;
    expect(k.helmCharts).toBeDefined();
    delete k.helmCharts;
    k.resources = ['livekit-server.yaml'];
    writeFileSync(join(dir, 'kustomization.yaml'), stringify(k));
    for (const f of ['sidecar-patch.yaml', 'sidecar-patch-plain.yaml']) copyFileSync(join(REPO_ROOT, 'deploy/livekit-sidecar', f), join(dir, f));
    copyFileSync(join(REPO_ROOT, fixture), join(dir, 'livekit-server.yaml'));
    const r = runTool('kustomize', ['build', dir]);
    expect(r.status, r.output).toBe(0);
    const { objects, deployment, pod } = patchedPod(r.stdout);
    expect(objects.every((o) => o.metadata.namespace === 'livekit')).toBe(true);
    // Native sidecar: an init container with restartPolicy Always starts (and passes its startup probe) before
    // LiveKit's container and is stopped after it.
    expect(pod.initContainers?.map((c) => c.name)).toEqual(['futures-sidecar']);
    expect(pod.initContainers![0]!.restartPolicy).toBe('Always');
    expectSidecar(pod.initContainers![0]);
    expect(pod.containers.map((c) => c.name)).toEqual(['livekit-server']);
    expect(pod.hostNetwork).toBe(true);
    expect(deployment.spec.template.metadata.annotations?.['kubectl.kubernetes.io/default-container']).toBe('livekit-server');
  });

  it.each([
    ['sidecar-patch.yaml', 'native'],
    ['sidecar-patch-plain.yaml', 'plain'],
  ])('post-render.sh applies %s to a rendered LiveKit chart (%s)', (patch, variant) => {
    const out = spawnPostRender(patch, read(fixture));
    expect(out.status, out.output).toBe(0);
    const { deployment, pod } = patchedPod(out.stdout);
    if (variant === 'native') {
      expect(pod.initContainers![0]!.restartPolicy).toBe('Always');
      expectSidecar(pod.initContainers![0]);
      expect(pod.containers.map((c) => c.name)).toEqual(['livekit-server']);
    } else {
      expect(pod.initContainers ?? []).toEqual([]);
      // A strategic merge puts the patch's container first; kubectl still defaults to LiveKit's (annotation).
      expect(pod.containers.map((c) => c.name).sort()).toEqual(['futures-sidecar', 'livekit-server']);
      expect(deployment.spec.template.metadata.annotations?.['kubectl.kubernetes.io/default-container']).toBe('livekit-server');
      const c = pod.containers.find((x) => x.name === 'futures-sidecar');
      expectSidecar(c);
      expect(c?.lifecycle).toHaveProperty('preStop');
    }
  });
});

/** deploy/livekit-sidecar/post-render.sh as Helm runs it: the rendered chart on stdin, kustomize found on PATH. */
function spawnPostRender(patch: string, input: string) {
  const r = spawnSync('sh', [join(REPO_ROOT, 'deploy/livekit-sidecar/post-render.sh')], {
    input,
    encoding: 'utf8',
    env: { ...process.env, SIDECAR_PATCH: patch, PATH: `${PEERS_BIN}:${process.env.PATH ?? ''}` },
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, output: `${r.stdout}\n${r.stderr}` };
}
