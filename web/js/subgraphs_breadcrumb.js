/**
 * The way back out of subgraphs: a bar over the canvas naming the workflow and each subgraph entered,
 * shown only inside one. Clicking a name returns to that level.
 */
export class SubgraphBreadcrumb {
  constructor(canvas, editor) {
    this.editor = editor;
    this.element = Object.assign(document.createElement('nav'), { className: 'subgraph-breadcrumb' });
    this.element.setAttribute('aria-label', 'Subgraph path');
    canvas.insertAdjacentElement('afterend', this.element);
    editor.addEventListener('navigate', () => this.show());
    editor.addEventListener('change', () => this.show());
    this.show();
  }

  show() {
    const names = this.editor.levelNames();
    this.element.hidden = names.length < 2;
    this.element.replaceChildren(...names.flatMap((name, depth) => {
      const last = depth === names.length - 1;
      const entry = document.createElement(last ? 'span' : 'button');
      entry.className = last ? 'crumb current' : 'crumb';
      entry.textContent = name;
      entry.dataset.depth = String(depth);
      if (!last) entry.addEventListener('click', () => this.editor.leaveTo(depth));
      return depth ? [Object.assign(document.createElement('span'), { className: 'crumb-sep', textContent: '›' }), entry] : [entry];
    }));
  }
}
