/**
 * The node library: every node type by category, to browse rather than search. Items can be dragged
 * onto the canvas (dropped where the pointer is) or clicked (added in the middle of the view).
 */
export const NODE_DRAG_TYPE = 'application/x-loom-node-type';

export class LibraryPanel {
  constructor(root, defs, onAdd) {
    this.root = root;
    this.defs = defs;
    this.onAdd = onAdd;
    this.render();
  }

  render() {
    const byCategory = new Map();
    for (const def of Object.values(this.defs)) {
      const category = def.category || 'other';
      if (!byCategory.has(category)) byCategory.set(category, []);
      byCategory.get(category).push(def);
    }
    const sections = [...byCategory.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([category, defs]) => {
      const details = document.createElement('details');
      details.open = true;
      details.appendChild(Object.assign(document.createElement('summary'), { textContent: category }));
      for (const def of defs.sort((a, b) => a.display_name.localeCompare(b.display_name))) {
        const item = Object.assign(document.createElement('div'), { className: 'library-item', textContent: def.display_name, title: def.description || def.name, draggable: true });
        item.dataset.type = def.name;
        item.addEventListener('dragstart', (e) => { e.dataTransfer.setData(NODE_DRAG_TYPE, def.name); e.dataTransfer.effectAllowed = 'copy'; });
        item.addEventListener('click', () => this.onAdd(def.name, null));
        details.appendChild(item);
      }
      return details;
    });
    this.root.querySelector('.library-list').replaceChildren(...sections);
  }
}
