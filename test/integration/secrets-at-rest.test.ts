import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeHomeserver, type FakeHomeserver } from '../fakes/homeserver.js';
import { mintParticipantToken } from '../fakes/livekit.js';
import { API_KEY, API_SECRET, api, startDaemon, tempDbPath, waitFor, type RunningDaemon } from '../helpers/daemon.js';
import { createHomeserverToken, uniqueName, type DialectName } from '../helpers/scenario.js';

/**
 * Tokens at rest: with SIDECAR_TOKEN_KEY set, nothing a participant delegated can be read from the store's bytes.
 * The scan works on raw bytes, so the same check applies to any backend that can hand over its contents
 * (the Redis store: an RDB/AOF dump, or DUMP of its keys) by adding an entry to `BACKENDS`.
 */

interface Haystack {
  name: string;
  bytes: Buffer;
}

interface NamedSecret {
  what: string;
  value: string;
}

/** How a secret could show up in stored bytes: as text, UTF-16, hex, and base64 / base64url at any byte alignment. */
function spellings(value: string): Array<{ encoding: string; needle: Buffer }> {
  const raw = Buffer.from(value, 'utf8');
  const out = [
    { encoding: 'utf8', needle: raw },
    { encoding: 'utf16le', needle: Buffer.from(value, 'utf16le') },
    { encoding: 'hex', needle: Buffer.from(raw.toString('hex')) },
  ];
  for (const alphabet of ['base64', 'base64url'] as const) {
    for (let shift = 0; shift < 3; shift++) {
      const text = Buffer.concat([Buffer.alloc(shift), raw]).toString(alphabet).replace(/=+$/, '');
      // Drop the groups that mix in neighbouring bytes: the first one when shifted, the last one always.
      const core = text.slice(shift === 0 ? 0 : 4, text.length - 4);
      if (core.length >= 12) out.push({ encoding: `${alphabet}+${shift}`, needle: Buffer.from(core) });
    }
  }
  return out;
}

/** Every place a secret appears in the haystacks, as `what (encoding) in name`. */
function findSecrets(haystacks: Haystack[], secrets: NamedSecret[]): string[] {
  const found: string[] = [];
  for (const s of secrets) {
    for (const { encoding, needle } of spellings(s.value)) {
      for (const h of haystacks) if (h.bytes.includes(needle)) found.push(`${s.what} (${encoding}) in ${h.name}`);
    }
  }
  return found;
}

function sqliteFiles(path: string): Haystack[] {
  return ['', '-wal', '-shm', '-journal'].filter((suffix) => existsSync(path + suffix)).map((suffix) => ({ name: `${path.split('/').pop()}${suffix}`, bytes: readFileSync(path + suffix) }));
}

interface Backend {
  name: string;
  /** Environment for a daemon storing into a fresh instance of this backend. */
  env(): Record<string, string>;
  /** The backend's raw contents for that env. */
  contents(env: Record<string, string>): Haystack[];
}

const BACKENDS: Backend[] = [
  {
    name: 'sqlite',
    env: () => ({ SIDECAR_STORE: `sqlite:${tempDbPath('at-rest')}` }),
    contents: (env) => sqliteFiles(env.SIDECAR_STORE!.slice('sqlite:'.length)),
  },
];

const newKey = () => randomBytes(32).toString('base64');
const fingerprint = (b64: string) => createHash('sha256').update(Buffer.from(b64, 'base64')).digest('hex').slice(0, 8);

interface Delegated {
  dialect: DialectName;
  id: string;
  jwt: string;
  token: string;
  accessToken: string | null;
}

async function delegateBoth(d: RunningDaemon, hs: FakeHomeserver, timeoutMs: number): Promise<Delegated[]> {
  const out: Delegated[] = [];
  for (const dialect of ['futures', 'delayed_events'] as const) {
    const room = uniqueName('room');
    const jwt = await mintParticipantToken({ apiKey: API_KEY, apiSecret: API_SECRET, identity: uniqueName('user'), room });
    const token = await createHomeserverToken(hs, dialect, `!${room}:hs`, timeoutMs);
    const accessToken = dialect === 'delayed_events' ? `syt_${randomBytes(18).toString('base64url')}` : null;
    const res = await api(d.url, 'POST', '/v1/delegations', {
      token: jwt,
      body: { homeserver: hs.url, dialect, token, timeout_ms: timeoutMs, ...(accessToken ? { access_token: accessToken } : {}) },
    });
    expect(res.status).toBe(201);
    out.push({ dialect, id: res.body.delegation_id, jwt, token, accessToken });
  }
  return out;
}

function secretsOf(ds: Delegated[]): NamedSecret[] {
  return ds.flatMap((d) => [
    { what: `${d.dialect} token`, value: d.token },
    { what: 'LiveKit access token', value: d.jwt },
    ...(d.accessToken ? [{ what: 'access token', value: d.accessToken }] : []),
  ]);
}

function successfulRefreshes(hs: FakeHomeserver, token: string, since = 0) {
  return hs.calls.filter((c) => c.handle === token && (c.op === 'refresh' || c.op === 'restart') && c.status === 200 && c.at >= since);
}

describe('the search for secrets in raw bytes', () => {
  it('finds a secret in every spelling it looks for, and nothing in unrelated bytes', () => {
    const secret = 'syd_AbCdEfGhIjKlMnOpQrSt';
    for (const { encoding, needle } of spellings(secret)) {
      const bytes = Buffer.concat([randomBytes(37), needle, randomBytes(11)]);
      expect(findSecrets([{ name: 'blob', bytes }], [{ what: 'delay id', value: secret }]), encoding).toContain(`delay id (${encoding}) in blob`);
    }
    const embedded = Buffer.from(`xx${Buffer.from(`..${secret}..`).toString('base64')}yy`);
    expect(findSecrets([{ name: 'blob', bytes: embedded }], [{ what: 'delay id', value: secret }]).length).toBeGreaterThan(0);
    expect(findSecrets([{ name: 'blob', bytes: randomBytes(4096) }], [{ what: 'delay id', value: secret }])).toEqual([]);
  });
});

for (const backend of BACKENDS) {
  describe(`secrets at rest in the ${backend.name} store`, () => {
    let hs: FakeHomeserver;

    beforeAll(async () => {
      hs = await startFakeHomeserver();
    });
    afterAll(async () => {
      await hs.close();
    });

    it('holds no token, delay id or access token in its bytes when SIDECAR_TOKEN_KEY is set', async () => {
      const env = { ...backend.env(), SIDECAR_TOKEN_KEY: newKey() };
      const d = await startDaemon(env);
      let delegated: Delegated[];
      try {
        delegated = await delegateBoth(d, hs, 60_000);
        await waitFor('first refreshes', () => delegated.every((x) => successfulRefreshes(hs, x.token).length > 0));
        expect(findSecrets(backend.contents(env), secretsOf(delegated))).toEqual([]);
      } finally {
        await d.stop();
      }
      expect(findSecrets(backend.contents(env), secretsOf(delegated))).toEqual([]);
    });

    it('holds them in plain without a key, so the search above can fail', async () => {
      const env = backend.env();
      const d = await startDaemon(env);
      let delegated: Delegated[];
      try {
        delegated = await delegateBoth(d, hs, 60_000);
      } finally {
        await d.stop();
      }
      const found = findSecrets(backend.contents(env), secretsOf(delegated));
      for (const s of secretsOf(delegated).filter((x) => x.what !== 'LiveKit access token')) expect(found.some((f) => f.startsWith(`${s.what} (utf8)`)), s.what).toBe(true);
      // The participant's LiveKit token is checked, never kept.
      expect(findSecrets(backend.contents(env), delegated.map((x) => ({ what: 'LiveKit access token', value: x.jwt })))).toEqual([]);
    });

    it('keeps refreshing delegations sealed with an old key after a rotation, with the right token and access token', async () => {
      const oldKey = newKey();
      const currentKey = newKey();
      const base = backend.env();
      const first = await startDaemon({ ...base, SIDECAR_TOKEN_KEY: oldKey });
      let old: Delegated[] = [];
      try {
        old = await delegateBoth(first, hs, 6_000);
        await waitFor('first refreshes', () => old.every((x) => successfulRefreshes(hs, x.token).length > 0));
      } finally {
        await first.stop();
      }

      const restartedAt = Date.now();
      const second = await startDaemon({ ...base, SIDECAR_TOKEN_KEY: currentKey, SIDECAR_TOKEN_OLD_KEYS: oldKey });
      let added: Delegated[];
      try {
        await waitFor('refreshes after the rotation', () => old.every((x) => successfulRefreshes(hs, x.token, restartedAt).length > 0), 20_000);
        for (const x of old) {
          const state = await api(second.url, 'GET', `/v1/delegations/${x.id}`, { token: x.jwt });
          expect(state.body.state).toBe('awaiting_join');
          expect(hs.status(x.token)).toBe('pending');
          const calls = successfulRefreshes(hs, x.token, restartedAt);
          if (x.accessToken) for (const c of calls) expect(c.authorization).toBe(`Bearer ${x.accessToken}`);
        }
        added = await delegateBoth(second, hs, 60_000);
      } finally {
        await second.stop();
      }
      const all = [...old, ...added];
      expect(findSecrets(backend.contents(base), secretsOf(all))).toEqual([]);

      if (backend.name === 'sqlite') {
        const db = new Database(base.SIDECAR_STORE!.slice('sqlite:'.length), { readonly: true });
        try {
          const sealedWith = (id: string) => (db.prepare('SELECT token FROM delegations WHERE id = ?').get(id) as { token: string }).token.split(':').slice(0, 2).join(':');
          for (const x of old) expect(sealedWith(x.id)).toBe(`gcm:${fingerprint(oldKey)}`);
          for (const x of added) expect(sealedWith(x.id)).toBe(`gcm:${fingerprint(currentKey)}`);
        } finally {
          db.close();
        }
      }
    });
  });
}
