/**
 * The widgets a subgraph instance shows, as ComfyUI draws them: first one per subgraph input that
 * feeds an inner widget (its value stored in the instance's `widgets_values`, one slot per such
 * input in input order), then the "proxy" widgets promoted with `properties.proxyWidgets`
 * (`[[innerNodeId, widgetName], ...]`), whose values are the inner node's own. Either way the server
 * reads the same places (graph/formats/editor.py): an input's slot when the instance stores one, else
 * the inner widget. Each widget spec carries `source` saying where its value lives.
 */
import { definitionLinks, inputNodeId } from './subgraphs.js';

/** `innerWidgets(type)` gives a node type's widget specs in `widgets_values` order. */
export function instanceWidgets(node, definition, innerWidgets) {
  const specs = [];
  const nodes = definition.nodes || [];
  const links = definitionLinks(definition);
  const fromInputs = inputNodeId(definition);
  let slot = 0;
  (definition.inputs || []).forEach((input, index) => {
    const fed = links.filter((l) => l.origin_id === fromInputs && l.origin_slot === index)
      .map((l) => [nodes.find((n) => n.id === l.target_id), l.target_slot])
      .filter(([target, at]) => target && target.inputs?.[at]?.widget);
    if (!fed.length) return;
    const [target, at] = fed[0];
    const widgets = innerWidgets(target.type);
    const innerIndex = widgets.findIndex((w) => w.name === target.inputs[at].widget.name);
    if (innerIndex >= 0) specs.push({ ...widgets[innerIndex], name: input.name, source: { kind: 'input', slot, node: target.id, index: innerIndex } });
    slot += 1;
  });
  for (const [nodeId, name] of node.properties?.proxyWidgets || []) {
    const inner = nodes.find((n) => String(n.id) === String(nodeId));
    if (!inner) continue;
    const widgets = innerWidgets(inner.type);
    const index = widgets.findIndex((w) => w.name === name && !w.control);
    if (index >= 0 && widgets[index].kind !== 'upload') specs.push({ ...widgets[index], source: { kind: 'proxy', node: inner.id, index } });
  }
  return specs;
}

function innerValue(definition, source) {
  const inner = (definition.nodes || []).find((n) => n.id === source.node);
  return Array.isArray(inner?.widgets_values) ? inner.widgets_values[source.index] : undefined;
}

export function instanceWidgetValue(definition, node, source) {
  if (source.kind === 'input' && Array.isArray(node.widgets_values) && node.widgets_values[source.slot] !== undefined) return node.widgets_values[source.slot];
  return innerValue(definition, source);
}

/** A proxy widget edits the inner node (every instance shows it); an input's widget edits this instance only. */
export function setInstanceWidgetValue(definition, node, specs, source, value) {
  if (source.kind === 'proxy') {
    const inner = definition.nodes.find((n) => n.id === source.node);
    inner.widgets_values = Array.isArray(inner.widgets_values) ? inner.widgets_values : [];
    inner.widgets_values[source.index] = value;
    return;
  }
  // Slots before this one get the values they show now, so the stored list stays positional.
  const values = Array.isArray(node.widgets_values) ? node.widgets_values : [];
  for (let slot = values.length; slot < source.slot; slot++) {
    const shown = specs.find((s) => s.source.kind === 'input' && s.source.slot === slot);
    values.push(shown ? innerValue(definition, shown.source) : null);
  }
  values[source.slot] = value;
  node.widgets_values = values;
}
