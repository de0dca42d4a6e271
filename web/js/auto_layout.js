/**
 * An API prompt (a PNG that carries only `prompt`) turned into an editor graph: one node per entry,
 * links from `["id", slot]` values, widget values from the literal inputs, and nodes laid out in
 * columns by their distance from the sources so the result reads left to right.
 */
import { Graph } from './graph_model.js';
import { createNode } from './node_factory.js';
import { defaultWidgetValue, widgetSpecs } from './node_defs.js';

const widgetNames = (def) => new Set(def ? widgetSpecs(def).map((w) => w.name) : []);
const isLink = (v) => Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'number';

export function promptToGraph(prompt, defs) {
  const graph = new Graph();
  const ids = Object.keys(prompt);
  const depth = new Map();
  const depthOf = (id, trail = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (trail.has(id) || !prompt[id]) return 0;
    trail.add(id);
    const parents = Object.values(prompt[id].inputs || {}).filter(isLink).map((v) => depthOf(v[0], trail) + 1);
    const d = Math.max(0, ...parents);
    depth.set(id, d);
    return d;
  };
  const rows = new Map();
  const made = new Map();
  for (const id of ids) {
    const entry = prompt[id];
    const def = defs[entry.class_type];
    const column = depthOf(id);
    const row = rows.get(column) || 0;
    rows.set(column, row + 1);
    const pos = [60 + column * 320, 60 + row * 260];
    const node = createNode(def || { name: entry.class_type, input: {}, output: [] }, pos);
    const numeric = Number(id);
    node.id = Number.isInteger(numeric) && numeric > 0 && !graph.nodes.has(numeric) ? numeric : null;
    if (entry._meta && entry._meta.title && def && entry._meta.title !== def.display_name) node.title = entry._meta.title;
    if (def) {
      node.widgets_values = widgetSpecs(def).map((w) => {
        if (w.control) return 'fixed';
        const value = entry.inputs[w.name];
        if (value === undefined || isLink(value)) return defaultWidgetValue(w);
        return value && typeof value === 'object' && '__value__' in value ? value.__value__ : value;
      });
    }
    graph.addNode(node);
    made.set(id, node);
  }
  for (const id of ids) {
    const target = made.get(id);
    for (const [name, value] of Object.entries(prompt[id].inputs || {})) {
      if (!isLink(value) || !made.has(value[0])) continue;
      const origin = made.get(value[0]);
      while (!defs[origin.type] && origin.outputs.length <= value[1]) origin.outputs.push({ name: '*', type: '*', links: [] });
      let slot = target.inputs.findIndex((i) => i.name === name || (i.widget && i.widget.name === name));
      if (slot < 0) {
        const type = origin.outputs[value[1]]?.type || '*';
        const isWidget = widgetNames(defs[prompt[id].class_type]).has(name);
        target.inputs.push(isWidget ? { name, type, link: null, widget: { name } } : { name, type, link: null });
        slot = target.inputs.length - 1;
      }
      graph.connect(origin.id, value[1], target.id, slot);
    }
  }
  return graph;
}
