import fc from 'fast-check';

/**
 * fast-check parameters shared by the property tests. A failure report names its seed and path; rerun it with
 * `FC_SEED=<seed> FC_PATH=<path> npx vitest run <file>`.
 */
export function fcParams<T>(overrides: fc.Parameters<T> = {}): fc.Parameters<T> {
  const seed = process.env.FC_SEED;
  const path = process.env.FC_PATH;
  return {
    ...overrides,
    ...(seed !== undefined && seed !== '' ? { seed: Number(seed) } : {}),
    ...(path !== undefined && path !== '' ? { path } : {}),
  };
}

/** mulberry32: a small seeded PRNG so that jitter drawn inside the code under test replays with the seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
