/**
 * The help overlay: any node type's documentation, and the keyboard and mouse shortcuts, generated
 * from the keymap so they always tell the truth. A node's page comes from the server as markdown
 * (`/loom/node_docs/<type>`, server/node_docs.py): the hand-written page of the comfyui-embedded-docs
 * package when it is installed, else one written from the node's own description and tooltips. It is
 * rendered by the same escaping renderer as MarkdownNote, with pictures taken only from the folder
 * the server names for that page.
 */
import { Api, refusalText } from '../api.js';
import { KEYMAP, POINTER_HELP } from '../keymap.js';
import { renderMarkdown } from '../markdown.js';

const pretty = (combo) => combo.split('+').map((k) => ({ mod: 'Ctrl', shift: 'Shift', alt: 'Alt', enter: 'Enter', delete: 'Del', backspace: 'Backspace', escape: 'Esc' }[k] || k.toUpperCase())).join('+');

const SOURCES = {
  'comfyui-embedded-docs': 'From the comfyui-embedded-docs package',
  loom: "From the node's own description and tooltips",
};

const CARD = `<div class="help-card">
  <section class="node-docs">
    <h2>Node documentation</h2>
    <input class="node-docs-type" list="node-docs-types" placeholder="Node type, e.g. KSampler, then Enter" aria-label="Node type">
    <datalist id="node-docs-types"></datalist>
    <div class="node-docs-source"></div>
    <div class="node-docs-page markdown-view"></div>
  </section>
  <section class="help-shortcuts"><h2>Keyboard and mouse</h2><table></table></section>
  <p class="help-close">Press ? or Esc to close.</p>
</div>`;

export function toggleHelp() {
  const existing = document.querySelector('.help-overlay');
  if (existing) { existing.remove(); return; }
  openHelp();
}

/** Opens the overlay on `type`'s page: a node menu's Help. */
export function showHelpFor(type) {
  closeHelp();
  const { api, overlay, field } = openHelp();
  field.value = type;
  showNodeDocs(api, overlay, type);
}

function openHelp() {
  const overlay = document.createElement('div');
  overlay.className = 'help-overlay';
  overlay.innerHTML = CARD;
  const table = overlay.querySelector('table');
  for (const [keys, label] of KEYMAP.map((e) => [pretty(e.combo), e.label]).concat(POINTER_HELP)) {
    const tr = table.insertRow();
    tr.insertCell().textContent = keys;
    tr.insertCell().textContent = label;
  }
  const api = new Api();
  const field = overlay.querySelector('.node-docs-type');
  const byDisplayName = new Map();
  listNodeTypes(api, overlay.querySelector('datalist'), byDisplayName);
  // 'change' comes with Enter or a pick from the list; a display name typed in full works too.
  field.addEventListener('change', () => {
    const typed = field.value.trim();
    if (typed) showNodeDocs(api, overlay, byDisplayName.get(typed) ?? typed);
  });
  // The page's key handling leaves a focused field alone, so Esc is answered here.
  field.addEventListener('keydown', (e) => { if (e.key === 'Escape') overlay.remove(); });
  overlay.addEventListener('click', (e) => { if (e.target === overlay) overlay.remove(); });
  document.body.appendChild(overlay);
  return { api, overlay, field };
}

export function closeHelp() {
  const existing = document.querySelector('.help-overlay');
  if (existing) existing.remove();
  return Boolean(existing);
}

/** Fills the field's suggestions with every node type the server has, labelled with its display name. */
async function listNodeTypes(api, datalist, byDisplayName) {
  let defs;
  try {
    defs = await api.json('/object_info');
  } catch (error) {
    datalist.closest('.node-docs').querySelector('.node-docs-source').textContent = `Node types unavailable: ${refusalText(error)}`;
    return;
  }
  for (const [type, def] of Object.entries(defs).sort(([a], [b]) => a.localeCompare(b))) {
    const option = document.createElement('option');
    option.value = type;
    if (def.display_name && def.display_name !== type) {
      option.label = def.display_name;
      byDisplayName.set(def.display_name, type);
    }
    datalist.appendChild(option);
  }
}

/** Shows `type`'s page in the browser's language where the docs have it; a slower earlier answer never replaces a later one. */
async function showNodeDocs(api, overlay, type) {
  const source = overlay.querySelector('.node-docs-source');
  const page = overlay.querySelector('.node-docs-page');
  overlay.dataset.nodeType = type;
  source.textContent = `Loading ${type}…`;
  page.innerHTML = '';
  const locale = encodeURIComponent(navigator.language || 'en');
  let doc;
  try {
    doc = await api.json(`/loom/node_docs/${encodeURIComponent(type)}?locale=${locale}`);
  } catch (error) {
    if (overlay.dataset.nodeType === type) source.textContent = refusalText(error);
    return;
  }
  if (overlay.dataset.nodeType !== type) return;
  source.textContent = `${SOURCES[doc.source] || doc.source}${doc.locale ? ` (${doc.locale})` : ''}`;
  page.innerHTML = renderMarkdown(doc.markdown, { assetBase: doc.assets ? api.base + doc.assets : null });
}
