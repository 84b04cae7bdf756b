/**
 * Indexes from a key to delegation ids. Most keys (a participant) have one delegation, so a lone id is stored as the
 * string itself and only several ids get a Set: at a million delegations a Set each would cost hundreds of MiB.
 */
export type IdIndex = Map<string, string | Set<string>>;

export function addTo(index: IdIndex, key: string, id: string): void {
  const cur = index.get(key);
  if (cur === undefined) index.set(key, id);
  else if (typeof cur === 'string') {
    if (cur !== id) index.set(key, new Set([cur, id]));
  } else cur.add(id);
}

export function idsOf(index: IdIndex, key: string): string[] {
  const cur = index.get(key);
  return cur === undefined ? [] : typeof cur === 'string' ? [cur] : [...cur];
}

export function countOf(index: IdIndex, key: string): number {
  const cur = index.get(key);
  return cur === undefined ? 0 : typeof cur === 'string' ? 1 : cur.size;
}

export function removeFrom(index: IdIndex, key: string, id: string): void {
  const cur = index.get(key);
  if (cur === undefined) return;
  if (typeof cur === 'string') {
    if (cur === id) index.delete(key);
    return;
  }
  cur.delete(id);
  if (cur.size === 1) index.set(key, cur.values().next().value!);
  else if (cur.size === 0) index.delete(key);
}
