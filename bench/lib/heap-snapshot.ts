import { readFileSync } from 'node:fs';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]]; edge_fields: string[]; edge_types: [string[], ...unknown[]] } };
  nodes: number[];
  edges: number[];
  strings: string[];
}

/** What a string on the heap holds, judged by its shape (the seeded and engine-made values are recognisable). */
function stringKind(s: string): string {
  if (s.includes('\u0000')) return 'string: room\\0identity index key';
  if (/^dg_/.test(s)) return 'string: delegation id';
  if (/^[0-9a-f]{64}$/.test(s)) return 'string: tokenKey (sha256 hex)';
  if (/^https?:\/\//.test(s)) return 'string: homeserver URL';
  if (/^!/.test(s)) return 'string: room';
  if (/^@/.test(s)) return 'string: identity';
  if (/^PA_/.test(s)) return 'string: sid';
  if (s === 'leave' || s === 'connection_lost') return 'string: action name';
  if (s === 'futures' || s === 'delayed_events' || s === 'api' || s === 'compat' || s === 'connected') return 'string: dialect / source / state';
  return 'string: other';
}

function groups(path: string): Map<string, { count: number; bytes: number }> {
  const snap = JSON.parse(readFileSync(path, 'utf8')) as Snapshot;
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const width = fields.length;
  const fType = fields.indexOf('type');
  const fName = fields.indexOf('name');
  const fSize = fields.indexOf('self_size');
  const out = new Map<string, { count: number; bytes: number }>();
  const nodes = snap.nodes;
  // Internal arrays have no name of their own: name them after the first object that holds them (a Map's hash
  // table, an Array's elements, an object's out-of-line properties).
  const fEdges = fields.indexOf('edge_count');
  const edgeWidth = snap.snapshot.meta.edge_fields.length;
  const fTo = snap.snapshot.meta.edge_fields.indexOf('to_node');
  const owner = new Map<number, number>();
  for (let i = 0, e = 0; i < nodes.length; i += width) {
    const count = nodes[i + fEdges]!;
    for (let k = 0; k < count; k++, e += edgeWidth) {
      const to = snap.edges[e + fTo]!;
      if (types[nodes[to + fType]!] === 'array' && !owner.has(to)) owner.set(to, i);
    }
  }
  const ownerName = (i: number): string => {
    const o = owner.get(i);
    if (o === undefined) return 'unowned';
    const t = types[nodes[o + fType]!]!;
    const n = snap.strings[nodes[o + fName]!] ?? '';
    return t === 'object' ? `${n} ${nodes[o + fSize]} B` : `${t} ${n.slice(0, 40)}`;
  };
  for (let i = 0; i < nodes.length; i += width) {
    const type = types[nodes[i + fType]!]!;
    const name = snap.strings[nodes[i + fName]!] ?? '';
    const size = nodes[i + fSize]!;
    let key: string;
    if (type === 'concatenated string') key = 'string: concatenation node (the engine\'s `${room}\\0${identity}` index keys)';
    else if (type === 'sliced string') key = 'string: slice';
    else if (type === 'string') key = stringKind(name);
    else if (type === 'array') key = `internal array${name ? ` ${name}` : ''} held by ${ownerName(i)}`;
    else if (type === 'object') key = `object ${name} (${size} B each)`;
    else if (type === 'number') key = 'heap number (a double field: timestamps)';
    else key = `${type} ${name.length > 60 ? name.slice(0, 60) + '...' : name}`;
    const g = out.get(key) ?? { count: 0, bytes: 0 };
    g.count++;
    g.bytes += size;
    out.set(key, g);
  }
  return out;
}

export interface HeapGroup {
  what: string;
  count: number;
  bytes: number;
}

/** Self sizes grouped by kind of node, after minus before: what loading the delegations added to the JS heap. */
export function diffSnapshots(before: string, after: string): { total: number; groups: HeapGroup[] } {
  const a = groups(before);
  const b = groups(after);
  const result: HeapGroup[] = [];
  let total = 0;
  for (const [what, g] of b) {
    const base = a.get(what) ?? { count: 0, bytes: 0 };
    const d = { what, count: g.count - base.count, bytes: g.bytes - base.bytes };
    total += d.bytes;
    if (d.bytes !== 0) result.push(d);
  }
  result.sort((x, y) => y.bytes - x.bytes);
  return { total, groups: result };
}
