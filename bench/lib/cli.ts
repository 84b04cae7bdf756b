import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBuilt, ROOT } from './daemon.js';
import { summaryTable, writeReport, type BenchOptions, type Section } from './report.js';

export function isMain(metaUrl: string): boolean {
  return process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(metaUrl);
}

export function logger(prefix: string): (line: string) => void {
  return (line) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${prefix}: ${line}`);
}

/** Runs one benchmark and stamps its section with its duration and the machine's load around it. */
export async function timed(run: (o: BenchOptions) => Promise<Section>, opts: BenchOptions): Promise<Section> {
  const before = loadavg()[0]!;
  const started = Date.now();
  const section = await run(opts);
  section.seconds = (Date.now() - started) / 1000;
  section.loadAvg = [before, loadavg()[0]!];
  section.revision = revision();
  return section;
}

/** The commit measured, and whether src/ differed from it. */
function revision(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head} with uncommitted changes in src/` : head;
  } catch {
    return 'unknown';
  }
}

/** `npx tsx bench/<file>.ts [--quick] [--write]`: one benchmark on its own; `--write` merges it into the report. */
export async function runAlone(name: string, metaUrl: string, run: (o: BenchOptions) => Promise<Section>): Promise<void> {
  const argv = process.argv.slice(2);
  const log = logger(name);
  ensureBuilt(log);
  const section = await timed(run, { log, quick: argv.includes('--quick') });
  console.log(`## ${section.title}\n\n${summaryTable([section])}\n\n${section.body}`);
  if (argv.includes('--write')) {
    const rel = fileURLToPath(metaUrl).slice(ROOT.length + 1);
    writeReport([section], `npx tsx ${rel} --write`);
  }
  process.exit(0);
}
