// api.js: everything shared by the views. It owns talking to eventgate's HTTP API (fetch with
// the admin token, JSON errors as ApiError), the admin token itself (sessionStorage only), the
// status banner (#status, aria-live) and two tiny DOM helpers. Nothing here ever parses HTML:
// text from the server or from events only reaches the page through textContent.

const TOKEN_KEY = 'eventgate.token';

// --- admin token -------------------------------------------------------------------------------

/** The admin token of this tab, or '' (kept in sessionStorage, never localStorage). */
export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

/** Sets (or, with '', forgets) the admin token and tells the views. */
export function setToken(value) {
  const token = (value || '').trim();
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lives as long as nothing reads it again. Nothing better to do.
  }
  window.dispatchEvent(new CustomEvent('eventgate:token'));
}

/** Calls fn(token) whenever the token is set or forgotten. */
export function onTokenChange(fn) {
  window.addEventListener('eventgate:token', () => fn(getToken()));
}

/** `Authorization` header for fetch, when a token is set. */
export function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The token dialog lives in app.js; it registers itself here so any view can offer it.
let promptForToken = () => {};
export function setTokenPrompt(fn) {
  promptForToken = fn;
}

/**
 * The text for a 401: `<phrase>.` without a token, `<phrase>: the token was refused.` with one.
 * phrase is e.g. "This needs the admin token" or "Live events need the admin token".
 */
export function authMessage(phrase = 'This needs the admin token') {
  return getToken() ? `${phrase}: the token was refused.` : `${phrase}.`;
}

/** Shows a 401 in #status with a button that opens the token dialog. */
export function reportUnauthorized(phrase, source = 'auth') {
  showStatus(authMessage(phrase), {
    level: 'error',
    source,
    action: { label: getToken() ? 'Enter another token' : 'Enter admin token', run: () => promptForToken() },
  });
}

// --- HTTP --------------------------------------------------------------------------------------

/** A refused request: HTTP status (0 when eventgate did not answer), the JSON `kind`, the text. */
export class ApiError extends Error {
  constructor(status, kind, message, body = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.kind = kind;
    this.body = body;
  }
}

/** Reads an error answer: `{"error","kind",...}` when it is JSON, else its text. */
export async function errorFrom(res) {
  const text = await res.text().catch(() => '');
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  const obj = body && typeof body === 'object' ? body : null;
  const message =
    obj && typeof obj.error === 'string'
      ? obj.error
      : text.trim().slice(0, 300) || `HTTP ${res.status} ${res.statusText}`.trim();
  const kind = obj && typeof obj.kind === 'string' ? obj.kind : '';
  return new ApiError(res.status, kind, message, obj);
}

/**
 * One request to eventgate (same origin), with the admin token when set.
 *   body:        a string (sent as is, with contentType) or any other value (sent as JSON)
 *   as:          'json' (default), 'text', 'none', or 'full' ({ status, data }, data as JSON)
 *   authPhrase:  what #status says on a 401 (see authMessage); quietAuth: say nothing
 * Resolves to the answer (null for 204); rejects with ApiError.
 */
export async function api(path, { method = 'GET', body, contentType, as = 'json', authPhrase, quietAuth = false } = {}) {
  const headers = { ...authHeaders() };
  let payload = body;
  if (body !== undefined && typeof body !== 'string') {
    payload = JSON.stringify(body);
    contentType = contentType || 'application/json';
  }
  if (contentType) headers['Content-Type'] = contentType;
  if (as === 'json' || as === 'full') headers.Accept = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, cache: 'no-store', credentials: 'same-origin' });
  } catch {
    throw new ApiError(0, 'network', 'eventgate did not answer (network error)');
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (err.status === 401 && !quietAuth) reportUnauthorized(authPhrase);
    throw err;
  }
  if (as === 'none') return null;
  if (as === 'text') return res.text();
  if (res.status === 204) return as === 'full' ? { status: 204, data: null } : null;
  try {
    const data = await res.json();
    return as === 'full' ? { status: res.status, data } : data;
  } catch {
    throw new ApiError(res.status, 'bad_answer', 'eventgate sent an answer that is not JSON');
  }
}

/** A path segment (document id, subscription name), encoded. */
export function seg(s) {
  return encodeURIComponent(String(s));
}

/**
 * Shows a failed request in #status as `<what>: <error>`, except a 401, which api() has already
 * shown with the token button.
 */
export function reportError(what, err, source = '') {
  if (err instanceof ApiError && err.status === 401) return;
  showStatus(`${what}: ${err.message}`, { level: 'error', source });
}

// --- status banner -----------------------------------------------------------------------------

let statusSource = null;

/**
 * Replaces the message in #status. level: 'info' | 'error'; source: who said it (so that only
 * they clear it); action: { label, run } adds a button (e.g. "Enter admin token").
 */
export function showStatus(text, { level = 'info', source = '', action = null } = {}) {
  const box = document.getElementById('status');
  if (!box) return;
  const parts = [el('span', { class: 'status-text', text })];
  if (action) parts.push(el('button', { type: 'button', class: 'status-action', on: { click: action.run } }, action.label));
  parts.push(
    el('button', { type: 'button', class: 'status-dismiss', 'aria-label': 'Dismiss message', on: { click: () => clearStatus() } }, '×'),
  );
  box.replaceChildren(...parts);
  box.className = `status status-${level}`;
  statusSource = source;
}

/** Clears #status: any message without an argument, else only one that source showed. */
export function clearStatus(source) {
  if (source !== undefined && source !== statusSource) return;
  const box = document.getElementById('status');
  if (!box) return;
  box.replaceChildren();
  box.className = 'status';
  statusSource = null;
}

// --- DOM helpers -------------------------------------------------------------------------------

/**
 * createElement with properties and children. props: class, text, dataset, on ({event: fn}),
 * anything else is an attribute (true: present, null/false: absent). Children: nodes or strings
 * (strings become text nodes, never markup).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'on') for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'object' ? child : String(child));
  }
  return node;
}

/** A `<time>` showing an RFC 3339 string as sent ('' when absent). */
export function timeEl(value) {
  if (typeof value !== 'string' || !value) return document.createTextNode('');
  return el('time', { datetime: value, text: value });
}

/** A number for a table cell, digits only so it reads back exactly ('–' when absent). */
export function num(value) {
  return typeof value === 'number' && Number.isFinite(value) ? String(value) : '–';
}

/**
 * Calls `load` now and every `ms` while started and the tab is visible, never two at once:
 * the views that refresh themselves (rates, subscriptions) share it.
 */
export function poller(load, ms) {
  let timer = 0;
  let busy = false;
  const run = async () => {
    if (busy) return;
    busy = true;
    try {
      await load();
    } finally {
      busy = false;
    }
  };
  return {
    start() {
      clearInterval(timer);
      timer = setInterval(() => {
        if (!document.hidden) run();
      }, ms);
      run();
    },
    stop() {
      clearInterval(timer);
      timer = 0;
    },
  };
}
