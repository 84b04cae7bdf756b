import { writeFileSync } from 'node:fs';
import { FULL_SOAK, SHORT_SOAK, soakBoundMs, type SoakOptions } from './plan.js';
import { formatReport, runSoak } from './soak.js';

const USAGE = `npm run soak -- [flags]      (loopback only; stops by itself within the bound it prints)
  --participants N     participants (2000)              --rooms N          LiveKit rooms (0 = one per 50)
  --delayed-share F    share on delayed_events (0.5)    --seed N           plan seed (1)
  --loss F --dup F --reorder F   webhook loss / duplication / swap rates (0.2 / 0.1 / 0.1)
  --adversarial        also orders LiveKit never produces (late duplicates, swaps within a participant)
  --outage-s S --outage-at-s S   homeserver outage length and start (60 / 150)
  --rate-5xx F --rate-429 F      injected answers per homeserver call (0.02 / 0.002)
  --hs-limit N         the homeserver's own limit, calls/s per IP, burst 5N; 0 = none (100, as --hs-rate)
  --hs-burst N         that limit's burst (after --hs-limit)
  --kills N            SIGKILL + restart of the daemon (3)
  --timeout-s S        future timeout (180)             --grace-ms MS      reconnect grace (15000)
  --reconcile-ms MS    reconcile interval (2000)        --join-timeout-s S join deadline (30)
  --hs-rate N          SIDECAR_HOMESERVER_RATE (100)    --drive-s S        arrivals and departures (420)
  --max-s S            hard bound (derived)             --livekit-url URL  RoomService (the fake)
  --log-level L        daemon log level (info)          --work-dir DIR     SQLite file and daemon log
  --progress-s S       progress line period (10)        --json FILE        also write the report as JSON
  --short              start from the npm-test figures instead of the issue's
  --snapshot-before-kill   log the daemon's in-memory history of departed participants before each SIGKILL`;

function parse(argv: string[]): { options: SoakOptions; json: string | null } {
  const o: SoakOptions = { ...(argv.includes('--short') ? SHORT_SOAK : FULL_SOAK) };
  let json: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === '--short') continue;
    if (flag === '--adversarial') {
      o.adversarial = true;
      continue;
    }
    if (flag === '--snapshot-before-kill') {
      o.snapshotBeforeKill = true;
      continue;
    }
    if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    }
    const raw = argv[++i];
    if (raw === undefined) fail(`${flag} needs a value`);
    const num = (): number => {
      const n = Number(raw);
      if (!Number.isFinite(n) || n < 0) fail(`${flag} wants a number >= 0, got ${JSON.stringify(raw)}`);
      return n;
    };
    const rate = (): number => {
      const n = num();
      if (n > 1) fail(`${flag} is a probability, got ${n}`);
      return n;
    };
    switch (flag) {
      case '--participants': o.participants = Math.round(num()); break;
      case '--rooms': o.rooms = Math.round(num()); break;
      case '--delayed-share': o.delayedEventsShare = rate(); break;
      case '--seed': o.seed = Math.round(num()); break;
      case '--loss': o.loss = rate(); break;
      case '--dup': o.dup = rate(); break;
      case '--reorder': o.reorder = rate(); break;
      case '--outage-s': o.outageMs = num() * 1000; break;
      case '--outage-at-s': o.outageAtMs = num() * 1000; break;
      case '--rate-5xx': o.rate5xx = rate(); break;
      case '--rate-429': o.rate429 = rate(); break;
      case '--hs-limit': o.homeserverLimit = num() > 0 ? { perSecond: num(), burst: 5 * num() } : null; break;
      case '--hs-burst':
        if (!o.homeserverLimit) fail('--hs-burst needs --hs-limit first');
        o.homeserverLimit = { ...o.homeserverLimit, burst: Math.max(1, Math.round(num())) };
        break;
      case '--kills': o.kills = Math.round(num()); break;
      case '--timeout-s': o.timeoutMs = num() * 1000; break;
      case '--grace-ms': o.graceMs = Math.round(num()); break;
      case '--reconcile-ms': o.reconcileIntervalMs = Math.round(num()); break;
      case '--join-timeout-s': o.joinTimeoutMs = num() * 1000; break;
      case '--hs-rate': o.homeserverRate = num(); break;
      case '--drive-s': o.driveMs = num() * 1000; break;
      case '--max-s': o.maxDurationMs = num() * 1000; break;
      case '--livekit-url': o.livekitUrl = raw; break;
      case '--log-level': o.logLevel = raw; break;
      case '--work-dir': o.workDir = raw; break;
      case '--progress-s': o.progressEveryMs = Math.max(1, num()) * 1000; break;
      case '--json': json = raw; break;
      default: fail(`unknown flag ${flag}`);
    }
  }
  for (const [name, host] of [['--livekit-url', o.livekitUrl]] as const) {
    if (host !== null && !/^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(\/|$)/.test(host)) fail(`${name} must be a loopback URL`);
  }
  if (o.outageMs > 0 && o.outageMs >= o.timeoutMs) console.warn(`note: the outage (${o.outageMs / 1000} s) is not shorter than the futures' timeout (${o.timeoutMs / 1000} s); expiries are then expected`);
  return { options: o, json };
}

function fail(message: string): never {
  console.error(`soak: ${message}\n\n${USAGE}`);
  process.exit(2);
}

async function main(): Promise<void> {
  const { options, json } = parse(process.argv.slice(2));
  const bound = soakBoundMs(options);
  console.log(
    `soak: ${options.participants} participants, loss ${options.loss}, dup ${options.dup}, reorder ${options.reorder}, ` +
      `${options.outageMs / 1000} s homeserver outage, ${options.kills} SIGKILLs, futures timeout ${options.timeoutMs / 1000} s, seed ${options.seed}; ` +
      `stops by itself within ${Math.ceil(bound / 1000)} s`,
  );
  // Whatever happens inside, the process ends within the bound plus a margin for shutting the daemon down.
  setTimeout(() => {
    console.error('soak: the bound passed without a report; exiting');
    process.exit(3);
  }, bound + 30_000).unref();
  const report = await runSoak({ ...options, onProgress: (line) => console.log(line) });
  console.log('\n' + formatReport(report));
  if (json) writeFileSync(json, JSON.stringify(report, null, 2));
  process.exit(report.ok ? 0 : 1);
}

main().catch((err: unknown) => {
  console.error('soak failed:', err instanceof Error ? err.stack ?? err.message : err);
  process.exit(1);
});
