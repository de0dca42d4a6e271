/**
 * Workflows stored on the server under the user's `workflows/` folder (userdata API, docs/compatibility.md §1.2):
 * listed in the sidebar, opened with a click, saved by name, deleted. A missing folder is an empty list.
 */
import { ApiError } from '../api.js';

export class WorkflowsPanel {
  constructor(root, api, onOpen) {
    this.root = root;
    this.api = api;
    this.onOpen = onOpen;
  }

  async list() {
    try {
      const items = await this.api.json('/userdata?dir=workflows&recurse=true&split=false&full_info=true');
      return items.map((i) => (typeof i === 'string' ? i : i.path)).filter((p) => p.endsWith('.json')).sort();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return [];
      throw error;
    }
  }

  async refresh() {
    const list = this.root.querySelector('.workflow-list');
    const paths = await this.list();
    list.replaceChildren(...paths.map((path) => {
      const row = document.createElement('div');
      row.className = 'workflow-item';
      row.dataset.path = path;
      const name = Object.assign(document.createElement('span'), { className: 'workflow-name', textContent: path.replace(/\.json$/, '') });
      name.addEventListener('click', () => this.open(path));
      const del = Object.assign(document.createElement('button'), { textContent: '✕', title: `Delete ${path}` });
      del.addEventListener('click', async () => { await this.api.fetch(`/userdata/${encodeURIComponent(`workflows/${path}`)}`, { method: 'DELETE' }); this.refresh(); });
      row.append(name, del);
      return row;
    }));
    if (!paths.length) list.textContent = 'No saved workflows yet.';
  }

  async open(path) {
    const response = await this.api.fetch(`/userdata/${encodeURIComponent(`workflows/${path}`)}`);
    if (!response.ok) throw new ApiError(response.status, `/userdata/workflows/${path}`, null);
    this.onOpen(await response.json(), path);
  }

  async save(name, workflow) {
    const file = name.endsWith('.json') ? name : `${name}.json`;
    await this.api.json(`/userdata/${encodeURIComponent(`workflows/${file}`)}?overwrite=true`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(workflow) });
    await this.refresh();
    return file;
  }
}
