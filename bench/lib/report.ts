import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ROOT } from './daemon.js';
import { describeMachine, machineInfo, type MachineInfo } from './machine.js';

type Verdict = 'met' | 'missed' | 'reported' | 'pending';

/** One line of the summary table: a figure next to its target. */
interface SummaryRow {
  measure: string;
  result: string;
  target: string;
  aim?: string;
  verdict: Verdict;
}

/** What one benchmark contributes to docs/benchmarks.md. */
export interface Section {
  name: string;
  title: string;
  ranAt: string;
  seconds: number;
  /** 1-minute load average before and after: other work on the machine shows here. */
  loadAvg?: [number, number];
  /** `git rev-parse --short HEAD`, noting uncommitted changes in src/. */
  revision?: string;
  /** The command whose run produced this section. */
  command?: string;
  rows: SummaryRow[];
  /** Markdown: method, the per-run table, findings. */
  body: string;
}

export interface BenchOptions {
  log: (line: string) => void;
  /** Fewer repetitions and smaller sizes: a smoke test of the benchmark itself, not a measurement. */
  quick: boolean;
}

export const RESULTS = join(ROOT, 'bench/results/latest.json');
/** Hand-written analysis per benchmark (`bench/notes/<name>.md`), kept across runs and shown under its figures. */
const NOTES = join(ROOT, 'bench/notes');
export const DOC = join(ROOT, 'docs/benchmarks.md');

interface Stored {
  machine: MachineInfo;
  command: string;
  sections: Record<string, Section>;
}

const ORDER = ['intake', 'scale', 'latency', 'load', 'burst', 'replicas', 'appservice', 'token', 'rigleave'] as const;

const VERDICT: Record<Verdict, string> = { met: 'met', missed: '**missed**', reported: 'reported', pending: 'pending' };

export function summaryTable(sections: Section[]): string {
  const lines = ['| benchmark | measure | result | target | aim (contract §5) | verdict |', '|---|---|---|---|---|---|'];
  for (const s of sections) for (const r of s.rows) lines.push(`| ${s.title} | ${r.measure} | ${r.result} | ${r.target} | ${r.aim ?? ''} | ${VERDICT[r.verdict]} |`);
  return lines.join('\n');
}

/** The analysis written for a section, if any: it comes first, the figures it refers to follow. */
function notes(name: string): string[] {
  const file = join(NOTES, `${name}.md`);
  return existsSync(file) ? [readFileSync(file, 'utf8').trim(), ''] : [];
}

/** The slot the Redis issue fills: replicas are not built yet. */
function replicasPlaceholder(): Section {
  return {
    name: 'replicas',
    title: '6. Replicas (Redis)',
    ranAt: '',
    seconds: 0,
    rows: [{ measure: 'delegations handled per second of refresh capacity, 1 vs 3 replicas', result: 'not measured yet', target: 'set by the Redis issue', verdict: 'pending' }],
    body: [
      '**Slot reserved for the Redis issue.** It adds "delegations handled per second of refresh capacity with 1 vs 3',
      'replicas" here: a `bench/replicas.ts` (registered in `bench/run.ts` under the name `replicas`) that starts 1 and then',
      '3 daemons on one Redis, drives the same refresh load through each layout, and reports the ratio. Until then this',
      'section has no figures.',
    ].join('\n'),
  };
}

/**
 * Merges the sections just measured into the stored results and rewrites docs/benchmarks.md. Sections not measured
 * in this run keep their earlier figures and say when those were taken.
 */
export function writeReport(fresh: Section[], command: string): string {
  const machine = machineInfo();
  const stored: Stored = existsSync(RESULTS) ? (JSON.parse(readFileSync(RESULTS, 'utf8')) as Stored) : { machine, command, sections: {} };
  for (const s of fresh) stored.sections[s.name] = { ...s, command: s.command ?? command };
  stored.machine = machine;
  stored.command = command;
  stored.sections.replicas ??= replicasPlaceholder();
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(RESULTS, JSON.stringify(stored, null, 2) + '\n');

  const sections = ORDER.map((n) => stored.sections[n]).filter((s): s is Section => s !== undefined);
  const freshNames = new Set(fresh.map((s) => s.name));
  const dates = [...new Set(sections.filter((s) => s.ranAt).map((s) => s.ranAt.slice(0, 10)))];
  const doc = [
    '# Benchmarks',
    '',
    'Measured by `npm run bench` (all nine, appservice and rigleave on the real peers; a subset: `npm run bench -- intake scale`; one alone:',
    '`npx tsx bench/webhook-intake.ts --write`; the document again from stored results and bench/notes/:',
    '`npm run bench -- --rewrite`). Every figure comes from the run named in its section (command, date, code);',
    'medians are over the repetitions listed there, and every ratio is between figures of the same run. Nothing here',
    'is checked by a timed test. The machine is shared: each run records the CPU other processes took meanwhile.',
    '',
    `- Machine: ${describeMachine(machine)}.`,
    `- Date${dates.length > 1 ? 's' : ''}: ${dates.join(', ') || 'n/a'}.`,
    ...(sections.some((s) => s.ranAt && !freshNames.has(s.name))
      ? ['- Sections not re-run by the last command keep the figures of their own date (shown in each section).']
      : []),
    '',
    '## Summary: results next to their targets',
    '',
    summaryTable(sections),
    '',
    ...sections.flatMap((s) => [`## ${s.title}`, '', ...notes(s.name), ...(s.ranAt ? [`_Run ${s.command ? `by \`${s.command}\`, ` : ''}${s.ranAt.replace('T', ' ').slice(0, 16)} UTC, ${Math.round(s.seconds)} s${s.revision ? `, code ${s.revision}` : ''}${s.loadAvg ? `; 1-minute load average ${s.loadAvg[0].toFixed(1)} before, ${s.loadAvg[1].toFixed(1)} after` : ''}._`, ''] : []), s.body, '']),
  ].join('\n');
  writeFileSync(DOC, doc);
  return doc;
}
