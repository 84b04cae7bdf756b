import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, writeSync } from 'node:fs';
import type { Delegation } from '../delegations/model.js';

/**
 * A file of the open delegations, written at a graceful shutdown so that the next start reads them without stepping
 * every column of every row in SQLite. Rows of primitive fields (nothing of how the engine holds them): per row, the
 * per-delegation strings inline, the repeated ones (rooms, homeservers, action names, enums) as numbers into a table
 * the file builds as it goes, and the times and counters as doubles. Whether a file may be used is the store's
 * decision (`SqliteStore`: only when it provably matches the database); this module only writes and reads it.
 */

// A new layout gets a new magic: a file of another layout is refused before any row.
const MAGIC = Buffer.from('FSOPEN03');
const TRAILER = Buffer.from('FSOPENND');
const TOKEN_BYTES = 16;
const HEADER_BYTES = MAGIC.length + TOKEN_BYTES + 8;
const TRAILER_BYTES = TRAILER.length + 8;
const NULL_TEXT = 0xffff;
/** Set in a string's length when it is not all ASCII (ASCII is decoded as Latin-1, faster than UTF-8). */
const NOT_ASCII = 0x8000;
/** Strings longer than this are not written (the file then is not written at all). */
const MAX_TEXT = 0x7ffe;
const NEW_POOLED = 0xffffffff;
const CHUNK = 4 << 20;
/** Room left in a chunk before a row is encoded or decoded: larger than any row can be. */
const ROW_ROOM = 12 * 8 + 3 * 4 + 9 * (4 + 2 + MAX_TEXT) + 2 * (2 + MAX_TEXT) + 4 * (2 + MAX_TEXT) + 8;

const NUMBERS = ['timeoutMs', 'createdAt', 'updatedAt', 'expiresAt', 'lastRefreshAt', 'nextRefreshAt', 'refreshFailures', 'joinDeadline', 'graceDeadline', 'disconnectedAt', 'nextActionAt', 'actionFailures'] as const;

/** The fields many delegations share, decoded once per file. */
interface Kind {
  dialect: Delegation['dialect'];
  homeserver: string;
  actions: Delegation['actions'];
  state: Delegation['state'];
  source: Delegation['source'];
  pendingAction: Delegation['pendingAction'];
  outcome: string | null;
  owner: string | null;
}

/** The doubles of a chunk, which starts 8-aligned (a chunk this large has its own memory). */
function doublesOf(buf: Buffer): Float64Array {
  if (buf.byteOffset % 8 !== 0) throw new Error('a snapshot chunk is not 8-aligned');
  return new Float64Array(buf.buffer, buf.byteOffset, buf.length >> 3);
}

export class SnapshotUnusableError extends Error {
  constructor(why: string) {
    super(`the open-delegation snapshot cannot be used: ${why}`);
    this.name = 'SnapshotUnusableError';
  }
}

/**
 * Writes every delegation to `path` (through a temporary file, synced and renamed, so a file at `path` is always
 * complete). `token`: 32 hex digits the reader must be given back. Returns how many rows it wrote.
 */
export function writeOpenSnapshot(path: string, token: string, open: Iterable<Delegation>): number {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  let count = 0;
  try {
    let buf = Buffer.allocUnsafe(CHUNK);
    const f64 = doublesOf(buf);
    let pos = 0;
    const pooled = new Map<string, number>();
    /** What most delegations share (homeserver, dialect, actions, state...): one number per row for all of it. */
    const kinds = new Map<string, number>();
    const drain = (): void => {
      writeSync(fd, buf, 0, pos);
      pos = 0;
    };
    const text = (s: string | null): void => {
      if (s === null) {
        buf.writeUInt16LE(NULL_TEXT, pos);
        pos += 2;
        return;
      }
      const n = buf.write(s, pos + 2, 'utf8');
      if (n > MAX_TEXT || Buffer.byteLength(s) !== n) throw new SnapshotUnusableError('a string is too long');
      buf.writeUInt16LE(n === s.length ? n : n | NOT_ASCII, pos);
      pos += 2 + n;
    };
    const pool = (s: string | null): void => {
      if (s === null) {
        buf.writeUInt32LE(0, pos);
        pos += 4;
        return;
      }
      const ref = pooled.get(s);
      if (ref !== undefined) {
        buf.writeUInt32LE(ref, pos);
        pos += 4;
        return;
      }
      pooled.set(s, pooled.size + 1);
      buf.writeUInt32LE(NEW_POOLED, pos);
      pos += 4;
      text(s);
    };
    buf.set(MAGIC, 0);
    buf.write(token, MAGIC.length, TOKEN_BYTES, 'hex');
    pos = HEADER_BYTES;
    for (const d of open) {
      if (pos > CHUNK - ROW_ROOM) drain();
      // Rows start 8-aligned, doubles first: read through a Float64Array over the chunk.
      const at = pos >> 3;
      for (let k = 0; k < NUMBERS.length; k++) f64[at + k] = d[NUMBERS[k]!] ?? NaN;
      pos += NUMBERS.length * 8;
      pool(d.room);
      pool(d.altRoom);
      const kind = [d.dialect, d.homeserver, d.actions.leave, d.actions.connection_lost, d.state, d.source, d.pendingAction, d.outcome, d.owner ?? null];
      const key = kind.map((f) => (f === null ? '!' : `${f.length}:${f}`)).join('');
      const ref = kinds.get(key);
      if (ref !== undefined) {
        buf.writeUInt32LE(ref, pos);
        pos += 4;
      } else {
        kinds.set(key, kinds.size);
        buf.writeUInt32LE(NEW_POOLED, pos);
        pos += 4;
        for (const f of kind) pool(f);
      }
      text(d.id);
      text(d.identity);
      text(d.altIdentity);
      text(d.sid);
      pos = (pos + 7) & ~7;
      count++;
    }
    if (pos > CHUNK - TRAILER_BYTES) drain();
    buf.set(TRAILER, pos);
    buf.writeDoubleLE(count, pos + TRAILER.length);
    pos += TRAILER_BYTES;
    drain();
    // The count in the header too, so that a reader checks it before it hands out any row.
    buf = Buffer.alloc(8);
    buf.writeDoubleLE(count, 0);
    writeSync(fd, buf, 0, 8, MAGIC.length + TOKEN_BYTES);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  return count;
}

/**
 * Reads the file at `path` when it carries `token` and `count` rows and is complete, handing each row to `visit`
 * as a new object; throws `SnapshotUnusableError` before the first row otherwise. A row that cannot be decoded
 * after that throws too (the file was checked; this is damage, not a stale file).
 */
export function readOpenSnapshot(path: string, token: string, count: number, visit: (d: Delegation) => void): void {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    throw new SnapshotUnusableError('no file');
  }
  try {
    const size = fstatSync(fd).size;
    if (size < HEADER_BYTES + TRAILER_BYTES) throw new SnapshotUnusableError('the file is too short');
    const head = Buffer.alloc(HEADER_BYTES);
    const tail = Buffer.alloc(TRAILER_BYTES);
    readSync(fd, head, 0, HEADER_BYTES, 0);
    readSync(fd, tail, 0, TRAILER_BYTES, size - TRAILER_BYTES);
    if (!head.subarray(0, MAGIC.length).equals(MAGIC) || !tail.subarray(0, TRAILER.length).equals(TRAILER)) throw new SnapshotUnusableError('not a complete snapshot file');
    if (head.toString('hex', MAGIC.length, MAGIC.length + TOKEN_BYTES) !== token) throw new SnapshotUnusableError('written for another generation');
    if (head.readDoubleLE(MAGIC.length + TOKEN_BYTES) !== count || tail.readDoubleLE(TRAILER.length) !== count) throw new SnapshotUnusableError('another number of delegations');

    const end = size - TRAILER_BYTES;
    const buf = Buffer.allocUnsafe(CHUNK);
    const f64 = doublesOf(buf);
    let fileAt = HEADER_BYTES;
    let len = 0;
    let pos = 0;
    const refill = (): void => {
      buf.copy(buf, 0, pos, len);
      len -= pos;
      pos = 0;
      while (len < CHUNK && fileAt < end) {
        const n = readSync(fd, buf, len, Math.min(CHUNK - len, end - fileAt), fileAt);
        if (n === 0) break;
        len += n;
        fileAt += n;
      }
    };
    const pooled: string[] = [''];
    const kinds: Kind[] = [];
    const text = (): string | null => {
      const n = buf.readUInt16LE(pos);
      pos += 2;
      if (n === NULL_TEXT) return null;
      const bytes = n & ~NOT_ASCII;
      const s = buf.toString(n === bytes ? 'latin1' : 'utf8', pos, pos + bytes);
      pos += bytes;
      return s;
    };
    const pool = (): string | null => {
      const ref = buf.readUInt32LE(pos);
      pos += 4;
      if (ref === 0) return null;
      if (ref !== NEW_POOLED) return pooled[ref]!;
      const s = text()!;
      pooled.push(s);
      return s;
    };
    let at = 0;
    const num = (): number | null => {
      const v = f64[at++]!;
      return Number.isNaN(v) ? null : v;
    };
    for (let i = 0; i < count; i++) {
      if (len - pos < ROW_ROOM) refill();
      at = pos >> 3;
      pos += NUMBERS.length * 8;
      const room = pool()!;
      const altRoom = pool();
      const kindRef = buf.readUInt32LE(pos);
      pos += 4;
      let kind = kinds[kindRef];
      if (kindRef === NEW_POOLED) {
        const [dialect, homeserver, leave, lost, state, source, pendingAction, outcome, owner] = Array.from({ length: 9 }, pool);
        kind = Object.freeze({
          dialect: dialect as Delegation['dialect'],
          homeserver: homeserver!,
          actions: Object.freeze({ leave: leave!, connection_lost: lost! }),
          state: state as Delegation['state'],
          source: source as Delegation['source'],
          pendingAction: pendingAction as Delegation['pendingAction'],
          outcome: outcome ?? null,
          owner: owner ?? null,
        });
        kinds.push(kind);
      }
      if (!kind) throw new SnapshotUnusableError('a row names a kind of delegation the file has not described');
      const { dialect, homeserver, actions, state, source, pendingAction, outcome, owner } = kind;
      const id = text()!;
      const identity = text()!;
      const altIdentity = text();
      const sid = text();
      pos = (pos + 7) & ~7;
      const d: Delegation = {
        id,
        dialect,
        homeserver,
        room,
        identity,
        altIdentity,
        altRoom,
        sid,
        actions,
        timeoutMs: num()!,
        state,
        source,
        createdAt: num()!,
        updatedAt: num()!,
        expiresAt: num()!,
        lastRefreshAt: num(),
        nextRefreshAt: num(),
        refreshFailures: num()!,
        joinDeadline: num(),
        graceDeadline: num(),
        disconnectedAt: num(),
        pendingAction,
        nextActionAt: num(),
        actionFailures: num()!,
        outcome,
        ...(owner !== null ? { owner } : {}),
      };
      if (pos > len) throw new SnapshotUnusableError('a row runs past the end of the file');
      visit(d);
    }
    if (pos !== len || fileAt !== end) throw new SnapshotUnusableError('rows left after the last one');
  } finally {
    closeSync(fd);
  }
}
