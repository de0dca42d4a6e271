/** New nodes from a definition, with the same slots and widget values a saved file would hold. */
import { makeNode } from './graph_model.js';
import { defaultWidgetValue, inputSpecs, outputSpecs, widgetSpecs } from './node_defs.js';

export function createNode(def, pos = [0, 0]) {
  const node = makeNode({
    type: def.name,
    pos,
    // A definition may ask for a size (a note wants room to write); else the first layout fits the height to the content.
    size: def.size ? [...def.size] : [240, 0],
    inputs: inputSpecs(def).filter((i) => i.kind === 'socket').map((i) => ({ name: i.name, type: i.type, link: null })),
    outputs: outputSpecs(def).map((o) => ({ name: o.name, type: o.type, links: [] })),
    properties: { 'Node name for S&R': def.name },
    widgets_values: widgetSpecs(def).map(defaultWidgetValue),
  });
  return node;
}

/** A reroute is a pass-through dot: one untyped input, one output that takes the type it carries. */
export function createReroute(pos = [0, 0]) {
  return makeNode({ type: 'Reroute', pos, size: [75, 26],
    inputs: [{ name: '', type: '*', link: null }], outputs: [{ name: '', type: '*', links: [] }],
    properties: { showOutputText: false, horizontal: false } });
}
