/**
 * Editor graph → API prompt, by the same rules as the frontend's graphToPrompt (docs/compatibility.md §2.2, §C.5.1):
 * muted (2) and bypassed (4) nodes and virtual nodes are left out; links are followed through reroutes,
 * through bypassed nodes (the first input of the same type that leads somewhere live) and into
 * primitive nodes (their value); widget values are taken in order, the control_after_generate
 * companions are not sent; list values are wrapped as {"__value__": [...]}; links into nodes that were
 * left out are dropped at the end.
 */
import { MODE_BYPASS, MODE_NEVER } from './graph_model.js';
import { VIRTUAL_TYPES, inputSpecs, typesCompatible, widgetSpecs } from './node_defs.js';

/** Where a link really comes from: `{node, slot}`, `{value}` (a primitive) or null (nothing). */
export function resolveLink(graph, linkId, seen = new Set()) {
  const link = graph.links.get(linkId);
  if (!link || seen.has(linkId)) return null;
  seen.add(linkId);
  const origin = graph.nodes.get(link.origin_id);
  if (!origin) return null;
  if (origin.type === 'Reroute') {
    const feed = origin.inputs[0] && origin.inputs[0].link;
    return feed == null ? null : resolveLink(graph, feed, seen);
  }
  if (origin.type === 'PrimitiveNode') return { value: origin.widgets_values[0] };
  if (origin.mode === MODE_BYPASS) {
    for (const input of origin.inputs) {
      const feed = input.link != null ? graph.links.get(input.link) : null;
      if (!feed || !typesCompatible(feed.type, link.type)) continue;
      const source = resolveLink(graph, feed.id, seen);
      if (source) return source;
    }
    return null;
  }
  if (origin.mode === MODE_NEVER) return null;
  return { node: origin, slot: link.origin_slot };
}

function wrap(value) {
  return Array.isArray(value) ? { __value__: value } : value;
}

export function graphToPrompt(graph, defs) {
  const prompt = {};
  const nodes = [...graph.nodes.values()].sort((a, b) => a.id - b.id);
  for (const node of nodes) {
    if (node.mode === MODE_NEVER || node.mode === MODE_BYPASS || VIRTUAL_TYPES.has(node.type)) continue;
    const def = defs[node.type];
    const inputs = {};
    const byName = new Map(node.inputs.map((input) => [input.widget ? input.widget.name : input.name, input]));
    const linked = (name) => {
      const input = byName.get(name);
      return input && input.link != null ? resolveLink(graph, input.link) : undefined;
    };
    const put = (name, source) => {
      if (source === null) return;
      inputs[name] = 'value' in source ? wrap(source.value) : [String(source.node.id), source.slot];
    };
    if (def) {
      const widgets = widgetSpecs(def);
      for (const spec of inputSpecs(def)) {
        const source = linked(spec.name);
        if (source !== undefined) { put(spec.name, source); continue; }
        if (spec.kind === 'socket') continue;
        const index = widgets.findIndex((w) => w.name === spec.name && !w.control && w.kind !== 'upload');
        if (index >= 0 && index < node.widgets_values.length) inputs[spec.name] = wrap(node.widgets_values[index]);
      }
    } else {
      node.inputs.forEach((input) => { const source = linked(input.name); if (source !== undefined) put(input.name, source); });
    }
    prompt[String(node.id)] = { inputs, class_type: node.type, _meta: { title: node.title || (def && def.display_name) || node.type } };
  }
  for (const entry of Object.values(prompt)) {
    for (const [name, value] of Object.entries(entry.inputs)) {
      if (Array.isArray(value) && !(value[0] in prompt)) delete entry.inputs[name];
    }
  }
  return prompt;
}
