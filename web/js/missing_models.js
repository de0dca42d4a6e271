/**
 * The missing-models dialog. A workflow names model files in its loader nodes' widgets (a checkpoint, a
 * LoRA, ...), and workflows from ComfyUI's templates also say where they come from: `models` entries
 * `{name, directory, url, hash?, hash_type?}` on the workflow or its nodes. Whenever a workflow is opened,
 * the server says which of those files are not in the models folders (/loom/workflow_requirements); if
 * any, this dialog lists file, folder and source, and its Download buttons have the server fetch them
 * (/loom/model_downloads), with progress from `model_download` WebSocket events. A file no metadata gives
 * a source for (`url` null) has no button: the dialog says which folder to put it in. The server alone
 * judges folders, names and URLs (and says why it would refuse one); when downloads are off there, the
 * dialog says how the machine's owner turns them on.
 */
import { refusalText } from './api.js';
import { toast } from './toast.js';

const DOWNLOADS_OFF_HINT = 'Downloads are off on this server. Its owner can turn them on by starting it with '
  + '"loom serve --enable-model-downloads"; or put the files into the folders shown.';

const key = (entry) => `${entry.directory}/${entry.name}`;

/** Where a file without a known source has to be put by hand. */
export const byHand = (entry) => `No download source known: put the file into models/${entry.directory}/ by hand.`;

/** Checks every workflow the editor opens, from the first one on. */
export function watchForMissingModels(session) {
  const { api, editor } = session;
  editor.addEventListener('load', () => {
    const graph = editor.graph;
    api.post('/loom/workflow_requirements', { workflow: graph.toJSON() })
      .then((report) => {
        const missing = report.models.filter((entry) => !entry.present);
        // Another workflow may have been opened while the server answered: that one gets its own check.
        if (missing.length && editor.graph === graph) showMissingModels(api, missing, report.downloads_enabled);
      })
      .catch((error) => toast(`Could not check the workflow's model files: ${refusalText(error)}`));
  });
}

/** Model files run from kilobytes (a tiny upscaler) to tens of gigabytes. */
function byteSize(bytes) {
  const units = ['bytes', 'KB', 'MB', 'GB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit ? `${value.toFixed(1)} ${units[unit]}` : `${value} bytes`;
}

/** A link only for web addresses: a workflow file could carry any text as its url. */
function sourceCell(url) {
  const cell = document.createElement('td');
  cell.className = 'missing-models-url';
  if (!url) {
    cell.appendChild(Object.assign(document.createElement('span'), { className: 'missing-models-unknown', textContent: 'unknown' }));
    return cell;
  }
  let web = false;
  try { web = ['https:', 'http:'].includes(new URL(url).protocol); } catch { web = false; }
  const text = web ? Object.assign(document.createElement('a'), { href: url, target: '_blank', rel: 'noopener noreferrer' })
    : document.createElement('span');
  text.textContent = url;
  text.title = url;
  cell.appendChild(text);
  return cell;
}

class MissingModelRow {
  constructor(api, entry, enabled) {
    this.api = api;
    this.entry = entry;
    this.row = document.createElement('tr');
    this.row.dataset.key = key(entry);
    const cell = (text) => Object.assign(document.createElement('td'), { textContent: text });
    this.status = Object.assign(document.createElement('div'), { className: 'missing-models-status' });
    this.progress = Object.assign(document.createElement('progress'), { max: 1, value: 0, hidden: true });
    const action = document.createElement('td');
    action.className = 'missing-models-action';
    if (entry.url) {
      this.button = Object.assign(document.createElement('button'), { textContent: 'Download', disabled: !enabled || !!entry.refused });
      this.button.addEventListener('click', () => this.start());
      action.append(this.button, this.progress, this.status);
      if (entry.refused) this.status.textContent = entry.refused;
    } else {
      this.row.dataset.status = 'by-hand';
      action.appendChild(this.status);
      this.status.textContent = byHand(entry);
    }
    this.row.append(cell(entry.name), cell(entry.directory), sourceCell(entry.url), action);
  }

  async start() {
    this.button.disabled = true;
    this.status.textContent = 'Starting…';
    try {
      this.show(await this.api.post('/loom/model_downloads', this.entry));
    } catch (error) {
      this.status.textContent = refusalText(error);
      this.button.disabled = false;
    }
  }

  /** One state from the server: the POST's answer or a `model_download` event. */
  show(state) {
    if (!this.button) return; // a file with no source here: another workflow's dialog may be fetching it
    this.row.dataset.status = state.status;
    if (state.status === 'downloading') {
      this.progress.hidden = false;
      this.progress.max = state.total || 1;
      this.progress.value = state.total ? state.downloaded : 0;
      this.status.textContent = state.total ? `${byteSize(state.downloaded)} of ${byteSize(state.total)}` : byteSize(state.downloaded);
    } else if (state.status === 'done') {
      this.progress.hidden = true;
      this.button.hidden = true;
      this.status.textContent = `Downloaded (${byteSize(state.downloaded)})`;
    } else {
      this.progress.hidden = true;
      this.button.disabled = false;
      this.button.textContent = 'Retry';
      this.status.textContent = state.error;
    }
  }
}

/** The dialog for `missing` model entries; a newer workflow's dialog replaces an older one. */
function showMissingModels(api, missing, enabled) {
  document.querySelector('.missing-models')?.dispatchEvent(new Event('close'));
  const overlay = Object.assign(document.createElement('div'), { className: 'modal missing-models' });
  const card = Object.assign(document.createElement('div'), { className: 'modal-card missing-models-card' });
  const rows = new Map(missing.map((entry) => [key(entry), new MissingModelRow(api, entry, enabled)]));
  card.innerHTML = '<h3>Missing models</h3><p>This workflow uses model files that are not in the models folders.</p>'
    + '<table><thead><tr><th>File</th><th>Folder</th><th>Source</th><th></th></tr></thead><tbody></tbody></table>';
  card.querySelector('tbody').append(...[...rows.values()].map((row) => row.row));
  // The hint is about the Download buttons, so only where there is one.
  if (!enabled && missing.some((entry) => entry.url)) card.appendChild(Object.assign(document.createElement('p'), { className: 'missing-models-off', textContent: DOWNLOADS_OFF_HINT }));
  const buttons = Object.assign(document.createElement('div'), { className: 'modal-buttons' });
  const close = Object.assign(document.createElement('button'), { textContent: 'Close' });
  buttons.appendChild(close);
  card.appendChild(buttons);
  overlay.appendChild(card);

  const onProgress = (event) => rows.get(key(event.detail))?.show(event.detail);
  api.addEventListener('model_download', onProgress);
  overlay.addEventListener('close', () => { api.removeEventListener('model_download', onProgress); overlay.remove(); });
  close.addEventListener('click', () => overlay.dispatchEvent(new Event('close')));
  document.body.appendChild(overlay);
}
