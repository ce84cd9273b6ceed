// rates.js: the "Rates" view. It owns polling GET /stats/topics (once when the view opens, then
// every 5 s while it is visible), the per-topic figures (records/s over the last minute, invalid
// share and refused records over the whole window) and the SVG sparklines of records/s.

import { api, clearStatus, el, poller, reportError } from './api.js';

const POLL_MS = 5000;
const SVG = 'http://www.w3.org/2000/svg';
const OTHER = '(other topics)';

let dom = null;
const refresh = poller(load, POLL_MS);

export function init() {
  dom = {
    tbody: document.getElementById('rates-table').tBodies[0],
    info: document.getElementById('rates-info'),
  };
}

export function show() {
  refresh.start();
}

export function hide() {
  refresh.stop();
}

async function load() {
  try {
    render(await api('/stats/topics'));
    clearStatus('rates');
  } catch (e) {
    dom.info.textContent = `Could not load the rates: ${e.message}`;
    reportError('Rates', e, 'rates');
  }
}

const sum = (xs) => xs.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
const series = (t, name) => (Array.isArray(t[name]) ? t[name].map(Number) : []);

/** Figures for one topic of the answer. */
export function figures(t, interval) {
  const records = series(t, 'records');
  // The last bucket is the interval in progress: rates use complete buckets only.
  const complete = records.slice(0, -1);
  const perMinute = Math.max(1, Math.round(60 / interval));
  const lastMinute = complete.slice(-perMinute);
  const rate = lastMinute.length ? sum(lastMinute) / (perMinute * interval) : 0;
  const valid = sum(series(t, 'valid'));
  const invalid = sum(series(t, 'invalid'));
  const unchecked = sum(series(t, 'unchecked'));
  const checked = valid + invalid + unchecked;
  return {
    rate,
    invalidShare: checked > 0 ? invalid / checked : null,
    refused: sum(series(t, 'refused')),
    spark: complete.map((n) => n / interval),
  };
}

export function formatRate(r) {
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  return r.toFixed(2);
}

function render(stats) {
  const interval = Number(stats.interval_secs) > 0 ? Number(stats.interval_secs) : 5;
  const buckets = Number(stats.buckets) > 0 ? Number(stats.buckets) : 60;
  const windowMin = Math.round((interval * buckets) / 60);
  const topics = Array.isArray(stats.topics) ? stats.topics.filter((t) => t && typeof t.topic === 'string') : [];
  // Alphabetical, with the catch-all last.
  topics.sort((a, b) => (a.topic === OTHER) - (b.topic === OTHER) || a.topic.localeCompare(b.topic));
  const rows = topics.map((t) => {
    const f = figures(t, interval);
    return el(
      'tr',
      { dataset: { testid: 'rate-row' } },
      el('td', { class: 'col-topic', text: t.topic }),
      el('td', { class: 'col-rate num', text: formatRate(f.rate) }),
      el('td', { class: 'col-invalid-share num', text: f.invalidShare === null ? '–' : `${(f.invalidShare * 100).toFixed(1)}%` }),
      el('td', { class: 'col-refused num', text: String(f.refused) }),
      el('td', { class: 'col-spark' }, sparkline(f.spark, `records per second over the last ${windowMin} minutes of ${t.topic}`)),
    );
  });
  if (rows.length === 0) {
    rows.push(el('tr', {}, el('td', { colspan: '5', class: 'muted', text: 'No records seen yet.' })));
  }
  dom.tbody.replaceChildren(...rows);
  const when = typeof stats.end === 'number' ? new Date(stats.end * 1000).toISOString().replace('.000Z', 'Z') : '';
  dom.info.textContent =
    `Window: the last ${windowMin} minutes in ${interval} s intervals${when ? `, up to ${when}` : ''}.` +
    (stats.other_topics ? ` More topics than eventgate keeps apart: the rest are summed under "${OTHER}".` : '');
}

/** A small line chart of values (oldest first), 0 at the bottom, scaled to the largest. */
function sparkline(values, label) {
  const w = 120;
  const h = 28;
  const pad = 2;
  const max = Math.max(0, ...values);
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'sparkline');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('width', String(w));
  svg.setAttribute('height', String(h));
  svg.setAttribute('role', 'img');
  const summary = `${label}: peak ${formatRate(max)}/s`;
  svg.setAttribute('aria-label', summary);
  const title = document.createElementNS(SVG, 'title');
  title.textContent = summary;
  svg.append(title);
  if (values.length > 0) {
    const step = values.length > 1 ? (w - 2 * pad) / (values.length - 1) : 0;
    const y = (v) => (max > 0 ? h - pad - (v / max) * (h - 2 * pad) : h - pad);
    const points = values.map((v, i) => `${(pad + i * step).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points);
    line.setAttribute('class', 'sparkline-line');
    svg.append(line);
  }
  return svg;
}
