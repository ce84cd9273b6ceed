// documents.js: the "Documents" view. It owns the AsyncAPI document list (GET /specs), loading a
// document's text back (GET /specs/{id}), uploading one (PUT /specs/{id}, from a picked or dropped
// file or the text area, with the offending line shown under a 400 that has a position),
// deleting one (a second click confirms), and the "Try a message" box (POST /specs/{id}/validate).

import { ApiError, api, clearStatus, el, reportError, seg, showStatus, timeEl } from './api.js';
import { errorList } from './events.js';

let dom = null;
let fileRead = null; // the picked/dropped file being read into the text area
let suggestedId = ''; // the id last suggested from a file name
const confirmTimers = new WeakMap();

export function init() {
  const $ = (id) => document.getElementById(id);
  dom = {
    tbody: $('documents-table').tBodies[0], info: $('documents-info'),
    uploadForm: $('upload-form'), id: $('document-id'), file: $('document-file'), fileName: $('document-file-name'),
    drop: $('drop-zone'), text: $('document-text'), uploadButton: $('upload-button'), uploadResult: $('upload-result'),
    validateForm: $('validate-form'), vdoc: $('validate-document'), vtopic: $('validate-topic'), vvalue: $('validate-value'),
    validateButton: $('validate-button'), validateResult: $('validate-result'),
  };
  dom.file.addEventListener('change', () => takeFile(dom.file.files[0]));
  // Drag and drop: highlight the zone, take the first file.
  for (const type of ['dragenter', 'dragover']) {
    dom.drop.addEventListener(type, (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
      dom.drop.classList.add('dragging');
    });
  }
  dom.drop.addEventListener('dragleave', (e) => {
    if (!dom.drop.contains(e.relatedTarget)) dom.drop.classList.remove('dragging');
  });
  dom.drop.addEventListener('drop', (e) => {
    e.preventDefault();
    dom.drop.classList.remove('dragging');
    takeFile(e.dataTransfer?.files?.[0]);
  });
  // A file dropped next to the zone must not make the browser leave the console.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
  dom.text.addEventListener('input', () => {
    fileRead = null;
  });
  dom.uploadForm.addEventListener('submit', upload);
  dom.validateForm.addEventListener('submit', tryMessage);
  dom.tbody.addEventListener('click', onTableClick);
}

export function show() {
  load();
}

export function hide() {}

// --- the list ----------------------------------------------------------------------------------

async function load() {
  let docs;
  try {
    docs = await api('/specs');
  } catch (e) {
    dom.info.textContent = `Could not load the documents: ${e.message}`;
    reportError('Documents', e, 'documents');
    return;
  }
  if (!Array.isArray(docs)) docs = [];
  docs.sort((a, b) => String(a.id).localeCompare(String(b.id)));
  dom.info.textContent = docs.length ? `${docs.length} document${docs.length === 1 ? '' : 's'}.` : 'No documents yet: upload one below.';
  dom.tbody.replaceChildren(...docs.map(docRow));
  fillSelect(docs.map((d) => String(d.id)));
}

function docRow(d) {
  const id = String(d.id ?? '');
  const td = (cls, ...content) => el('td', { class: cls }, ...content);
  const warnings = Array.isArray(d.warnings) ? d.warnings : [];
  const topics = Array.isArray(d.topics) ? d.topics.map(String) : [];
  return el(
    'tr',
    { dataset: { testid: 'document-row', id } },
    td('col-id', el('code', { text: id })),
    td(
      'col-title',
      String(d.title ?? ''),
      warnings.length
        ? el(
            'details',
            { class: 'warnings' },
            el('summary', { text: `${warnings.length} warning${warnings.length === 1 ? '' : 's'}` }),
            el('ul', {}, ...warnings.map((w) => el('li', { text: String(w) }))),
          )
        : null,
    ),
    td('col-version', String(d.version ?? '')),
    td('col-asyncapi', String(d.asyncapi ?? '')),
    td('col-topics', topics.join(', ')),
    td('col-uploaded', timeEl(d.uploaded_at)),
    td(
      'col-actions',
      el('button', { type: 'button', class: 'load-document', dataset: { id }, 'aria-label': `Load document ${id} into the editor` }, 'Load'),
      el('button', { type: 'button', class: 'delete-document danger', dataset: { id }, 'aria-label': `Delete document ${id}` }, 'Delete'),
    ),
  );
}

function fillSelect(ids) {
  const current = dom.vdoc.value;
  const options = ids.map((id) => el('option', { value: id, text: id }));
  if (options.length === 0) options.push(el('option', { value: '', text: '(no documents)' }));
  dom.vdoc.replaceChildren(...options);
  if (ids.includes(current)) dom.vdoc.value = current;
}

function onTableClick(e) {
  const button = e.target.closest('button');
  if (!button || !dom.tbody.contains(button)) return;
  const id = button.dataset.id;
  if (button.classList.contains('delete-document')) remove(button, id);
  else if (button.classList.contains('load-document')) loadText(id);
}

/** First click arms the button ("Really delete?"), a second one within 5 s deletes. */
async function remove(button, id) {
  if (button.dataset.armed !== 'true') {
    button.dataset.armed = 'true';
    button.textContent = 'Really delete?';
    button.setAttribute('aria-label', `Really delete document ${id}? Press again to confirm`);
    button.classList.add('armed');
    showStatus(`Press "Really delete?" again to delete document ${id}.`, { source: 'documents' });
    confirmTimers.set(button, setTimeout(() => disarm(button, id), 5000));
    return;
  }
  disarm(button, id);
  button.disabled = true;
  try {
    await api(`/specs/${seg(id)}`, { method: 'DELETE', as: 'none', authPhrase: 'Deleting a document needs the admin token' });
    showStatus(`Deleted document ${id}.`, { source: 'documents' });
    await load();
  } catch (e) {
    button.disabled = false;
    reportError(`Could not delete document ${id}`, e, 'documents');
  }
}

function disarm(button, id) {
  clearTimeout(confirmTimers.get(button));
  button.dataset.armed = 'false';
  button.textContent = 'Delete';
  button.setAttribute('aria-label', `Delete document ${id}`);
  button.classList.remove('armed');
}

/** Puts a document's original text into the upload form, to edit and upload again. */
async function loadText(id) {
  try {
    const text = await api(`/specs/${seg(id)}`, { as: 'text' });
    fileRead = null;
    dom.id.value = id;
    dom.text.value = text;
    dom.fileName.textContent = '';
    clearUploadResult();
    showStatus(`Loaded document ${id} into the editor.`, { source: 'documents' });
    dom.text.focus();
  } catch (e) {
    reportError(`Could not load document ${id}`, e, 'documents');
  }
}

// --- upload ------------------------------------------------------------------------------------

/** A picked or dropped file: its text goes into the text area, its name (sans extension) into the id. */
function takeFile(file) {
  if (!file) return;
  const id = file.name.replace(/\.[^.]*$/, '').replace(/[^A-Za-z0-9._-]/g, '-');
  if (id && (dom.id.value.trim() === '' || dom.id.value === suggestedId)) {
    dom.id.value = id;
    suggestedId = id;
  }
  dom.fileName.textContent = `${file.name} (${file.size} bytes)`;
  clearUploadResult();
  const reading = file.text().then(
    (text) => {
      if (fileRead === reading) dom.text.value = text;
    },
    (e) => {
      setUploadResult('result-error', `Could not read ${file.name}: ${e.message}`);
    },
  );
  fileRead = reading;
}

function clearUploadResult() {
  dom.uploadResult.replaceChildren();
  dom.uploadResult.className = 'result';
}

function setUploadResult(cls, ...content) {
  dom.uploadResult.className = `result ${cls}`;
  dom.uploadResult.replaceChildren(...content.filter((c) => c !== null));
}

async function upload(e) {
  e.preventDefault();
  if (fileRead) await fileRead; // a file picked a moment ago is still being read
  const id = dom.id.value.trim();
  const text = dom.text.value;
  if (!id || /^\.+$/.test(id)) {
    setUploadResult('result-error', 'Give the document an id (letters, digits, ".", "_" and "-").');
    dom.id.focus();
    return;
  }
  if (!text.trim()) {
    setUploadResult('result-error', 'Pick a file, drop one on the zone, or paste the document into the text area.');
    return;
  }
  const contentType = text.trimStart().startsWith('{') ? 'application/json' : 'application/yaml';
  dom.uploadButton.disabled = true;
  setUploadResult('result-busy', `Uploading ${id}…`);
  try {
    const { status, data } = await api(`/specs/${seg(id)}`, {
      method: 'PUT', body: text, contentType, as: 'full', authPhrase: 'Uploading a document needs the admin token',
    });
    uploaded(status, data || {}, id);
    clearStatus('documents');
    await load();
  } catch (err) {
    uploadFailed(err, text);
  } finally {
    dom.uploadButton.disabled = false;
  }
}

function uploaded(status, d, id) {
  const topics = Array.isArray(d.topics) ? d.topics.join(', ') : '';
  const warnings = Array.isArray(d.warnings) ? d.warnings : [];
  const what = [d.title, d.version && `version ${d.version}`, topics && `topics: ${topics}`].filter(Boolean).join(', ');
  setUploadResult(
    'result-ok',
    el('p', { text: `${status === 201 ? 'Created' : 'Replaced'} document ${d.id ?? id}${what ? ` (${what})` : ''}.` }),
    warnings.length ? el('p', { text: 'Warnings:' }) : null,
    warnings.length ? el('ul', {}, ...warnings.map((w) => el('li', { text: String(w) }))) : null,
  );
}

function uploadFailed(err, text) {
  if (!(err instanceof ApiError)) err = new ApiError(0, '', String(err && err.message));
  if (err.status === 401) {
    setUploadResult('result-error', el('p', { text: 'Uploading needs the admin token (see the message above).' }));
    return;
  }
  const line = Number(err.body?.line);
  const column = Number(err.body?.column);
  const parts = [el('p', { text: `The document was refused: ${err.message}` })];
  if (err.status === 400 && Number.isInteger(line) && line > 0) {
    const col = Number.isInteger(column) && column > 0 ? column : 1;
    parts.push(el('p', { text: `At line ${line}, column ${col}:` }));
    const context = errorContext(text, line, col);
    if (context) parts.push(context);
  }
  setUploadResult('result-error', ...parts);
}

/** The offending line of the text and a caret under the column (tabs kept, so it lines up). */
function errorContext(text, line, column) {
  const src = text.split(/\r\n|\n|\r/)[line - 1];
  if (src === undefined) return null;
  const before = Array.from(src).slice(0, column - 1);
  const pad = before.map((c) => (c === '\t' ? '\t' : ' ')).join('') + ' '.repeat(Math.max(0, column - 1 - before.length));
  return el(
    'pre',
    { id: 'upload-error-context', class: 'code', tabindex: '0', 'aria-label': `Line ${line}, with a caret under column ${column}` },
    `${src}\n${pad}^`,
  );
}

// --- try a message -----------------------------------------------------------------------------

function setValidateResult(cls, ...content) {
  dom.validateResult.className = `result ${cls}`;
  dom.validateResult.replaceChildren(...content.filter((c) => c !== null));
}

async function tryMessage(e) {
  e.preventDefault();
  const id = dom.vdoc.value;
  if (!id) {
    setValidateResult('outcome-error', 'Upload a document first.');
    return;
  }
  const body = {};
  const topic = dom.vtopic.value.trim();
  if (topic) body.topic = topic;
  const raw = dom.vvalue.value;
  if (raw.trim() !== '') {
    try {
      body.value = JSON.parse(raw);
    } catch {
      body.value_text = raw; // not JSON: eventgate checks it as text (and says why it fails)
    }
  }
  dom.validateButton.disabled = true;
  try {
    showOutcome(await api(`/specs/${seg(id)}/validate`, { method: 'POST', body }));
  } catch (err) {
    setValidateResult('outcome-error', `Could not check the message: ${err.message}`);
  } finally {
    dom.validateButton.disabled = false;
  }
}

function showOutcome(r) {
  const where = r.topic ? ` (topic ${r.topic})` : '';
  if (r.outcome === 'valid') {
    setValidateResult('outcome-valid', el('strong', { text: 'valid' }), `: matches message ${r.message ?? '?'}${where}.`);
  } else if (r.outcome === 'invalid') {
    const errors = Array.isArray(r.errors) ? r.errors.map(String) : [];
    setValidateResult('outcome-invalid', el('p', {}, el('strong', { text: 'invalid' }), where), errorList(errors, 'validate-errors'));
  } else if (r.outcome === 'unchecked') {
    setValidateResult('outcome-unchecked', el('strong', { text: 'unchecked' }), `${where}: ${r.reason ?? 'no reason given'}`);
  } else {
    setValidateResult('outcome-error', `Unexpected answer: ${JSON.stringify(r)}`);
  }
}
