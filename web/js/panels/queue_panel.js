/**
 * Queue and history: what runs, what waits (cancel), what ran (status, outputs, delete). Read from
 * GET /api/queue and /api/history, refreshed whenever the server announces a queue change.
 */
import { openLightbox } from './lightbox.js';

export class QueuePanel {
  constructor(root, api, onLoadWorkflow) {
    this.root = root;
    this.api = api;
    this.onLoadWorkflow = onLoadWorkflow;
    for (const type of ['status', 'execution_success', 'execution_error', 'execution_interrupted']) {
      api.addEventListener(type, () => this.scheduleRefresh());
    }
  }

  scheduleRefresh() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 150);
  }

  async refresh() {
    let queue;
    let history;
    try {
      [queue, history] = await Promise.all([this.api.json('/queue'), this.api.json('/history?max_items=50')]);
    } catch {
      return;
    }
    const rows = [];
    for (const item of queue.queue_running || []) rows.push(this.row(item[1], 'running', () => this.api.post('/interrupt', { prompt_id: item[1] })));
    for (const item of queue.queue_pending || []) rows.push(this.row(item[1], 'pending', () => this.api.post('/queue', { delete: [item[1]] })));
    const done = Object.entries(history || {}).reverse();
    for (const [id, entry] of done) {
      const status = entry.status ? entry.status.status_str : 'done';
      const row = this.row(id, status, () => this.api.post('/history', { delete: [id] }), entry);
      rows.push(row);
    }
    const list = this.root.querySelector('.queue-list');
    list.replaceChildren(...rows);
    if (!rows.length) list.textContent = 'Nothing queued yet.';
  }

  row(id, status, remove, entry = null) {
    const row = document.createElement('div');
    row.className = `queue-item ${status}`;
    row.dataset.promptId = id;
    const label = document.createElement('span');
    label.className = 'queue-status';
    label.textContent = status;
    const name = document.createElement('span');
    name.className = 'queue-id';
    name.textContent = id.slice(0, 8);
    row.append(label, name);
    if (entry) {
      const images = Object.values(entry.outputs || {}).flatMap((o) => o.images || []);
      for (const image of images.slice(0, 4)) {
        const img = Object.assign(document.createElement('img'), { src: this.api.viewUrl(image), className: 'thumb', title: image.filename });
        img.addEventListener('click', () => openLightbox(this.api.viewUrl(image), image.filename));
        row.appendChild(img);
      }
      const workflow = entry.prompt && entry.prompt[3] && entry.prompt[3].extra_pnginfo && entry.prompt[3].extra_pnginfo.workflow;
      if (workflow) row.appendChild(button('load', 'Open the workflow that made this', () => this.onLoadWorkflow(workflow)));
    }
    const verb = status === 'running' ? 'cancel' : status === 'pending' ? 'cancel' : 'delete';
    row.appendChild(button(verb, `${verb} ${id}`, async () => { await remove(); this.refresh(); }));
    return row;
  }
}

function button(text, title, onClick) {
  const b = Object.assign(document.createElement('button'), { textContent: text, title });
  b.addEventListener('click', onClick);
  return b;
}
