// app.js: the entry point. It owns the header: the four view tabs (a WAI-ARIA tablist: arrow
// keys, Home and End move between them; only the active view's section is shown), the admin
// token dialog and #auth-state. It starts every view; the live events connect at once.

import { clearStatus, getToken, onTokenChange, setToken, setTokenPrompt, showStatus } from './api.js';
import * as documents from './documents.js';
import * as events from './events.js';
import * as rates from './rates.js';
import * as subscriptions from './subscriptions.js';

const VIEWS = ['events', 'rates', 'documents', 'subscriptions'];
const modules = { events, rates, documents, subscriptions };
const $ = (id) => document.getElementById(id);
let current = null;

// --- views -------------------------------------------------------------------------------------

function activate(name, { focus = false } = {}) {
  if (name === current) return;
  for (const v of VIEWS) {
    const on = v === name;
    const tab = $(`tab-${v}`);
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`view-${v}`).hidden = !on;
  }
  if (current) modules[current].hide();
  current = name;
  modules[name].show();
  if (focus) $(`tab-${name}`).focus();
  // Keep the view in the address (a reload comes back to it); the events view is the default.
  const url = name === 'events' ? location.pathname + location.search : `${location.pathname}${location.search}#${name}`;
  history.replaceState(null, '', url);
}

function initTabs() {
  const tablist = $('tabs');
  for (const v of VIEWS) $(`tab-${v}`).addEventListener('click', () => activate(v));
  tablist.addEventListener('keydown', (e) => {
    const i = VIEWS.indexOf(current);
    const moves = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: VIEWS.length - 1 };
    if (!(e.key in moves)) return;
    e.preventDefault();
    activate(VIEWS[(moves[e.key] + VIEWS.length) % VIEWS.length], { focus: true });
  });
  window.addEventListener('hashchange', () => {
    const v = location.hash.slice(1);
    if (VIEWS.includes(v)) activate(v);
  });
}

// --- admin token -------------------------------------------------------------------------------

function updateAuthState() {
  $('auth-state').textContent = getToken() ? 'token set' : 'read-only';
}

function openTokenDialog() {
  const dialog = $('token-dialog');
  $('token-input').value = '';
  $('token-dialog-state').textContent = getToken()
    ? 'A token is set for this tab. Save another one, or forget it.'
    : 'No token is set: the console is read-only where eventgate allows reads.';
  $('token-forget').hidden = !getToken();
  if (!dialog.open) dialog.showModal();
  $('token-input').focus();
}

function initToken() {
  const dialog = $('token-dialog');
  $('token-button').addEventListener('click', openTokenDialog);
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('token-input').value.trim();
    dialog.close();
    setToken(value);
    $('token-button').focus();
  });
  $('token-cancel').addEventListener('click', () => dialog.close());
  $('token-forget').addEventListener('click', () => {
    dialog.close();
    setToken('');
    $('token-button').focus();
  });
  setTokenPrompt(openTokenDialog);
  onTokenChange((token) => {
    updateAuthState();
    clearStatus();
    showStatus(token ? 'Admin token set for this tab.' : 'Admin token forgotten: the console is read-only.', { source: 'token' });
  });
  updateAuthState();
}

// --- start -------------------------------------------------------------------------------------

initToken();
initTabs();
for (const v of VIEWS) modules[v].init();
const wanted = location.hash.slice(1);
activate(VIEWS.includes(wanted) ? wanted : 'events');
