// Operator console for futures-sidecar. Plain ES module, no framework and no build step.
//
// Rules this file keeps:
// - The admin token lives in the `session` object only: never in storage, cookies or a URL.
// - Data from the daemon reaches the DOM through textContent and attributes only, never as markup: rooms and
//   identities are chosen by participants.
// - It must stay usable with tens of thousands of rows: the table is virtualised (only visible rows exist in the
//   DOM) and watch events are applied in batches, at most every FLUSH_MS.

const OPEN_STATES = ['awaiting_join', 'connected', 'grace', 'firing'];
const REFRESHING = new Set(['awaiting_join', 'connected', 'grace']);
const TERMINAL = new Set(['fired', 'revoked', 'invalidated', 'expired', 'failed']);

const PAGE_SIZE = 1000; // the list API's maximum
const MAX_ROWS = 50_000;
const FLUSH_MS = 250;
const STATS_EVERY_MS = 3_000;
const RELOAD_EVERY_MS = 120_000;
const READY_FALLBACK_MS = 3_000;
/** A delegation that ended stays visible this long in the "open" view, so the operator sees it go. */
const LINGER_MS = 8_000;
const OVERSCAN = 8;
/**
 * Per-delegation look-ups (new delegations, refreshed expiry times) share the per-IP API rate limit with everything
 * else; beyond this backlog one reload of the list is cheaper.
 */
const DETAIL_RATE_PER_S = 4;
const DETAIL_BURST = 8;
const DETAIL_BACKLOG_RELOAD = 200;
const THIN_SECONDS = 60;
/** A refresh normally shows up here within a second of being due; later than this, it is running late or failing. */
const OVERDUE_MS = 3_000;

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const el = {
  live: $('live'),
  reload: $('reload'),
  signOut: $('sign-out'),
  signin: $('signin'),
  signinForm: /** @type {HTMLFormElement} */ ($('signin-form')),
  token: /** @type {HTMLInputElement} */ ($('token')),
  signinError: $('signin-error'),
  app: $('app'),
  tMode: $('t-mode'),
  tOpen: $('t-open'),
  tRefreshes: $('t-refreshes'),
  tActions: $('t-actions'),
  tMargin: $('t-margin'),
  tStates: $('t-states'),
  filters: /** @type {HTMLFormElement} */ ($('filters')),
  fState: /** @type {HTMLSelectElement} */ ($('f-state')),
  fRoom: /** @type {HTMLInputElement} */ ($('f-room')),
  fIdentity: /** @type {HTMLInputElement} */ ($('f-identity')),
  fSearch: /** @type {HTMLInputElement} */ ($('f-search')),
  fClear: $('f-clear'),
  count: $('count'),
  notice: $('notice'),
  scroller: $('scroller'),
  rows: $('rows'),
  empty: $('empty'),
  drawer: $('drawer'),
  dTitle: $('d-title'),
  dClose: $('d-close'),
  dFields: $('d-fields'),
  dHistory: $('d-history'),
  dError: $('d-error'),
  dFilterRoom: $('d-filter-room'),
  dFilterIdentity: $('d-filter-identity'),
};

/** Everything that exists only while signed in. Replaced (never mutated back to life) on sign-out. */
let session = null;

// ---------------------------------------------------------------------------------------------------------------
// Talking to the daemon

class ApiError extends Error {
  constructor(status, errcode, message, retryAfterMs) {
    super(message);
    this.status = status;
    this.errcode = errcode;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Resolved against the page, so a path prefix added by a reverse proxy is kept. */
function apiUrl(path, query) {
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
  return url;
}

async function api(s, path, query) {
  let res;
  try {
    res = await fetch(apiUrl(path, query), {
      headers: { authorization: `Bearer ${s.token}`, accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
  } catch {
    throw new ApiError(0, 'NETWORK', 'The daemon cannot be reached');
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: handled below by the status
  }
  if (!res.ok) {
    const errcode = body && typeof body.errcode === 'string' ? body.errcode : 'M_UNKNOWN';
    const message = body && typeof body.error === 'string' ? body.error : `HTTP ${res.status}`;
    const retry = body && typeof body.retry_after_ms === 'number' ? body.retry_after_ms : undefined;
    throw new ApiError(res.status, errcode, message, retry);
  }
  return body;
}

function isAuthError(err) {
  return err instanceof ApiError && (err.status === 401 || err.status === 403);
}

function explain(err) {
  if (!(err instanceof ApiError)) return String(err);
  if (err.status === 401 || err.status === 403) return `The admin token was refused (${err.status} ${err.errcode}). No data is shown.`;
  if (err.status === 404 && err.errcode === 'M_UNRECOGNIZED') return 'This daemon has no admin API: start it with SIDECAR_ADMIN_TOKEN set.';
  if (err.status === 429) return `Rate limited by the daemon (${err.errcode}); retrying in ${Math.ceil((err.retryAfterMs ?? 1000) / 1000)} s.`;
  if (err.status === 0) return 'The daemon cannot be reached.';
  return `${err.status} ${err.errcode}: ${err.message}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Sign in / out

el.signinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const token = el.token.value.trim();
  // Not left in the DOM, where it would outlive the session.
  el.token.value = '';
  if (token) void signIn(token);
});

el.signOut.addEventListener('click', () => signOut(''));
el.reload.addEventListener('click', () => session && reload(session));

async function signIn(token) {
  if (session) signOut('');
  showSigninError('');
  const button = el.signinForm.querySelector('button');
  button.disabled = true;
  const s = newSession(token);
  try {
    // Proves the token before anything is shown.
    const stats = await api(s, 'v1/admin/stats');
    session = s;
    renderStats(stats);
  } catch (err) {
    showSigninError(explain(err));
    return;
  } finally {
    button.disabled = false;
  }
  el.signin.hidden = true;
  el.app.hidden = false;
  el.signOut.hidden = false;
  el.reload.hidden = false;
  readFilters(s);
  connectWatch(s);
  s.readyFallback = setTimeout(() => {
    // No live stream (a proxy without WebSocket support?): show the list anyway.
    if (session === s && !s.loadedOnce) reload(s);
  }, READY_FALLBACK_MS);
  s.flushTimer = setInterval(() => flush(s), FLUSH_MS);
  s.reloadTimer = setInterval(() => reload(s), RELOAD_EVERY_MS);
  schedulePollStats(s, STATS_EVERY_MS);
  render();
}

function newSession(token) {
  return {
    token,
    ws: null,
    wsBackoff: 1000,
    /** id -> row (the public view of a delegation plus console bookkeeping) */
    rows: new Map(),
    /** Watch events not yet applied (they wait while a list is loading). */
    pending: [],
    loading: false,
    loadedOnce: false,
    loadGen: 0,
    truncated: false,
    filter: { state: 'open', room: '', identity: '', search: '' },
    sort: { key: 'room', dir: 1 },
    view: [],
    /** The view must be filtered and sorted again / only redrawn. */
    dirty: true,
    stale: false,
    /** Ended rows still shown for a moment in the "open" view. */
    lingering: new Set(),
    detailQueue: new Set(),
    detailTokens: DETAIL_BURST,
    detailLast: performance.now(),
    lastBacklogReload: 0,
    lastEventAt: 0,
    drawerId: null,
    drawerTimer: null,
    statsTimer: null,
    flushTimer: null,
    reloadTimer: null,
    readyFallback: null,
    wsRetryTimer: null,
    retryTimer: null,
  };
}

function signOut(message) {
  const s = session;
  session = null;
  if (s) {
    clearInterval(s.flushTimer);
    clearInterval(s.reloadTimer);
    clearTimeout(s.statsTimer);
    clearTimeout(s.readyFallback);
    clearTimeout(s.wsRetryTimer);
    clearTimeout(s.retryTimer);
    clearTimeout(s.drawerTimer);
    if (s.ws) s.ws.close(1000, 'signed out');
    s.rows.clear();
    s.view = [];
    s.token = '';
  }
  el.app.hidden = true;
  el.signOut.hidden = true;
  el.reload.hidden = true;
  el.signin.hidden = false;
  closeDrawer();
  clearStats();
  el.rows.replaceChildren();
  pool.length = 0;
  setLive('off', 'signed out');
  showNotice('');
  showSigninError(message);
  el.token.focus();
}

function showSigninError(message) {
  el.signinError.textContent = message;
  el.signinError.hidden = !message;
}

function showNotice(message) {
  el.notice.textContent = message;
  el.notice.hidden = !message;
}

function setLive(state, text) {
  el.live.dataset.state = state;
  el.live.textContent = text;
}

// ---------------------------------------------------------------------------------------------------------------
// Live updates: /v1/watch

function connectWatch(s) {
  const url = apiUrl('v1/watch');
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    setLive('down', 'no live updates');
    return;
  }
  s.ws = ws;
  setLive('connecting', 'connecting…');
  // Browsers cannot set headers on a WebSocket, and the URL would end up in logs: the token goes in the first message.
  ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', token: s.token })));
  ws.addEventListener('message', (m) => {
    if (session !== s) return;
    let e;
    try {
      e = JSON.parse(m.data);
    } catch {
      return;
    }
    if (e.type === 'ready') {
      s.wsBackoff = 1000;
      setLive('live', 'live');
      // Whatever changed while we were not listening is only in the list: (re)load it now that nothing is missed.
      reload(s);
      return;
    }
    if (typeof e.delegation_id === 'string' && typeof e.state === 'string') s.pending.push(e);
  });
  ws.addEventListener('close', (ev) => {
    if (session !== s || s.ws !== ws) return;
    s.ws = null;
    if (ev.code === 4401) {
      signOut('The admin token was refused by the live stream (4401). No data is shown.');
      return;
    }
    setLive('down', `reconnecting in ${Math.round(s.wsBackoff / 1000)} s`);
    s.wsRetryTimer = setTimeout(() => session === s && connectWatch(s), s.wsBackoff);
    s.wsBackoff = Math.min(30_000, s.wsBackoff * 2);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Loading the list

/** States to ask the API for: it filters by one state at a time. */
function statesToLoad(filter) {
  if (filter.state === 'open') return OPEN_STATES;
  if (filter.state === 'all') return [undefined];
  return [filter.state];
}

function inScope(filter, state) {
  if (filter.state === 'all') return true;
  if (filter.state === 'open') return OPEN_STATES.includes(state);
  return filter.state === state;
}

function matchesServerFilter(filter, d) {
  return (!filter.room || d.room === filter.room) && (!filter.identity || d.identity === filter.identity);
}

async function reload(s) {
  const gen = ++s.loadGen;
  s.loading = true;
  showNotice('');
  if (!s.rows.size) el.count.textContent = 'loading…';
  const f = s.filter;
  const loaded = new Map();
  let truncated = false;
  try {
    await Promise.all(
      statesToLoad(f).map(async (state) => {
        let cursor;
        do {
          const page = await api(s, 'v1/admin/delegations', { state, room: f.room, identity: f.identity, limit: PAGE_SIZE, cursor });
          if (gen !== s.loadGen || session !== s) return;
          for (const d of page.delegations) loaded.set(d.delegation_id, toRow(d, s.rows.get(d.delegation_id)));
          cursor = page.next_cursor ?? undefined;
          if (loaded.size >= MAX_ROWS && cursor) {
            truncated = true;
            cursor = undefined;
          }
        } while (cursor);
      }),
    );
  } catch (err) {
    if (gen !== s.loadGen || session !== s) return;
    s.loading = false;
    if (isAuthError(err)) return signOut(explain(err));
    showNotice(`Loading the list failed: ${explain(err)}`);
    const wait = err instanceof ApiError && err.retryAfterMs ? err.retryAfterMs : 5_000;
    clearTimeout(s.retryTimer);
    s.retryTimer = setTimeout(() => session === s && gen === s.loadGen && reload(s), Math.max(1_000, wait));
    return;
  }
  if (gen !== s.loadGen || session !== s) return;
  s.rows = loaded;
  s.lingering.clear();
  s.truncated = truncated;
  s.loading = false;
  s.loadedOnce = true;
  s.detailQueue.clear();
  s.dirty = true;
  flush(s);
}

/** A public view from the API as a table row; keeps what the console learnt about the row before. */
function toRow(d, before) {
  const row = {
    delegation_id: d.delegation_id,
    state: d.state,
    dialect: d.dialect,
    room: d.room,
    identity: d.identity,
    // Compared often when sorting and searching tens of thousands of rows: computed once.
    roomKey: d.room.toLowerCase(),
    identityKey: d.identity.toLowerCase(),
    created_at: d.created_at,
    expires_at: d.expires_at,
    next_refresh_at: d.next_refresh_at,
    pending_action: d.pending_action,
    outcome: d.outcome,
    span: before ? before.span : 0,
    leaveAt: 0,
    changedAt: before ? before.changedAt : 0,
  };
  row.span = Math.max(row.span, timeoutEstimate(d));
  return row;
}

/**
 * The future's timeout, for "how much of it is left". The public view does not carry it (a `timeout_ms` field would
 * be used if it did). While refreshes succeed, the next one is due after 40-50% of the timeout (the default
 * SIDECAR_REFRESH_AT), so expires_at - next_refresh_at is about 55% of it. The largest estimate seen is kept: while
 * a refresh keeps failing, retries pull next_refresh_at towards now and would shrink it.
 */
function timeoutEstimate(d) {
  if (typeof d.timeout_ms === 'number') return d.timeout_ms;
  if (!REFRESHING.has(d.state) || d.next_refresh_at === null || d.next_refresh_at <= d.created_at) return 0;
  return Math.max(0, (d.expires_at - d.next_refresh_at) / 0.55);
}

// ---------------------------------------------------------------------------------------------------------------
// Applying watch events, batched

function flush(s) {
  if (session !== s) return;
  const now = Date.now();
  if (!s.loading && s.pending.length) {
    const events = s.pending;
    s.pending = [];
    for (const e of events) applyEvent(s, e, now);
    s.lastEventAt = performance.now();
  }
  for (const id of s.lingering) {
    const row = s.rows.get(id);
    if (row && row.leaveAt > now) continue;
    s.lingering.delete(id);
    if (row && row.leaveAt) {
      s.rows.delete(id);
      s.dirty = true;
    }
  }
  pumpDetails(s);
  // Re-filtering and re-sorting only when rows came, went or moved; otherwise the visible rows are just redrawn.
  if (s.dirty) {
    s.dirty = false;
    s.stale = false;
    rebuildView(s);
    render();
  } else if (s.stale) {
    s.stale = false;
    render();
  }
}

/** Whether a change of these fields can move a row in the current order. */
function movesRow(s, fields) {
  return fields.includes(s.sort.key);
}

function applyEvent(s, e, now) {
  const id = e.delegation_id;
  const row = s.rows.get(id);
  if (id === s.drawerId) scheduleDrawerRefresh(s);
  if (!row) {
    // Unknown here: a new delegation, or one that just entered the chosen state. Its room and identity are not in
    // the event, so look it up.
    if (inScope(s.filter, e.state)) s.detailQueue.add(id);
    return;
  }
  row.state = e.state;
  if (e.outcome) row.outcome = e.outcome;
  row.changedAt = now;
  if (TERMINAL.has(e.state)) row.next_refresh_at = null;
  if (e.type === 'refreshed') s.detailQueue.add(id); // new expires_at / next_refresh_at
  if (movesRow(s, ['state', 'expires_at', 'next_refresh_at'])) s.dirty = true;
  else s.stale = true;
  if (!inScope(s.filter, e.state)) {
    if (s.filter.state === 'open' && TERMINAL.has(e.state)) {
      row.leaveAt = now + LINGER_MS;
      s.lingering.add(id);
    } else {
      s.rows.delete(id);
      s.dirty = true;
    }
  } else {
    row.leaveAt = 0;
  }
}

/** Looks up queued delegations one by one within a small request budget; a long backlog becomes one reload. */
function pumpDetails(s) {
  if (s.loading || s.detailQueue.size === 0) return;
  const t = performance.now();
  s.detailTokens = Math.min(DETAIL_BURST, s.detailTokens + ((t - s.detailLast) / 1000) * DETAIL_RATE_PER_S);
  s.detailLast = t;
  const quiet = t - s.lastEventAt > 1_000;
  if (s.detailQueue.size > DETAIL_BACKLOG_RELOAD || (quiet && s.detailQueue.size > 2 * DETAIL_BURST)) {
    // Reload once the burst is over, or every few seconds while it lasts; look-ups meanwhile would be wasted.
    if (quiet || t - s.lastBacklogReload > 10_000) {
      s.lastBacklogReload = t;
      s.detailQueue.clear();
      reload(s);
    }
    return;
  }
  while (s.detailTokens >= 1 && s.detailQueue.size) {
    const id = s.detailQueue.values().next().value;
    s.detailQueue.delete(id);
    s.detailTokens -= 1;
    void fetchDetail(s, id);
  }
}

async function fetchDetail(s, id) {
  const gen = s.loadGen;
  let d;
  try {
    d = await api(s, `v1/admin/delegations/${encodeURIComponent(id)}`);
  } catch (err) {
    if (session !== s) return;
    if (isAuthError(err)) return signOut(explain(err));
    if (err instanceof ApiError && err.status === 404) {
      if (s.rows.delete(id)) s.dirty = true;
      return;
    }
    if (err instanceof ApiError && err.status === 429) {
      s.detailTokens = -((err.retryAfterMs ?? 1000) / 1000) * DETAIL_RATE_PER_S;
      showNotice(explain(err));
    }
    s.detailQueue.add(id);
    return;
  }
  // A reload started meanwhile brings its own copy.
  if (session !== s || gen !== s.loadGen) return;
  const before = s.rows.get(id);
  if (inScope(s.filter, d.state) && matchesServerFilter(s.filter, d)) {
    const row = toRow(d, before);
    if (before) {
      // Updated in place: the current view holds this object.
      Object.assign(before, row, { changedAt: before.changedAt, leaveAt: before.leaveAt });
      if (movesRow(s, ['state', 'expires_at', 'next_refresh_at'])) s.dirty = true;
      else s.stale = true;
    } else {
      row.changedAt = Date.now();
      s.rows.set(id, row);
      s.dirty = true;
    }
  } else if (before && !before.leaveAt) {
    s.rows.delete(id);
    s.dirty = true;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Filters and sorting

function readFilters(s) {
  s.filter = {
    state: el.fState.value,
    room: el.fRoom.value.trim(),
    identity: el.fIdentity.value.trim(),
    search: el.fSearch.value.trim().toLowerCase(),
  };
}

function applyServerFilters() {
  const s = session;
  if (!s) return;
  readFilters(s);
  s.rows = new Map();
  s.lingering.clear();
  s.dirty = true;
  el.scroller.scrollTop = 0;
  void reload(s);
  flush(s);
}

el.filters.addEventListener('submit', (ev) => {
  ev.preventDefault();
  applyServerFilters();
});
el.fState.addEventListener('change', applyServerFilters);
el.fClear.addEventListener('click', () => {
  el.fState.value = 'open';
  el.fRoom.value = '';
  el.fIdentity.value = '';
  el.fSearch.value = '';
  applyServerFilters();
});
el.fSearch.addEventListener('input', () => {
  const s = session;
  if (!s) return;
  s.filter.search = el.fSearch.value.trim().toLowerCase();
  s.dirty = true;
  flush(s);
});

for (const th of document.querySelectorAll('th[data-sort]')) {
  th.addEventListener('click', () => {
    const s = session;
    if (!s) return;
    const key = th.dataset.sort;
    s.sort = { key, dir: s.sort.key === key ? -s.sort.dir : 1 };
    s.dirty = true;
    flush(s);
  });
}

/** Plain comparison: Intl.Collator is several times slower, which shows with tens of thousands of rows. */
function cmp(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

const SORT_FIELD = { room: 'roomKey', identity: 'identityKey' };

function rebuildView(s) {
  const q = s.filter.search;
  const view = [];
  for (const row of s.rows.values()) {
    if (q && !row.roomKey.includes(q) && !row.identityKey.includes(q) && !row.delegation_id.toLowerCase().includes(q)) continue;
    view.push(row);
  }
  const { key, dir } = s.sort;
  const numeric = key === 'expires_at' || key === 'next_refresh_at';
  // An ended delegation has no expiry to worry about: it sorts after every open one.
  const when = (r) => (TERMINAL.has(r.state) ? Infinity : r[key] ?? Infinity);
  const field = SORT_FIELD[key] ?? key;
  view.sort((a, b) => {
    let c;
    if (numeric) c = when(a) - when(b) || 0;
    else c = cmp(a[field] ?? '', b[field] ?? '');
    if (c === 0) c = cmp(a.roomKey, b.roomKey) || cmp(a.identityKey, b.identityKey) || cmp(a.delegation_id, b.delegation_id);
    return c * dir;
  });
  s.view = view;
  for (const th of document.querySelectorAll('th[data-sort]')) {
    if (th.dataset.sort === key) th.dataset.dir = dir > 0 ? 'asc' : 'desc';
    else delete th.dataset.dir;
  }
  const loaded = s.rows.size;
  let text = q ? `${fmtInt(view.length)} of ${fmtInt(loaded)} shown` : `${fmtInt(loaded)} shown`;
  if (s.truncated) text += ` (first ${fmtInt(MAX_ROWS)} only: narrow the filters)`;
  el.count.textContent = !s.loadedOnce || (s.loading && loaded === 0) ? 'loading…' : text;
}

// ---------------------------------------------------------------------------------------------------------------
// The virtualised table: one <tr> per visible row, reused as the view scrolls

const ROW_H = parseFloat(getComputedStyle(document.documentElement).getPropertyValue('--row-h')) || 24;
const COLUMNS = 7;
/** @type {Array<{tr: HTMLTableRowElement, cells: HTMLTableCellElement[], badge: HTMLSpanElement}>} */
const pool = [];
const topSpacer = spacerRow();
const bottomSpacer = spacerRow();
let renderQueued = false;

function spacerRow() {
  const tr = document.createElement('tr');
  tr.className = 'spacer';
  tr.setAttribute('aria-hidden', 'true');
  const td = document.createElement('td');
  td.colSpan = COLUMNS;
  tr.append(td);
  return tr;
}

function pooledRow() {
  const tr = document.createElement('tr');
  tr.tabIndex = 0;
  const cells = [];
  for (let i = 0; i < COLUMNS; i++) cells.push(tr.insertCell());
  const badge = document.createElement('span');
  badge.className = 'badge';
  cells[3].append(badge);
  return { tr, cells, badge };
}

el.scroller.addEventListener('scroll', () => {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
});
window.addEventListener('resize', () => render());

function render() {
  const s = session;
  if (!s) return;
  const view = s.view;
  const visible = Math.ceil(el.scroller.clientHeight / ROW_H) + 2 * OVERSCAN;
  const first = Math.max(0, Math.min(Math.floor(el.scroller.scrollTop / ROW_H) - OVERSCAN, view.length - visible));
  const count = Math.max(0, Math.min(visible, view.length - first));
  while (pool.length < count) pool.push(pooledRow());
  topSpacer.firstChild.style.height = `${first * ROW_H}px`;
  bottomSpacer.firstChild.style.height = `${(view.length - first - count) * ROW_H}px`;
  const now = Date.now();
  const wanted = [topSpacer];
  for (let i = 0; i < count; i++) {
    fillRow(pool[i], view[first + i], now);
    wanted.push(pool[i].tr);
  }
  wanted.push(bottomSpacer);
  // Only touch the DOM structure when the set of rows changed; cell text is updated in place above.
  const children = el.rows.children;
  let same = children.length === wanted.length;
  for (let i = 0; same && i < wanted.length; i++) same = children[i] === wanted[i];
  if (!same) el.rows.replaceChildren(...wanted);
  el.empty.hidden = view.length > 0 || s.loading || !s.loadedOnce;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function fillRow(p, row, now) {
  const [room, identity, dialect, state, next, left, id] = p.cells;
  p.tr.dataset.id = row.delegation_id;
  p.tr.classList.toggle('selected', row.delegation_id === session?.drawerId);
  p.tr.classList.toggle('ended', row.leaveAt > 0);
  p.tr.classList.toggle('changed', now - row.changedAt < 1500);
  setText(room, row.room);
  room.title = row.room;
  setText(identity, row.identity);
  identity.title = row.identity;
  setText(dialect, row.dialect);
  setText(p.badge, row.state);
  p.badge.dataset.state = row.state;
  setText(next, nextRefreshText(row, now));
  const margin = marginOf(row, now);
  setText(left, margin.text);
  left.className = `num margin-${margin.level}`;
  left.title = margin.title;
  setText(id, row.delegation_id);
  next.className = 'num';
  id.className = 'mono id';
  room.className = 'mono';
  identity.className = 'mono';
}

function nextRefreshText(row, now) {
  if (!REFRESHING.has(row.state)) return row.state === 'firing' ? `firing ${row.pending_action ?? ''}`.trim() : row.outcome ?? '–';
  if (row.next_refresh_at === null) return 'in flight';
  const dt = row.next_refresh_at - now;
  return dt <= 0 ? `due ${fmtDuration(-dt)} ago` : `in ${fmtDuration(dt)}`;
}

/** Time left before the homeserver would fire the future by itself, and how worried to be about it. */
function marginOf(row, now) {
  if (TERMINAL.has(row.state)) return { text: '–', level: 'none', title: '' };
  const left = row.expires_at - now;
  const text = left <= 0 ? 'expired' : fmtDuration(left);
  const title = `expires at ${fmtClock(row.expires_at)}`;
  if (row.state === 'firing') return { text, level: 'none', title };
  const fraction = row.span > 0 ? left / row.span : 1;
  if (left < THIN_SECONDS * 1000 || fraction < 0.25) return { text, level: 'danger', title: `${title}: thin margin` };
  // A refresh that is late (or keeps being retried) shows before the margin gets thin.
  const overdue = row.next_refresh_at !== null && now - row.next_refresh_at > OVERDUE_MS;
  if (fraction < 0.4 || overdue) return { text, level: 'warn', title: `${title}: refresh late` };
  return { text, level: 'ok', title };
}

el.rows.addEventListener('click', (ev) => {
  const tr = ev.target instanceof Element ? ev.target.closest('tr[data-id]') : null;
  if (tr && session) openDrawer(session, tr.dataset.id);
});
el.rows.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter') return;
  const tr = ev.target instanceof Element ? ev.target.closest('tr[data-id]') : null;
  if (tr && session) openDrawer(session, tr.dataset.id);
});

// ---------------------------------------------------------------------------------------------------------------
// Totals

function schedulePollStats(s, delay) {
  s.statsTimer = setTimeout(() => void pollStats(s), delay);
}

async function pollStats(s) {
  let next = STATS_EVERY_MS;
  try {
    renderStats(await api(s, 'v1/admin/stats'));
    if (el.notice.textContent.startsWith('Totals')) showNotice('');
  } catch (err) {
    if (session !== s) return;
    if (isAuthError(err)) return signOut(explain(err));
    showNotice(`Totals: ${explain(err)}`);
    if (err instanceof ApiError && err.status === 429) next = Math.max(next, err.retryAfterMs ?? next);
  }
  if (session === s) schedulePollStats(s, next);
}

function renderStats(stats) {
  // Behind a homeserver (application service) calls are made as each user; standalone they carry no identity.
  setText(el.tMode, stats.mode?.kind === 'appservice' ? `application service of ${stats.mode.server_name}` : 'standalone');
  setText(el.tOpen, fmtInt(stats.open));
  setText(el.tRefreshes, fmtInt(stats.refreshes_last_minute));
  setText(el.tActions, fmtInt(stats.actions_last_minute));
  const m = stats.smallest_expiry_margin_seconds;
  setText(el.tMargin, m === null ? 'none open' : m <= 0 ? 'expired' : fmtDuration(m * 1000));
  el.tMargin.dataset.level = m !== null && m < THIN_SECONDS ? 'danger' : 'ok';
  const chips = [];
  for (const state of OPEN_STATES) {
    const n = stats.by_state?.[state] ?? 0;
    const chip = document.createElement('span');
    chip.className = 'badge';
    chip.dataset.state = state;
    chip.classList.toggle('zero', n === 0);
    chip.textContent = `${state} ${fmtInt(n)}`;
    chips.push(chip);
  }
  el.tStates.replaceChildren(...chips);
}

function clearStats() {
  for (const node of [el.tMode, el.tOpen, el.tRefreshes, el.tActions, el.tMargin]) node.textContent = '–';
  el.tStates.replaceChildren();
}

// ---------------------------------------------------------------------------------------------------------------
// The drawer: one delegation and its history

el.dClose.addEventListener('click', () => closeDrawer());
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !el.drawer.hidden) closeDrawer();
});
el.dFilterRoom.addEventListener('click', () => filterFromDrawer('room'));
el.dFilterIdentity.addEventListener('click', () => filterFromDrawer('identity'));

function filterFromDrawer(which) {
  const value = el.drawer.dataset[which];
  if (!session || value === undefined) return;
  (which === 'room' ? el.fRoom : el.fIdentity).value = value;
  applyServerFilters();
}

function openDrawer(s, id) {
  s.drawerId = id;
  el.drawer.hidden = false;
  el.dTitle.textContent = id;
  el.dFields.replaceChildren();
  el.dHistory.replaceChildren();
  el.dError.hidden = true;
  render();
  void loadDrawer(s, id);
}

function closeDrawer() {
  el.drawer.hidden = true;
  delete el.drawer.dataset.id;
  if (session) {
    session.drawerId = null;
    render();
  }
}

function scheduleDrawerRefresh(s) {
  clearTimeout(s.drawerTimer);
  s.drawerTimer = setTimeout(() => s.drawerId && loadDrawer(s, s.drawerId), 300);
}

async function loadDrawer(s, id) {
  let d;
  try {
    d = await api(s, `v1/admin/delegations/${encodeURIComponent(id)}`);
  } catch (err) {
    if (session !== s || s.drawerId !== id) return;
    if (isAuthError(err)) return signOut(explain(err));
    el.dError.textContent = err instanceof ApiError && err.status === 404 ? 'This delegation is not known to the daemon.' : explain(err);
    el.dError.hidden = false;
    return;
  }
  if (session !== s || s.drawerId !== id) return;
  el.drawer.dataset.id = id;
  el.drawer.dataset.room = d.room;
  el.drawer.dataset.identity = d.identity;
  const fields = [
    ['delegation', d.delegation_id],
    ['state', d.state],
    ['dialect', d.dialect],
    // The route it arrived through: /v1/delegations, or lk-jwt-service's /delegate_delayed_leave, /get_token, /sfu/get.
    ['route', d.route ?? '–'],
    ['room', d.room],
    ['identity', d.identity],
    ['created', fmtDate(d.created_at)],
    ['expires', TERMINAL.has(d.state) ? '–' : `${fmtDate(d.expires_at)} (${marginOf(toRow(d, s.rows.get(id)), Date.now()).text})`],
    ['next refresh', d.next_refresh_at === null ? '–' : fmtDate(d.next_refresh_at)],
    ['pending action', d.pending_action ?? '–'],
    ['outcome', d.outcome ?? '–'],
  ];
  const nodes = [];
  for (const [name, value] of fields) {
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    if (name === 'state') {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.dataset.state = value;
      badge.textContent = value;
      dd.append(badge);
    } else {
      dd.textContent = value;
    }
    if (name === 'delegation' || name === 'room' || name === 'identity') dd.className = 'mono';
    nodes.push(dt, dd);
  }
  el.dFields.replaceChildren(...nodes);
  const items = (Array.isArray(d.history) ? d.history : []).map((h) => {
    const li = document.createElement('li');
    const at = document.createElement('time');
    at.dateTime = new Date(h.at).toISOString();
    at.textContent = fmtClock(h.at, true);
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.dataset.state = h.state;
    badge.textContent = h.state;
    const what = document.createElement('span');
    what.className = 'what';
    what.textContent = h.what;
    li.append(at, badge, what);
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement('li');
    li.className = 'muted';
    li.textContent = 'No history in memory (the daemon restarted since, or it is too old).';
    items.push(li);
  }
  el.dHistory.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting

const intFormat = new Intl.NumberFormat('en');

function fmtInt(n) {
  return typeof n === 'number' ? intFormat.format(n) : '–';
}

function pad(n, width = 2) {
  return String(n).padStart(width, '0');
}

function fmtDuration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
}

function fmtClock(ms, millis = false) {
  const d = new Date(ms);
  const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return millis ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
}

function fmtDate(ms) {
  if (typeof ms !== 'number') return '–';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(ms)}`;
}

// Times tick between events.
setInterval(() => render(), 1000);
