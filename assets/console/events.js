// events.js: the "Live events" view. It owns the /ws connection (a probe that explains refusals,
// the socket, pause/resume, reconnecting with back-off, resuming from the last stream sequence),
// the bounded buffer of the last 500 events and its table (rendered at most once per animation
// frame), and the detail panel of the selected event. It also exports how a validation error
// string ("<path>: <message> (schema <location>)") is split and listed; documents.js reuses it.

import {
  authHeaders, clearStatus, el, errorFrom, getToken, onTokenChange, reportUnauthorized, showStatus, timeEl,
} from './api.js';

const MAX_ROWS = 500;
const MIN_DELAY = 1000;
const MAX_DELAY = 30000;
const SUBPROTOCOL = 'cloudevents.json';
/** A connection that lasted this long resets the back-off. */
const STABLE_MS = 10000;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

const s = {
  filters: { topic: '', type: '', validation: 'all', rejected: false },
  start: { kind: 'new' }, // where the current connection was asked to start
  lastSeq: null, // `streamseq` of the last event received (NATS only)
  socket: null,
  gen: 0, // bumped by every connect/pause: events of older sockets are ignored
  paused: false,
  delay: MIN_DELAY,
  retryTimer: 0,
  openedAt: 0,
  pending: [], // received, not yet rendered (oldest first)
  frame: 0,
  received: 0, // since the table was last cleared
  selected: null, // the selected <tr>
};
const rowEvent = new WeakMap();
let dom = null;

/** Wires the view and connects at once (start=new). */
export function init() {
  const $ = (id) => document.getElementById(id);
  dom = {
    filterForm: $('filter-form'), replayForm: $('replay-form'),
    topic: $('filter-topic'), type: $('filter-type'), validation: $('filter-validation'), rejected: $('filter-rejected'),
    replayFrom: $('replay-from'), pause: $('pause-button'), clear: $('clear-events'),
    wsState: $('ws-state'), count: $('events-count'), tbody: $('events-table').tBodies[0], detail: $('event-detail'),
  };
  dom.filterForm.addEventListener('submit', (e) => {
    e.preventDefault();
    readFilters();
    restart({ kind: 'new' });
  });
  dom.replayForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const start = parseStart(dom.replayFrom.value);
    if (!start) {
      dom.replayFrom.setAttribute('aria-invalid', 'true');
      showStatus('Replay from: give a stream sequence number (e.g. 1234) or an RFC 3339 time (e.g. 2026-11-26T17:00:00Z).', { level: 'error', source: 'replay' });
      dom.replayFrom.focus();
      return;
    }
    dom.replayFrom.removeAttribute('aria-invalid');
    clearStatus('replay');
    readFilters();
    restart(start);
  });
  dom.pause.addEventListener('click', () => (s.paused ? resume() : pause()));
  dom.clear.addEventListener('click', clearTable);
  dom.tbody.addEventListener('click', (e) => {
    const tr = e.target.closest('tr');
    if (tr && tr.parentElement === dom.tbody) select(tr);
  });
  dom.tbody.addEventListener('keydown', onRowKey);
  // A new token: connect again with it (resuming where we were), unless the user paused.
  onTokenChange(() => {
    if (!s.paused) connect(resumeStart());
  });
  readFilters();
  connect({ kind: 'new' });
}

// The view has nothing to do when shown or hidden: the feed keeps running in the background.
export function show() {}
export function hide() {}

// --- filters and start positions ---------------------------------------------------------------

function readFilters() {
  const list = (v) => v.split(',').map((x) => x.trim()).filter(Boolean).join(',');
  s.filters = {
    topic: dom.topic.value.trim(),
    type: list(dom.type.value),
    validation: dom.validation.value,
    rejected: dom.rejected.checked,
  };
}

/** "1234" → sequence, an RFC 3339 time → time, "all"/"new"; null when neither. */
function parseStart(text) {
  let t = text.trim();
  if (t === '' || t.toLowerCase() === 'new') return { kind: 'new' };
  if (t.toLowerCase() === 'all') return { kind: 'all' };
  if (/^\d+$/.test(t)) return { kind: 'seq', seq: t.replace(/^0+(?=\d)/, '') };
  // RFC 3339 allows a lower-case t/z (and a space): send the canonical upper-case form.
  t = t.replace(/^(\d{4}-\d{2}-\d{2})[tT ]/, '$1T').replace(/z$/, 'Z');
  if (RFC3339.test(t) && !Number.isNaN(Date.parse(t))) return { kind: 'time', time: t };
  return null;
}

/** Where to continue after a pause or an unexpected close: right after the last event seen. */
function resumeStart() {
  return s.lastSeq !== null ? { kind: 'seq', seq: String(s.lastSeq + 1) } : s.start;
}

function query(start, withToken) {
  const q = new URLSearchParams();
  const f = s.filters;
  if (f.topic) q.set('topic', f.topic);
  if (f.type) q.set('type', f.type);
  if (f.validation && f.validation !== 'all') q.set('validation', f.validation);
  if (f.rejected) q.set('rejected', 'true');
  if (start.kind === 'all') q.set('start', 'all');
  else if (start.kind === 'seq') q.set('start_seq', start.seq);
  else if (start.kind === 'time') q.set('start_time', start.time);
  if (withToken && getToken()) q.set('token', getToken());
  const text = q.toString();
  return text ? `/ws?${text}` : '/ws';
}

// --- the connection ----------------------------------------------------------------------------

function setWsState(text) {
  dom.wsState.textContent = text;
  dom.wsState.dataset.state = text.split(/[:\s]/)[0];
}

function setPauseButton() {
  dom.pause.textContent = s.paused ? 'Resume' : 'Pause';
  dom.pause.setAttribute('aria-pressed', String(s.paused));
}

/** New filters or a replay: a fresh table, a fresh position. */
function restart(start) {
  clearTable();
  s.lastSeq = null;
  s.paused = false;
  s.delay = MIN_DELAY;
  setPauseButton();
  connect(start);
}

function closeSocket() {
  const ws = s.socket;
  s.socket = null;
  if (ws && ws.readyState <= WebSocket.OPEN) {
    try {
      ws.close(1000, 'closed by the console');
    } catch {
      // Already closing.
    }
  }
}

function pause() {
  s.paused = true;
  s.gen += 1;
  clearTimeout(s.retryTimer);
  closeSocket();
  setPauseButton();
  setWsState('paused');
}

function resume() {
  s.paused = false;
  s.delay = MIN_DELAY;
  setPauseButton();
  connect(resumeStart());
}

/**
 * A websocket refused before the upgrade only says "error" to the page, so first ask the same URL
 * with a plain GET: 401 = token, 400 with a JSON `bad_request` (or serde's query complaint) =
 * filter; anything else (typically a complaint about the missing upgrade) = go ahead.
 */
async function probe(url) {
  let res;
  try {
    res = await fetch(url, { headers: authHeaders(), cache: 'no-store', credentials: 'same-origin' });
  } catch {
    return { down: true };
  }
  if (res.status === 401) return { auth: true };
  if (res.status === 400) {
    const err = await errorFrom(res);
    const aboutUpgrade = /upgrade|websocket|connection header/i.test(err.message);
    if (!aboutUpgrade && (err.kind === 'bad_request' || /query string/i.test(err.message))) {
      return { filter: err.message };
    }
  } else {
    res.body?.cancel().catch(() => {});
  }
  return { ok: true };
}

async function connect(start) {
  const gen = ++s.gen;
  clearTimeout(s.retryTimer);
  closeSocket();
  s.start = start;
  setWsState('connecting');
  const verdict = await probe(query(start, false));
  if (gen !== s.gen) return; // paused or reconnected meanwhile
  if (verdict.auth) {
    setWsState(getToken() ? 'closed: the token was refused' : 'closed: needs the admin token');
    reportUnauthorized('Live events need the admin token', 'ws');
    return;
  }
  if (verdict.filter) {
    setWsState('closed: the filter was refused');
    showStatus(`Live events: the filter was refused (${verdict.filter}). Check the filter and apply again.`, { level: 'error', source: 'ws' });
    return;
  }
  if (verdict.down) {
    retry('closed: eventgate did not answer');
    return;
  }
  open(gen, start);
}

function open(gen, start) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}${query(start, true)}`, [SUBPROTOCOL]);
  } catch (e) {
    setWsState(`closed: ${e.message}`);
    return;
  }
  s.socket = ws;
  let opened = false;
  ws.addEventListener('open', () => {
    if (gen !== s.gen) return;
    opened = true;
    s.openedAt = Date.now();
    setWsState('live');
    clearStatus('ws');
  });
  ws.addEventListener('message', (m) => {
    if (gen === s.gen) receive(m.data);
  });
  // 'error' is always followed by 'close', which says more.
  ws.addEventListener('close', (ev) => {
    if (gen !== s.gen) return;
    s.socket = null;
    closed(ev, opened);
  });
}

/** Why the socket closed, and whether to come back. */
function closed(ev, opened) {
  if (opened && Date.now() - s.openedAt >= STABLE_MS) s.delay = MIN_DELAY;
  const reason = ev.reason || '';
  if (ev.code === 4410) {
    const text = reason || 'unrecoverable position';
    setWsState(`closed: ${text}`);
    showStatus(`Live events: ${text}. Replay from a later position, or apply the filters to watch new events.`, { level: 'error', source: 'ws' });
  } else if (ev.code === 1008) {
    retry(`closed: ${reason || 'the console did not keep up'}`);
  } else if (ev.code === 1001) {
    retry(`closed: ${reason || 'eventgate is going away'}`);
  } else if (!opened) {
    retry('closed: could not connect (check the filter and the admin token)');
  } else {
    retry(`closed: ${reason || 'connection lost'} (code ${ev.code})`);
  }
}

/** Reconnects after the current back-off (1 s, doubling up to 30 s), from right after the last event. */
function retry(text) {
  const wait = s.delay;
  s.delay = Math.min(s.delay * 2, MAX_DELAY);
  setWsState(`${text}; reconnecting in ${Math.round(wait / 1000)} s`);
  s.retryTimer = setTimeout(() => connect(resumeStart()), wait);
}

// --- the table ---------------------------------------------------------------------------------

function receive(data) {
  if (typeof data !== 'string') return;
  let ev;
  try {
    ev = JSON.parse(data);
  } catch {
    return;
  }
  if (!ev || typeof ev !== 'object' || Array.isArray(ev)) return;
  if (Number.isSafeInteger(ev.streamseq)) s.lastSeq = ev.streamseq;
  s.received += 1;
  s.pending.push(ev);
  // Background tabs get no animation frames: keep only what could still be shown.
  if (s.pending.length > 2 * MAX_ROWS) s.pending.splice(0, s.pending.length - MAX_ROWS);
  if (!s.frame) s.frame = requestAnimationFrame(flush);
}

/** Renders what arrived since the last frame: newest on top, at most MAX_ROWS rows kept. */
function flush() {
  s.frame = 0;
  let batch = s.pending;
  s.pending = [];
  if (batch.length > MAX_ROWS) batch = batch.slice(-MAX_ROWS);
  const frag = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i -= 1) frag.append(row(batch[i]));
  dom.tbody.prepend(frag);
  for (let extra = dom.tbody.rows.length - MAX_ROWS; extra > 0; extra -= 1) {
    const last = dom.tbody.lastElementChild;
    if (last === s.selected) s.selected = null; // its detail stays on screen
    last.remove();
  }
  updateCount();
}

function updateCount() {
  const shown = dom.tbody.rows.length;
  dom.count.textContent =
    s.received > shown ? `${s.received} received, showing the last ${shown}` : `${shown} event${shown === 1 ? '' : 's'}`;
}

function clearTable() {
  cancelAnimationFrame(s.frame);
  s.frame = 0;
  s.pending = [];
  s.received = 0;
  s.selected = null;
  dom.tbody.replaceChildren();
  dom.detail.replaceChildren(
    el('h2', { id: 'event-detail-title', text: 'Event' }),
    el('p', { class: 'muted', text: 'Select an event to see it here.' }),
  );
  updateCount();
}

function text(v) {
  if (v === null || v === undefined) return '';
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

/**
 * The Kafka topic: from `source` (`kafka://<cluster>/<topic>`); a producer's own CloudEvent keeps
 * its source, then from `id` (`<topic>-<partition>-<offset>`) when it has that shape.
 */
export function topicOf(ev) {
  if (typeof ev.topic === 'string') return ev.topic;
  const m = /^kafka:\/\/[^/]*\/(.+)$/.exec(typeof ev.source === 'string' ? ev.source : '');
  if (m) return m[1];
  const tail = `-${ev.partition}-${ev.offset}`;
  if (typeof ev.id === 'string' && ev.offset !== undefined && ev.id.endsWith(tail)) return ev.id.slice(0, -tail.length);
  return '';
}

function badge(validation) {
  if (!['valid', 'invalid', 'unchecked'].includes(validation)) return text(validation);
  return el('span', { class: `badge badge-${validation}`, text: validation });
}

function row(ev) {
  const td = (cls, content) => el('td', { class: cls }, content);
  const tr = el(
    'tr',
    { tabindex: '0', dataset: { testid: 'event-row' } },
    td('col-topic', topicOf(ev)),
    td('col-partition', text(ev.partition)),
    td('col-offset', text(ev.offset)),
    td('col-key', text(ev.subject)),
    td('col-type', text(ev.type)),
    td('col-validation', badge(ev.validation)),
    td('col-time', timeEl(ev.time)),
  );
  rowEvent.set(tr, ev);
  return tr;
}

function onRowKey(e) {
  const tr = e.target.closest('tr');
  if (!tr || tr.parentElement !== dom.tbody) return;
  let next = null;
  if (e.key === 'Enter' || e.key === ' ') {
    e.preventDefault();
    select(tr);
  } else if (e.key === 'ArrowDown') next = tr.nextElementSibling;
  else if (e.key === 'ArrowUp') next = tr.previousElementSibling;
  else if (e.key === 'Home') next = dom.tbody.firstElementChild;
  else if (e.key === 'End') next = dom.tbody.lastElementChild;
  if (next) {
    e.preventDefault();
    next.focus();
  }
}

function select(tr) {
  if (s.selected) {
    s.selected.classList.remove('selected');
    s.selected.removeAttribute('aria-current');
  }
  s.selected = tr;
  tr.classList.add('selected');
  tr.setAttribute('aria-current', 'true');
  showDetail(rowEvent.get(tr));
}

function showDetail(ev) {
  const parts = [el('h2', { id: 'event-detail-title', text: ev.id ? `Event ${ev.id}` : 'Event' })];
  if (ev.validation === 'invalid' || ev.validation === 'unchecked') {
    parts.push(el('h3', { text: ev.validation === 'invalid' ? 'Validation errors' : 'Why it was not checked' }));
    parts.push(errorList(parseErrorList(ev.validationerrors), 'event-errors'));
  }
  if (ev.dataomitted === true) parts.push(el('p', { class: 'muted', text: `The data was left out (${text(ev.datasize)} bytes).` }));
  parts.push(el('h3', { text: 'CloudEvent' }));
  parts.push(el('pre', { id: 'event-json', class: 'code', tabindex: '0', text: JSON.stringify(ev, null, 2) }));
  dom.detail.replaceChildren(...parts);
}

// --- validation errors (shared with documents.js) ----------------------------------------------

/** `validationerrors` is a string holding a JSON array of strings; be lenient with anything else. */
export function parseErrorList(value) {
  if (Array.isArray(value)) return value.map(text);
  if (typeof value !== 'string' || value === '') return [];
  try {
    const parsed = JSON.parse(value);
    return Array.isArray(parsed) ? parsed.map(text) : [text(parsed)];
  } catch {
    return [value];
  }
}

/** "<path>: <message> (schema <location>)" → { path, message, schema } (path/schema may be null). */
export function parseValidationError(line) {
  let rest = String(line);
  let schema = null;
  const at = rest.lastIndexOf(' (schema ');
  if (at >= 0 && rest.endsWith(')')) {
    schema = rest.slice(at + ' (schema '.length, -1);
    rest = rest.slice(0, at);
  }
  let path = null;
  const colon = rest.indexOf(': ');
  // Instance paths start with '/' (the payload), or `key` / `headers` (see validate/route.rs).
  if (colon > 0 && /^(\/|key\b|headers\b)/.test(rest)) {
    path = rest.slice(0, colon);
    rest = rest.slice(colon + 2);
  }
  return { path, message: rest, schema };
}

/** A `<ul>` with one `<li data-testid="validation-error">` per error: path, message, schema. */
export function errorList(errors, id) {
  const ul = el('ul', { id, class: 'error-list' });
  if (errors.length === 0) ul.append(el('li', { class: 'muted', text: 'eventgate gave no details.' }));
  for (const line of errors) {
    const { path, message, schema } = parseValidationError(line);
    ul.append(
      el(
        'li',
        { dataset: { testid: 'validation-error' } },
        path !== null ? el('code', { class: 'err-path', text: path }) : null,
        path !== null ? ': ' : null,
        el('span', { class: 'err-message', text: message }),
        schema !== null ? el('span', { class: 'err-schema' }, 'schema ', el('code', { text: schema })) : null,
      ),
    );
  }
  return ul;
}
