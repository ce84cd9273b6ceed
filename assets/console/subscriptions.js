// subscriptions.js: the "Subscriptions" view. It owns polling GET /subscriptions and each
// GET /subscriptions/{name} (once when the view opens, then every 5 s while it is visible), the
// status table, the "needs the admin token" / "needs NATS" explanations, and the per-row
// Pause/Resume buttons (POST /subscriptions/{name}/pause|resume, shown only with a token).

import { ApiError, api, authMessage, clearStatus, el, getToken, num, onTokenChange, poller, reportError, seg, showStatus, timeEl } from './api.js';

const POLL_MS = 5000;
const PARALLEL = 6; // GET /subscriptions/{name} at a time

let dom = null;
let visible = false;
const refresh = poller(load, POLL_MS);

export function init() {
  dom = {
    tbody: document.getElementById('subscriptions-table').tBodies[0],
    message: document.getElementById('subscriptions-message'),
  };
  dom.tbody.addEventListener('click', onTableClick);
  onTokenChange(() => {
    if (visible) show();
  });
}

export function show() {
  visible = true;
  refresh.start();
}

export function hide() {
  visible = false;
  refresh.stop();
}

async function load() {
  try {
    const list = await api('/subscriptions', { authPhrase: 'Subscriptions need the admin token' });
    const names = (Array.isArray(list?.subscriptions) ? list.subscriptions : [])
      .map((r) => r?.metadata?.name)
      .filter((n) => typeof n === 'string')
      .sort();
    const details = await mapLimited(names, PARALLEL, (name) =>
      api(`/subscriptions/${seg(name)}`, { authPhrase: 'Subscriptions need the admin token' }).catch((e) => {
        if (e instanceof ApiError && e.status === 404) return null; // deleted meanwhile
        throw e;
      }),
    );
    render(names, details);
    clearStatus('subscriptions');
  } catch (e) {
    failed(e);
  }
}

/** Like Promise.all(items.map(fn)), with at most `limit` calls running at once. */
async function mapLimited(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function failed(e) {
  dom.tbody.replaceChildren();
  if (e instanceof ApiError && e.status === 401) {
    dom.message.textContent = authMessage('Subscriptions: this view needs the admin token');
    refresh.stop(); // a new token restarts it (onTokenChange)
  } else if (e instanceof ApiError && e.kind === 'nats_required') {
    dom.message.textContent = 'This eventgate runs without NATS, and subscriptions need NATS (start eventgate with --nats-url).';
    refresh.stop();
  } else {
    dom.message.textContent = `Could not load the subscriptions: ${e.message}`;
    reportError('Subscriptions', e, 'subscriptions');
  }
}

function render(names, details) {
  const rows = [];
  names.forEach((name, i) => {
    if (details[i]) rows.push(subRow(name, details[i]));
  });
  dom.message.textContent = rows.length ? '' : 'No subscriptions.';
  if (!getToken()) dom.message.textContent += ' Set the admin token to get Pause and Resume buttons.';
  dom.tbody.replaceChildren(...rows);
}

function subRow(name, d) {
  const st = d.status && typeof d.status === 'object' ? d.status : {};
  const paused = st.paused !== null && st.paused !== undefined && st.paused !== false;
  const td = (cls, ...content) => el('td', { class: cls }, ...content);
  const reason = paused && typeof st.paused === 'object' && st.paused.reason ? String(st.paused.reason) : '';
  const err = st.last_error && typeof st.last_error === 'object' ? st.last_error : null;
  return el(
    'tr',
    { dataset: { testid: 'subscription-row', name } },
    td('col-name', el('code', { text: name })),
    td(
      'col-paused',
      el('span', { class: `badge ${paused ? 'badge-paused' : 'badge-running'}`, text: paused ? 'paused' : 'running' }),
      reason ? el('span', { class: 'pause-reason', text: reason }) : null,
    ),
    td('col-delivered num', num(st.delivered)),
    td('col-pending num', num(st.pending)),
    td('col-in-flight num', num(st.in_flight)),
    td('col-dead-lettered num', num(st.dead_lettered)),
    td('col-last-success', st.last_success ? timeEl(st.last_success) : '–'),
    td(
      'col-last-error',
      err
        ? el(
            'span',
            { class: 'last-error' },
            timeEl(err.time),
            ' ',
            el('span', { class: 'error-status', text: err.status !== undefined && err.status !== null ? String(err.status) : '' }),
            ' ',
            el('span', { class: 'error-text', text: String(err.error ?? '') }),
          )
        : '–',
    ),
    td(
      'col-actions',
      getToken()
        ? el(
            'button',
            { type: 'button', class: paused ? 'resume-subscription' : 'pause-subscription', dataset: { name, action: paused ? 'resume' : 'pause' }, 'aria-label': `${paused ? 'Resume' : 'Pause'} subscription ${name}` },
            paused ? 'Resume' : 'Pause',
          )
        : null,
    ),
  );
}

async function onTableClick(e) {
  const button = e.target.closest('button[data-action]');
  if (!button || !dom.tbody.contains(button)) return;
  const { name, action } = button.dataset;
  button.disabled = true;
  try {
    await api(`/subscriptions/${seg(name)}/${action}`, { method: 'POST', as: 'none', authPhrase: 'Pausing and resuming need the admin token' });
    showStatus(`Subscription ${name}: ${action === 'pause' ? 'paused' : 'resumed'}.`, { source: 'subscriptions' });
    await load();
  } catch (err) {
    button.disabled = false;
    reportError(`Could not ${action} subscription ${name}`, err, 'subscriptions');
  }
}
