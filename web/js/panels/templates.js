/**
 * Templates: ready-made workflows the server lists (/loom/templates): ComfyUI's template packages when
 * installed, the repository's examples and the user's saved workflows, one section per source. Each
 * says what this server lacks for it: node types no plugin provides, model files not in the models
 * folders (those its loader nodes name and those its metadata names with a source), each with its folder.
 * A click opens the workflow, and opening a workflow is what brings up the missing-models
 * dialog (missing_models.js), so the Templates panel adds no download path of its own; the list is
 * read again when it is opened and when a download finishes while it is open.
 * index.html has no place for this panel, so it makes its own tab and aside.
 */
import { refusalText } from '../api.js';
import { byHand } from '../missing_models.js';
import { toast } from '../toast.js';

const element = (tag, className, textContent = '') => Object.assign(document.createElement(tag), { className, textContent });

/** The template's file URL: each path segment encoded, the slashes between them kept. */
function templateRoute(template) {
  const path = template.path.split('/').map(encodeURIComponent).join('/');
  return `/loom/templates/${encodeURIComponent(template.source)}/${path}`;
}

function statusBadges(template) {
  const status = element('div', 'template-status');
  const missingModels = template.models.filter((model) => !model.present);
  if (template.missing_node_types.length) {
    const badge = element('span', 'badge bad', `Missing nodes: ${template.missing_node_types.join(', ')}`);
    status.appendChild(badge);
  }
  if (missingModels.length) {
    const badge = element('span', 'badge warn', `Missing models: ${missingModels.map((m) => `${m.name} (${m.directory})`).join(', ')}`);
    badge.title = missingModels.map((m) => `${m.directory}/${m.name}: ${m.url ? `from ${m.url}` : byHand(m)}`).join('\n');
    status.appendChild(badge);
    const folders = [...new Set(missingModels.filter((m) => !m.url).map((m) => `models/${m.directory}/`))];
    if (folders.length) {
      status.appendChild(element('div', 'template-description template-by-hand', `No download source known: put by hand into ${folders.join(', ')}`));
    }
  }
  if (!status.children.length) status.appendChild(element('span', 'badge ok', template.models.length ? 'Ready: all models present' : 'Ready'));
  return status;
}

export class TemplatesPanel {
  constructor(tabs, workspace, api, onOpen) {
    this.api = api;
    this.onOpen = onOpen;
    this.tab = element('button', 'tab', 'Templates');
    this.tab.dataset.panel = 'templates';
    tabs.appendChild(this.tab);
    this.root = element('aside', 'panel');
    this.root.id = 'panel-templates';
    this.root.append(element('h3', '', 'Templates'), element('div', 'template-list'));
    workspace.appendChild(this.root);
    // A finished download changes what the open list should say about every template using that file.
    api.addEventListener('model_download', (event) => {
      if (event.detail.status === 'done' && this.root.classList.contains('active')) this.refresh();
    });
  }

  async refresh() {
    const list = this.root.querySelector('.template-list');
    let catalogue;
    try {
      catalogue = await this.api.json('/loom/templates');
    } catch (error) {
      list.textContent = `Could not list templates: ${refusalText(error)}`;
      return;
    }
    list.replaceChildren(...catalogue.sources.map((source) => {
      const templates = catalogue.templates.filter((t) => t.source === source.key);
      const section = element('details', 'template-source');
      section.open = true;
      section.dataset.source = source.key;
      section.appendChild(element('summary', '', `${source.label} (${templates.length})`));
      for (const template of templates) section.appendChild(this.item(template));
      if (!templates.length) section.appendChild(element('div', 'template-empty', 'None here.'));
      return section;
    }));
  }

  item(template) {
    const item = element('div', 'template-item');
    item.dataset.source = template.source;
    item.dataset.path = template.path;
    item.title = template.path;
    item.appendChild(element('div', 'template-title', template.title));
    if (template.description) item.appendChild(element('div', 'template-description', template.description));
    item.appendChild(statusBadges(template));
    item.addEventListener('click', () => this.open(template));
    return item;
  }

  async open(template) {
    try {
      this.onOpen(await this.api.json(templateRoute(template)), template.path.split('/').pop());
    } catch (error) {
      toast(`Could not open ${template.path}: ${refusalText(error)}`, { kind: 'error' });
    }
  }
}
