/**
 * `npm run bench [-- NAME ...] [--quick] [--no-write] [--rewrite]`: the benchmarks of issue 8, each in turn, then
 * docs/benchmarks.md. Names: intake, scale, latency, load, burst, replicas, appservice, token, rigleave (all by default; appservice
 * and rigleave need the real peers of `npm run peers:install`). `--quick` shrinks every benchmark
 * to check that it runs; its figures are not measurements and are never written. `--rewrite` measures nothing and
 * rebuilds the document from the stored results and bench/notes/ (after editing a note).
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { logger, timed } from './lib/cli.js';
import { waitForQuiet } from './lib/contention.js';
import { ensureBuilt, ROOT } from './lib/daemon.js';
import { describeMachine, machineInfo } from './lib/machine.js';
import { DOC, RESULTS, summaryTable, writeReport, type BenchOptions, type Section } from './lib/report.js';
import { run as appservice } from './appservice-capacity.js';
import { run as burst } from './burst.js';
import { run as latency } from './disconnect-to-action.js';
import { run as load } from './homeserver-load.js';
import { run as scale } from './scale.js';
import { run as replicas } from './replicas.js';
import { run as intake } from './webhook-intake.js';
import { run as token } from './first-token.js';
import { run as rigleave } from './rig-leave.js';

const BENCHES: Record<string, (o: BenchOptions) => Promise<Section>> = { intake, scale, latency, load, burst, replicas, appservice, token, rigleave };

const args = process.argv.slice(2);
if (args.includes('--rewrite')) {
  const stored = JSON.parse(readFileSync(RESULTS, 'utf8')) as { command: string };
  writeReport([], stored.command);
  console.log(`rewrote ${relative(ROOT, DOC)} from ${relative(ROOT, RESULTS)}`);
  process.exit(0);
}
const quick = args.includes('--quick');
const write = !quick && !args.includes('--no-write');
const names = args.filter((a) => !a.startsWith('--'));
const unknown = names.filter((n) => !(n in BENCHES));
if (unknown.length) {
  console.error(`unknown benchmark ${unknown.join(', ')}; choose from ${Object.keys(BENCHES).join(', ')}`);
  process.exit(2);
}
const chosen = names.length ? Object.keys(BENCHES).filter((n) => names.includes(n)) : Object.keys(BENCHES);
const log = logger('bench');
log(`${describeMachine(machineInfo())}; running ${chosen.join(', ')}${quick ? ' (quick: not a measurement)' : ''}`);
ensureBuilt(log);
const started = Date.now();
const sections: Section[] = [];
for (const name of chosen) {
  const foreign = await waitForQuiet(quick ? 2_000 : 30_000);
  log(`${name}: starting (other load on the machine: ${foreign.toFixed(2)} cores)`);
  const section = await timed(BENCHES[name]!, { log: logger(name), quick });
  sections.push(section);
  log(`${name}: done in ${Math.round(section.seconds)} s`);
}
console.log(`${summaryTable(sections)}\n\n${sections.map((s) => `## ${s.title}\n\n${s.body}`).join('\n\n')}`);
if (write) {
  writeReport(sections, `npm run bench${names.length ? ` -- ${names.join(' ')}` : ''}`);
  log(`wrote ${relative(ROOT, DOC)} (${Math.round((Date.now() - started) / 1000)} s in all)`);
}
process.exit(0);
