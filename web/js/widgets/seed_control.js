/**
 * control_after_generate, applied after a prompt was queued (so the queued run used the shown value,
 * and an unchanged "fixed" seed is a cached, instant rerun: docs/compatibility.md §2.2), wherever the
 * widget is: on the workflow's nodes or inside its subgraphs.
 */
import { widgetSpecs } from '../node_defs.js';
import { instanceWidgets } from '../subgraphs_widgets.js';

/** Random seeds stay below 2^50 so they survive JSON doubles exactly, like the reference frontend's. */
const RANDOM_LIMIT = 2 ** 50;

export function nextControlledValue(value, control, options) {
  const min = options.min ?? 0;
  const max = Math.min(options.max ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  const step = options.step ?? 1;
  switch (control) {
    case 'increment': return Math.min(max, value + step);
    case 'decrement': return Math.max(min, value - step);
    case 'randomize': return min + Math.floor(Math.random() * Math.min(max - min + 1, RANDOM_LIMIT));
    default: return value;
  }
}

/** Advances the controlled widgets of `nodes` (the editor's nodes or a definition's stored ones); returns whether any changed. */
function applyToNodes(nodes, defs) {
  let changed = false;
  for (const node of nodes) {
    const def = defs[node.type];
    if (!def || !Array.isArray(node.widgets_values)) continue;
    const widgets = widgetSpecs(def);
    widgets.forEach((widget, index) => {
      if (!widget.control || index === 0) return;
      const target = widgets[index - 1];
      const before = node.widgets_values[index - 1];
      const after = nextControlledValue(Number(before), node.widgets_values[index], target.options);
      if (after !== before) { node.widgets_values[index - 1] = after; changed = true; }
    });
  }
  return changed;
}

/**
 * A subgraph instance stores its own value for an input that feeds an inner widget; when that widget
 * is controlled, the inner node's control (the widget after it) advances the instance's value.
 */
function applyToInstanceInputs(nodes, root, defs) {
  let changed = false;
  const innerWidgets = (type) => (defs[type] ? widgetSpecs(defs[type]) : []);
  for (const node of nodes) {
    const definition = !defs[node.type] && root.subgraphOf(node.type);
    if (!definition || !Array.isArray(node.widgets_values)) continue;
    for (const spec of instanceWidgets(node, definition, innerWidgets)) {
      const { kind, slot, node: innerId, index } = spec.source;
      const before = node.widgets_values[slot];
      if (kind !== 'input' || before === undefined) continue;
      const inner = definition.nodes.find((n) => n.id === innerId);
      const control = innerWidgets(inner.type)[index + 1];
      if (!control?.control || !Array.isArray(inner.widgets_values)) continue;
      const after = nextControlledValue(Number(before), inner.widgets_values[index + 1], spec.options);
      if (after !== before) { node.widgets_values[slot] = after; changed = true; }
    }
  }
  return changed;
}

/**
 * After a prompt was queued, every controlled widget of the workflow advances: on its own nodes, on
 * the nodes inside each subgraph definition and on values instances hold for them. `shown` is the
 * graph on screen: a subgraph's inside is edited live there, so its stored definition is left alone
 * (the editor writes the inside back on commit). Returns whether anything changed.
 */
export function applyControls(root, shown, defs) {
  const lists = [[...root.nodes.values()]];
  if (shown !== root) lists.push([...shown.nodes.values()]);
  for (const definition of root.passthrough.definitions?.subgraphs || []) {
    if (definition.id !== shown.definition?.id) lists.push(definition.nodes || []);
  }
  let changed = false;
  for (const nodes of lists) {
    if (applyToNodes(nodes, defs)) changed = true;
    if (applyToInstanceInputs(nodes, root, defs)) changed = true;
  }
  return changed;
}
