/**
 * control_after_generate, applied after a prompt was queued (so the queued run used the shown value,
 * and an unchanged "fixed" seed is a cached, instant rerun: docs/compatibility.md §2.2).
 */
import { widgetSpecs } from '../node_defs.js';

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

/** Returns whether anything changed. */
export function applyControls(graph, defs) {
  let changed = false;
  for (const node of graph.nodes.values()) {
    const def = defs[node.type];
    if (!def) continue;
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
