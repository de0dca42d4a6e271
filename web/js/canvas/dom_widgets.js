/**
 * Extension widgets, and the text of the editor's notes, are real DOM elements (a colour picker, a
 * slider, a text area...) laid over the canvas on the widget's row. After every frame they are moved
 * and scaled with the view, hidden where the canvas draws no widget detail (collapsed node, zoomed
 * far out, input fed by a link), and removed with their node. The value lives in `widgets_values`
 * like any widget's, so it is saved, undone and sent as the input; `update(value)` tells the element
 * about a value set elsewhere (undo, a loaded file).
 */
import { defaultWidgetValue } from '../node_defs.js';
import { toast } from '../toast.js';
import { customWidgetType } from '../widgets/custom_widgets.js';
import { DETAIL_SCALE } from './draw_node.js';

export class DomWidgetLayer {
  constructor(canvas, editor) {
    this.canvas = canvas;
    this.editor = editor;
    this.host = Object.assign(document.createElement('div'), { className: 'dom-widgets' });
    canvas.insertAdjacentElement('afterend', this.host);
    this.mounted = new Map();
    this.failedTypes = new Set();
  }

  /** Called after each frame with that frame's node layouts. */
  sync(boxes) {
    const { graph, view } = this.editor;
    Object.assign(this.host.style, {
      left: `${this.canvas.offsetLeft}px`, top: `${this.canvas.offsetTop}px`,
      width: `${this.canvas.clientWidth}px`, height: `${this.canvas.clientHeight}px`,
    });
    const present = new Set();
    let layer = 0;
    for (const node of graph.nodes.values()) {
      layer += 1;
      const widgets = this.editor.widgetsFor(node);
      widgets.forEach((widget, index) => {
        if (!widget.custom) return;
        // By prompt id: the same node id means another node inside a subgraph.
        const key = `${this.editor.apiId(node)}:${node.type}:${widget.name}`;
        present.add(key);
        const mounted = this.mounted.get(key) || this.mount(key, node, widget, index);
        if (!mounted.element) return;
        const rect = boxes.get(node.id)?.widgets.find((r) => r.index === index);
        const linked = node.inputs.some((i) => i.widget && i.widget.name === widget.name && i.link != null);
        const shown = Boolean(rect) && !linked && view.scale >= DETAIL_SCALE;
        mounted.wrapper.style.display = shown ? '' : 'none';
        if (shown) {
          const [x, y] = view.toScreen(rect.x, rect.y);
          Object.assign(mounted.wrapper.style, {
            left: `${x}px`, top: `${y}px`, width: `${rect.w}px`, height: `${rect.h}px`,
            transform: `scale(${view.scale})`, zIndex: String(layer),
          });
        }
        const value = this.editor.widgetValue(node, index) ?? defaultWidgetValue(widget);
        if (value !== mounted.value) {
          mounted.value = value;
          if (mounted.update) this.guard(widget, () => mounted.update(value));
        }
      });
    }
    for (const key of [...this.mounted.keys()]) if (!present.has(key)) this.unmount(key);
  }

  mount(key, node, widget, index) {
    const factory = customWidgetType(widget.custom);
    const value = this.editor.widgetValue(node, index) ?? defaultWidgetValue(widget);
    const mounted = { element: null, wrapper: null, update: null, destroy: null, value };
    const nodeId = node.id;
    const setValue = (next) => {
      const current = this.editor.graph.nodes.get(nodeId);
      if (!current) return;
      mounted.value = next;
      this.editor.setWidgetValue(current, index, next);
    };
    const made = this.guard(widget, () => factory.create({ node, name: widget.name, value, options: widget.options, setValue }));
    if (made && made.element instanceof Element) {
      const wrapper = Object.assign(document.createElement('div'), { className: 'dom-widget' });
      wrapper.dataset.node = String(nodeId);
      wrapper.dataset.widget = widget.name;
      wrapper.append(made.element);
      this.host.append(wrapper);
      Object.assign(mounted, { element: made.element, wrapper, update: made.update, destroy: made.destroy });
    } else if (made) {
      this.report(widget, new TypeError('create() must return { element } with a DOM element'));
    }
    this.mounted.set(key, mounted);
    return mounted;
  }

  unmount(key) {
    const mounted = this.mounted.get(key);
    this.mounted.delete(key);
    if (!mounted.wrapper) return;
    if (mounted.destroy) {
      try { mounted.destroy(); } catch (error) { console.warn('widget destroy() failed', error); }
    }
    mounted.wrapper.remove();
  }

  /** Extension code must not stop the frame loop: a throw is reported once per widget type. */
  guard(widget, call) {
    try {
      return call();
    } catch (error) {
      this.report(widget, error);
      return null;
    }
  }

  report(widget, error) {
    console.warn(`widget ${widget.custom} failed`, error);
    if (this.failedTypes.has(widget.custom)) return;
    this.failedTypes.add(widget.custom);
    const owner = customWidgetType(widget.custom).owner;
    toast(`Widget ${widget.custom} of extension ${owner} failed: ${error.message}`, { kind: 'error' });
  }
}
