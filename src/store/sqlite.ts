import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { isTerminal, type Delegation, type DelegationSecrets } from '../delegations/model.js';
import { GroupCommit } from '../lib/group-commit.js';
import { SecretBox } from './secret-box.js';
import { readOpenSnapshot, SnapshotUnusableError, writeOpenSnapshot } from './open-snapshot.js';
import type { HistoryEntry } from '../delegations/history.js';
import { DuplicateTokenError, HISTORY_RETENTION_MS, type AppliedWebhooks, type DelegationFilter, type HistoryLine, type ReloadSource, type Store, type WebhookRecord } from './store.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS delegations (
  id TEXT PRIMARY KEY,
  token_key TEXT NOT NULL UNIQUE,
  dialect TEXT NOT NULL,
  homeserver TEXT NOT NULL,
  room TEXT NOT NULL,
  identity TEXT NOT NULL,
  alt_identity TEXT,
  alt_room TEXT,
  sid TEXT,
  action_leave TEXT NOT NULL,
  action_lost TEXT NOT NULL,
  timeout_ms INTEGER NOT NULL,
  state TEXT NOT NULL,
  open INTEGER NOT NULL,
  source TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  last_refresh_at INTEGER,
  next_refresh_at INTEGER,
  refresh_failures INTEGER NOT NULL,
  join_deadline INTEGER,
  grace_deadline INTEGER,
  disconnected_at INTEGER,
  pending_action TEXT,
  next_action_at INTEGER,
  action_failures INTEGER NOT NULL,
  outcome TEXT,
  token TEXT NOT NULL,
  access_token TEXT,
  owner TEXT
);
CREATE INDEX IF NOT EXISTS delegations_open ON delegations(open) WHERE open = 1;
CREATE INDEX IF NOT EXISTS delegations_room ON delegations(room, id);
CREATE INDEX IF NOT EXISTS delegations_identity ON delegations(identity, id);
CREATE INDEX IF NOT EXISTS delegations_ended ON delegations(updated_at) WHERE open = 0;
CREATE TABLE IF NOT EXISTS webhooks (
  id TEXT PRIMARY KEY,
  event TEXT NOT NULL,
  room TEXT,
  identity TEXT,
  sid TEXT,
  reason TEXT,
  joined_at INTEGER,
  created_at INTEGER NOT NULL,
  received_at INTEGER NOT NULL,
  processed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_pending ON webhooks(processed) WHERE processed = 0;
CREATE INDEX IF NOT EXISTS webhooks_received ON webhooks(received_at);
CREATE TABLE IF NOT EXISTS delegation_history (
  delegation_id TEXT NOT NULL,
  at INTEGER NOT NULL,
  what TEXT NOT NULL,
  state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delegation_history_id ON delegation_history(delegation_id);
CREATE INDEX IF NOT EXISTS delegation_history_at ON delegation_history(at);
CREATE TABLE IF NOT EXISTS open_snapshot (token TEXT NOT NULL, count INTEGER NOT NULL);
`;

/**
 * While a snapshot's mark is in the database, any write to the delegations deletes it. They exist only from the
 * snapshot to the next start (a write costs about 1.2 µs more of CPU with them), and they live in the file, so a
 * process that knows nothing of snapshots (an older daemon, a tool) still makes the snapshot stale.
 */
const SNAPSHOT_TRIGGERS = ['INSERT', 'UPDATE', 'DELETE'].map((op) => ({
  create: `CREATE TRIGGER IF NOT EXISTS open_snapshot_stale_${op.toLowerCase()} AFTER ${op} ON delegations BEGIN DELETE FROM open_snapshot; END`,
  drop: `DROP TRIGGER IF EXISTS open_snapshot_stale_${op.toLowerCase()}`,
}));

const MUTABLE_COLUMNS = [
  'sid',
  'state',
  'open',
  'updated_at',
  'expires_at',
  'last_refresh_at',
  'next_refresh_at',
  'refresh_failures',
  'join_deadline',
  'grace_deadline',
  'disconnected_at',
  'pending_action',
  'next_action_at',
  'action_failures',
  'outcome',
] as const;

/** The mutable columns but `open`, in the order `updateStillOpen` binds them (`stillOpenValues`). */
const STILL_OPEN_COLUMNS = MUTABLE_COLUMNS.filter((c) => c !== 'open');

/** How many ended delegations one save of an ended one deletes at most (more than one, so deletion keeps up). */
const PRUNE_PER_END = 4;

/** How long history lines wait for a webhook batch's commit before they are written in one of their own. */
const HISTORY_DELAY_MS = 20;

type Row = Record<string, string | number | null>;

/**
 * What a read returns, in this order. The token columns are not read (secrets stay on disk until a call needs them)
 * and neither is the token key, which only the uniqueness index uses.
 */
const READ_COLUMNS = [
  'id', 'dialect', 'homeserver', 'room', 'identity', 'alt_identity', 'alt_room', 'sid', 'action_leave', 'action_lost',
  'timeout_ms', 'state', 'source', 'created_at', 'updated_at', 'expires_at', 'last_refresh_at', 'next_refresh_at',
  'refresh_failures', 'join_deadline', 'grace_deadline', 'disconnected_at', 'pending_action', 'next_action_at',
  'action_failures', 'outcome', 'owner',
] as const;
const READ = READ_COLUMNS.join(', ');
type Values = Array<string | number | null>;

class StoreLockedError extends Error {
  constructor(path: string) {
    super(`the SQLite store ${path} is in use by another futures-sidecar process (one process owns a SQLite file)`);
    this.name = 'StoreLockedError';
  }
}

/**
 * The embedded store: one SQLite file in WAL mode, owned exclusively by this process. better-sqlite3 is
 * synchronous, so each method's write is committed when it returns.
 */
export class SqliteStore implements Store, AppliedWebhooks {
  readonly kind = 'sqlite' as const;
  private readonly db: Database.Database;
  private readonly box: SecretBox;
  private readonly stmts;
  /** Where the open delegations are kept at a graceful shutdown (see `saveOpenSnapshot`). */
  private readonly snapshotPath: string | null;
  /** A commit failed: what the engine holds may differ from the rows until it rolled back, so no snapshot. */
  private writeFailed = false;

  /** How long an ended delegation (for the console and the admin API) and a history line are kept. */
  private readonly retentionMs: number;

  constructor(path: string, opts: { synchronous?: 'NORMAL' | 'FULL'; secretBox?: SecretBox; retentionMs?: number } = {}) {
    this.retentionMs = opts.retentionMs ?? HISTORY_RETENTION_MS;
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.box = opts.secretBox ?? new SecretBox(null);
    this.db = new Database(path, { timeout: 0 });
    try {
      // Exclusive locking: the lock is taken by the first write and held until close, so a second process
      // pointed at the same file fails at start-up instead of silently sharing it.
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('journal_mode = WAL');
      this.db.pragma(`synchronous = ${opts.synchronous ?? 'NORMAL'}`);
      this.db.exec(SCHEMA);
      // Files written before webhooks recorded the session's join time.
      if (!(this.db.pragma('table_info(webhooks)') as Array<{ name: string }>).some((c) => c.name === 'joined_at')) {
        this.db.exec('ALTER TABLE webhooks ADD COLUMN joined_at INTEGER');
      }
      // Files written before delegations could be made as a user (application-service mode).
      if (!(this.db.pragma('table_info(delegations)') as Array<{ name: string }>).some((c) => c.name === 'owner')) {
        this.db.exec('ALTER TABLE delegations ADD COLUMN owner TEXT');
      }
      this.db.exec('BEGIN IMMEDIATE; COMMIT;');
    } catch (err) {
      this.db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') throw new StoreLockedError(path);
      throw err;
    }
    const cols = ['id', 'token_key', 'dialect', 'homeserver', 'room', 'identity', 'alt_identity', 'alt_room', 'action_leave', 'action_lost', 'timeout_ms', 'source', 'created_at', ...MUTABLE_COLUMNS, 'token', 'access_token', 'owner'];
    this.stmts = {
      insert: this.db.prepare(`INSERT INTO delegations (${cols.join(',')}) VALUES (${cols.map((c) => '@' + c).join(',')})`),
      update: this.db.prepare(`UPDATE delegations SET ${MUTABLE_COLUMNS.map((c) => `${c} = @${c}`).join(', ')} WHERE id = @id`),
      // An open delegation that stays open: \`open\` is left out of SET, so SQLite does not rewrite its entry in the
      // \`delegations_open\` index (it would for any SET naming the column, even to the same value). Positional
      // parameters: binding by name cost more than the rest of the statement's JavaScript side.
      updateStillOpen: this.db.prepare(`UPDATE delegations SET ${STILL_OPEN_COLUMNS.map((c) => `${c} = ?`).join(', ')} WHERE id = ? AND open = 1`),
      get: this.db.prepare(`SELECT ${READ} FROM delegations WHERE id = ?`).raw(true),
      byTokenKey: this.db.prepare(`SELECT ${READ} FROM delegations WHERE token_key = ?`).raw(true),
      secrets: this.db.prepare('SELECT token, access_token FROM delegations WHERE id = ?'),
      saveSecrets: this.db.prepare('UPDATE delegations SET token = ?, access_token = ? WHERE id = ?'),
      // Raw arrays: about twice as fast as row objects when a million are read at start-up.
      open: this.db.prepare(`SELECT ${READ} FROM delegations WHERE open = 1`).raw(true),
      openOfParticipant: this.db.prepare(`SELECT ${READ} FROM delegations WHERE room = ? AND identity = ? AND open = 1`).raw(true),
      insertWebhook: this.db.prepare(
        'INSERT OR IGNORE INTO webhooks (id, event, room, identity, sid, reason, joined_at, created_at, received_at) VALUES (@id, @event, @room, @identity, @sid, @reason, @joinedAt, @createdAt, @receivedAt)',
      ),
      insertAppliedWebhook: this.db.prepare(
        'INSERT OR IGNORE INTO webhooks (id, event, room, identity, sid, reason, joined_at, created_at, received_at, processed) VALUES (@id, @event, @room, @identity, @sid, @reason, @joinedAt, @createdAt, @receivedAt, 1)',
      ),
      markProcessed: this.db.prepare('UPDATE webhooks SET processed = 1 WHERE id = ?'),
      pending: this.db.prepare('SELECT * FROM webhooks WHERE processed = 0 ORDER BY received_at, rowid'),
      prune: this.db.prepare('DELETE FROM webhooks WHERE processed = 1 AND received_at < ?'),
      addHistory: this.db.prepare('INSERT INTO delegation_history (delegation_id, at, what, state) VALUES (?, ?, ?, ?)'),
      // Everything up to the newest line that is one too many: two seeks in the index, where \`NOT IN (... LIMIT ?)\`
      // built a temporary table of the kept lines for every delegation of every batch.
      trimHistory: this.db.prepare('DELETE FROM delegation_history WHERE delegation_id = ? AND rowid <= (SELECT rowid FROM delegation_history WHERE delegation_id = ? ORDER BY rowid DESC LIMIT 1 OFFSET ?)'),
      // Its history lines are older than the retention too: the next history write's `expireHistory` deletes them.
      pruneEnded: this.db.prepare('DELETE FROM delegations WHERE id IN (SELECT id FROM delegations WHERE open = 0 AND updated_at < ? ORDER BY updated_at LIMIT ?)'),
      expireHistory: this.db.prepare('DELETE FROM delegation_history WHERE at < ?'),
      history: this.db.prepare('SELECT at, what, state FROM delegation_history WHERE delegation_id = ? ORDER BY rowid'),
      countOpen: this.db.prepare('SELECT count(*) AS n FROM delegations WHERE open = 1'),
      snapshotMark: this.db.prepare('SELECT token, count FROM open_snapshot LIMIT 1'),
      clearSnapshotMark: this.db.prepare('DELETE FROM open_snapshot'),
      markSnapshot: this.db.prepare('INSERT INTO open_snapshot (token, count) VALUES (?, ?)'),
    };
    this.snapshotPath = path === ':memory:' ? null : `${path}.open-snapshot`;
  }

  async insertDelegation(d: Delegation, secrets: DelegationSecrets, tokenKey: string): Promise<void> {
    try {
      this.stmts.insert.run({
        ...toRow(d),
        token_key: tokenKey,
        dialect: d.dialect,
        homeserver: d.homeserver,
        room: d.room,
        identity: d.identity,
        alt_identity: d.altIdentity,
        alt_room: d.altRoom,
        action_leave: d.actions.leave,
        action_lost: d.actions.connection_lost,
        timeout_ms: d.timeoutMs,
        source: d.source,
        created_at: d.createdAt,
        token: this.box.seal(secrets.token),
        access_token: secrets.accessToken === null ? null : this.box.seal(secrets.accessToken),
        owner: d.owner ?? null,
      });
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE' && String(err).includes('token_key')) throw new DuplicateTokenError();
      throw err;
    }
  }

  /**
   * Updates made in the same event-loop turn share one transaction. Reads flush first, so a read always sees every
   * write made before it.
   */
  private readonly writes = new GroupCommit<() => void, void>((writes) => {
    const joining = this.joining;
    if (joining) {
      // Inside `recordApplying`'s transaction: these writes are durable (and settle) only when it commits.
      try {
        for (const w of writes) w();
      } catch (err) {
        joining.failed = true;
        throw err;
      }
      return joining.committed.then(() => []);
    }
    try {
      this.db.transaction(() => {
        for (const w of writes) w();
      })();
    } catch (err) {
      this.writeFailed = true;
      throw err;
    }
    return [];
  });

  /** Set while `recordApplying` holds its transaction open: writes made meanwhile join it. */
  private joining: { committed: Promise<void>; failed: boolean } | null = null;

  private write(apply: () => void): Promise<void> {
    return this.writes.submit(apply);
  }

  private flush(): void {
    this.queueHistory();
    void this.writes.flush();
  }

  /**
   * History lines wait up to `HISTORY_DELAY_MS` for a commit to ride in: the next batch of webhooks (`recordApplying`)
   * under load, or their own write when none comes. A commit of their own per batch cost as much as the batch's
   * record and state change together. A read writes them first.
   */
  private history: { lines: HistoryLine[]; perDelegation: number; writers: Array<{ resolve: () => void; reject: (err: unknown) => void }>; timer: NodeJS.Timeout } | null = null;

  appendHistory(lines: HistoryLine[], perDelegation: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.history?.perDelegation !== perDelegation) this.queueHistory();
      this.history ??= { lines: [], perDelegation, writers: [], timer: setTimeout(() => this.queueHistory(), HISTORY_DELAY_MS) };
      this.history.lines.push(...lines);
      this.history.writers.push({ resolve, reject });
    });
  }

  /** Hands the waiting history lines to the next write. */
  private queueHistory(): void {
    const h = this.takeHistory();
    if (!h) return;
    let failure: unknown = null;
    this.write(() => (failure = this.insertHistory(h))).then(
      () => settleHistory(h, failure),
      (err: unknown) => settleHistory(h, err),
    );
  }

  private takeHistory(): NonNullable<SqliteStore['history']> | null {
    const h = this.history;
    if (!h) return null;
    this.history = null;
    clearTimeout(h.timer);
    return h;
  }

  /**
   * Writes history lines inside the transaction that is open, in a savepoint: lines that cannot be written are
   * rolled back alone and returned as the failure, so they never fail the state changes they ride with.
   */
  private insertHistory(h: { lines: HistoryLine[]; perDelegation: number }): unknown {
    try {
      this.db.transaction(() => {
        const ids = new Set<string>();
        let newest = 0;
        for (const { id, entry } of h.lines) {
          this.stmts.addHistory.run(id, entry.at, entry.what, entry.state);
          ids.add(id);
          newest = Math.max(newest, entry.at);
        }
        for (const id of ids) this.stmts.trimHistory.run(id, id, h.perDelegation);
        this.stmts.expireHistory.run(newest - this.retentionMs);
      })();
      return null;
    } catch (err) {
      return err ?? new Error('writing history lines failed');
    }
  }

  saveDelegation(d: Delegation): Promise<void> {
    if (isTerminal(d.state)) {
      const row = toRow(d);
      return this.write(() => {
        this.stmts.update.run(row);
        this.stmts.pruneEnded.run(d.updatedAt - this.retentionMs, PRUNE_PER_END);
      });
    }
    const values = stillOpenValues(d);
    return this.write(() => {
      // No row changed: the row is closed (or missing), and the full update says which.
      if (this.stmts.updateStillOpen.run(values).changes === 0) this.stmts.update.run(toRow(d));
    });
  }

  async historyOf(id: string): Promise<HistoryEntry[]> {
    this.flush();
    return this.stmts.history.all(id) as HistoryEntry[];
  }

  async getDelegation(id: string): Promise<Delegation | undefined> {
    this.flush();
    const row = this.stmts.get.get(id) as Values | undefined;
    return row ? fromValues(row) : undefined;
  }

  async findByTokenKey(tokenKey: string): Promise<Delegation | undefined> {
    this.flush();
    const row = this.stmts.byTokenKey.get(tokenKey) as Values | undefined;
    return row ? fromValues(row) : undefined;
  }

  async getSecrets(id: string): Promise<DelegationSecrets | undefined> {
    this.flush();
    const row = this.stmts.secrets.get(id) as { token: string; access_token: string | null } | undefined;
    if (!row) return undefined;
    return { token: this.box.open(row.token), accessToken: row.access_token === null ? null : this.box.open(row.access_token) };
  }

  saveSecrets(id: string, secrets: DelegationSecrets): Promise<void> {
    const token = this.box.seal(secrets.token);
    const accessToken = secrets.accessToken === null ? null : this.box.seal(secrets.accessToken);
    return this.write(() => this.stmts.saveSecrets.run(token, accessToken, id));
  }

  async loadOpen(): Promise<Delegation[]> {
    const out: Delegation[] = [];
    await this.eachOpen((d) => out.push(d));
    return out;
  }

  async eachOpen(visit: (d: Delegation) => void): Promise<ReloadSource> {
    this.flush();
    const refused = this.readSnapshot(visit);
    if (refused === null) return { from: 'snapshot' };
    // Row by row: materialising every row first would double the peak memory of a large reload.
    for (const row of this.stmts.open.iterate() as IterableIterator<Values>) visit(fromValues(row));
    return { from: 'rows', ...(refused ? { snapshotRefused: refused } : {}) };
  }

  /**
   * Hands out the open delegations from the snapshot file when its mark is in the database: the mark is written
   * after the file, in its own commit, and every write to the delegations deletes it (`SNAPSHOT_TRIGGERS`). The
   * mark is used once: deleted, with the triggers, before the file is read.
   * Returns null when the snapshot was used, otherwise why not ('' when there was none).
   */
  private readSnapshot(visit: (d: Delegation) => void): string | null {
    if (!this.snapshotPath) return '';
    const mark = this.stmts.snapshotMark.get() as { token: string; count: number } | undefined;
    this.db.transaction(() => {
      this.stmts.clearSnapshotMark.run();
      for (const t of SNAPSHOT_TRIGGERS) this.db.exec(t.drop);
    })();
    if (!mark) {
      // A file without its mark is stale (written before a write, or before a crash): never read, so not kept.
      rmSync(this.snapshotPath, { force: true });
      return '';
    }
    let visited = 0;
    try {
      const open = (this.stmts.countOpen.get() as { n: number }).n;
      if (open !== mark.count) throw new SnapshotUnusableError(`it has ${mark.count} delegations, the database ${open} open`);
      readOpenSnapshot(this.snapshotPath, mark.token, mark.count, (d) => {
        visited++;
        visit(d);
      });
      return null;
    } catch (err) {
      // Rows already handed out are handed out again by the reload (the engine replaces what it holds), but a
      // damaged file may have named delegations that are not open: stop rather than guess.
      if (!(err instanceof SnapshotUnusableError) || visited > 0) throw err;
      return err.message;
    } finally {
      rmSync(this.snapshotPath, { force: true });
    }
  }

  async saveOpenSnapshot(open: Iterable<Delegation>): Promise<number | null> {
    if (!this.snapshotPath || !this.db.open) return null;
    // Everything queued is committed now, synchronously: nothing runs between this and the mark.
    this.flush();
    if (this.writeFailed) return null;
    const token = randomBytes(16).toString('hex');
    const count = writeOpenSnapshot(this.snapshotPath, token, open);
    if ((this.stmts.countOpen.get() as { n: number }).n !== count) {
      rmSync(this.snapshotPath, { force: true });
      return null;
    }
    this.db.transaction(() => {
      for (const t of SNAPSHOT_TRIGGERS) this.db.exec(t.create);
      this.stmts.clearSnapshotMark.run();
      this.stmts.markSnapshot.run(token, count);
    })();
    return count;
  }

  async openOfParticipant(room: string, identity: string): Promise<Delegation[]> {
    this.flush();
    return (this.stmts.openOfParticipant.all(room, identity) as Values[]).map(fromValues);
  }

  async listDelegations(filter: DelegationFilter): Promise<{ items: Delegation[]; nextCursor: string | null }> {
    this.flush();
    const where: string[] = [];
    const params: Array<string | number> = [];
    const condition = (sql: string, value: string | undefined): void => {
      if (value === undefined) return;
      where.push(sql);
      params.push(value);
    };
    condition('room = ?', filter.room);
    condition('identity = ?', filter.identity);
    condition('state = ?', filter.state);
    condition('id > ?', filter.cursor);
    const sql = `SELECT ${READ} FROM delegations ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id LIMIT ?`;
    const rows = this.db.prepare(sql).raw(true).all(...params, filter.limit + 1) as Values[];
    const items = rows.slice(0, filter.limit).map(fromValues);
    return { items, nextCursor: rows.length > filter.limit ? items[items.length - 1]!.id : null };
  }

  async recordWebhooks(records: WebhookRecord[]): Promise<boolean[]> {
    return this.db.transaction((rs: WebhookRecord[]) => rs.map((r) => this.stmts.insertWebhook.run({ ...r, joinedAt: r.joinedAt ?? null }).changes === 1))(records);
  }

  async recordApplying(records: WebhookRecord[], apply: (rec: WebhookRecord) => void): Promise<boolean[]> {
    let settle!: { resolve: () => void; reject: (err: unknown) => void };
    const committed = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    // Its waiters are the joined writes' GroupCommit, which handles a rejection; this keeps it from being unhandled.
    committed.catch(() => undefined);
    const joining = { committed, failed: false };
    this.joining = joining;
    const history = this.takeHistory();
    let historyFailure: unknown = null;
    try {
      const fresh = this.db.transaction(() => {
        if (history) historyFailure = this.insertHistory(history);
        const fresh = records.map((r) => this.stmts.insertAppliedWebhook.run({ ...r, joinedAt: r.joinedAt ?? null }).changes === 1);
        records.forEach((r, i) => fresh[i] && apply(r));
        this.flush();
        if (joining.failed) throw new Error('a write of the applied webhooks failed');
        return fresh;
      })();
      settle.resolve();
      if (history) settleHistory(history, historyFailure);
      return fresh;
    } catch (err) {
      this.writeFailed = true;
      settle.reject(err);
      if (history) settleHistory(history, err);
      throw err;
    } finally {
      this.joining = null;
    }
  }

  markWebhooksProcessed(ids: string[]): Promise<void> {
    return this.write(() => {
      for (const id of ids) this.stmts.markProcessed.run(id);
    });
  }

  async pendingWebhooks(): Promise<WebhookRecord[]> {
    this.flush();
    return (this.stmts.pending.all() as Row[]).map((r) => ({
      id: r.id as string,
      event: r.event as string,
      room: r.room as string | null,
      identity: r.identity as string | null,
      sid: r.sid as string | null,
      reason: r.reason as string | null,
      joinedAt: r.joined_at as number | null,
      createdAt: r.created_at as number,
      receivedAt: r.received_at as number,
    }));
  }

  async pruneWebhooks(before: number): Promise<void> {
    this.stmts.prune.run(before);
  }

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  async close(): Promise<void> {
    this.flush();
    if (this.db.open) this.db.close();
  }
}

function toRow(d: Delegation): Row {
  return {
    id: d.id,
    sid: d.sid,
    state: d.state,
    open: isTerminal(d.state) ? 0 : 1,
    updated_at: d.updatedAt,
    expires_at: d.expiresAt,
    last_refresh_at: d.lastRefreshAt,
    next_refresh_at: d.nextRefreshAt,
    refresh_failures: d.refreshFailures,
    join_deadline: d.joinDeadline,
    grace_deadline: d.graceDeadline,
    disconnected_at: d.disconnectedAt,
    pending_action: d.pendingAction,
    next_action_at: d.nextActionAt,
    action_failures: d.actionFailures,
    outcome: d.outcome,
  };
}

function settleHistory(h: { writers: Array<{ resolve: () => void; reject: (err: unknown) => void }> }, failure: unknown): void {
  for (const w of h.writers) if (failure === null) w.resolve(); else w.reject(failure);
}

/** `STILL_OPEN_COLUMNS`' values, then the id. */
function stillOpenValues(d: Delegation): Values {
  return [d.sid, d.state, d.updatedAt, d.expiresAt, d.lastRefreshAt, d.nextRefreshAt, d.refreshFailures, d.joinDeadline, d.graceDeadline, d.disconnectedAt, d.pendingAction, d.nextActionAt, d.actionFailures, d.outcome, d.id];
}

function fromValues(v: Values): Delegation {
  const [id, dialect, homeserver, room, identity, altIdentity, altRoom, sid, leave, lost, timeoutMs, state, source, createdAt, updatedAt, expiresAt, lastRefreshAt, nextRefreshAt, refreshFailures, joinDeadline, graceDeadline, disconnectedAt, pendingAction, nextActionAt, actionFailures, outcome, owner] = v;
  return {
    id: id as string,
    dialect: dialect as Delegation['dialect'],
    homeserver: homeserver as string,
    room: room as string,
    identity: identity as string,
    altIdentity: altIdentity as string | null,
    altRoom: altRoom as string | null,
    sid: sid as string | null,
    actions: { leave: leave as string, connection_lost: lost as string },
    timeoutMs: timeoutMs as number,
    state: state as Delegation['state'],
    source: source as Delegation['source'],
    createdAt: createdAt as number,
    updatedAt: updatedAt as number,
    expiresAt: expiresAt as number,
    lastRefreshAt: lastRefreshAt as number | null,
    nextRefreshAt: nextRefreshAt as number | null,
    refreshFailures: refreshFailures as number,
    joinDeadline: joinDeadline as number | null,
    graceDeadline: graceDeadline as number | null,
    disconnectedAt: disconnectedAt as number | null,
    pendingAction: pendingAction as Delegation['pendingAction'],
    nextActionAt: nextActionAt as number | null,
    actionFailures: actionFailures as number,
    outcome: outcome as string | null,
    ...(owner ? { owner: owner as string } : {}),
  };
}
