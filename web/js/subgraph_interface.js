/**
 * A subgraph's inputs and outputs, edited from inside it: a link dropped on a boundary node's empty
 * slot makes a new one, and one is renamed or removed from its menu. Every instance of the subgraph,
 * in the workflow and inside other subgraphs, gains, renames or loses the matching slot, and its
 * outer links move with the slots after a removed one. The definition's entries keep ComfyUI's
 * shape (docs/compatibility.md §C.5.2): `{id, name, type, linkIds}`, plus `localized_name` and, once
 * renamed, `label`. The server matches an instance's inputs to the subgraph's by name
 * (graph/formats/editor.py), so a rename renames both; widget values an instance stores for its
 * widget inputs are positional, so they follow inserted and removed slots.
 */
import { boundaryOf, definitionOf, openLevel, storeDefinition, uniqueName, uuid } from './subgraphs.js';

/** Which of the subgraph's lists a boundary node shows: the input node's outputs are the subgraph's inputs. */
const slotsOf = (level, side) => (side === 'input' ? boundaryOf(level, 'input').outputs : boundaryOf(level, 'output').inputs);
const entriesKey = (side) => (side === 'input' ? 'inputs' : 'outputs');

/** The side ('input' or 'output' of the subgraph) a boundary node's slot stands for, or null for any other slot. */
export function interfaceSide(node, slotKind) {
  if (node?.boundary === 'input' && slotKind === 'output') return 'input';
  if (node?.boundary === 'output' && slotKind === 'input') return 'output';
  return null;
}

function isEmptySlot(node, kind, index) {
  const slot = kind === 'output' ? node.outputs[index] : node.inputs[index];
  return Boolean(node.boundary && slot?.empty);
}

/** Calls `edit(graph, node)` on every instance of the level's subgraph; inside other subgraphs their definitions are written back. */
function forEachInstance(root, level, edit) {
  const id = level.definition.id;
  for (const node of [...root.nodes.values()]) if (node.type === id) edit(root, node);
  for (const stored of root.passthrough.definitions?.subgraphs || []) {
    if (stored.id === id || !(stored.nodes || []).some((n) => n.type === id)) continue;
    const other = openLevel(root, stored);
    for (const node of [...other.nodes.values()]) if (node.type === id) edit(other, node);
    storeDefinition(root, definitionOf(other));
  }
}

/** An instance's slot for the subgraph's slot `index` named `name`: by name, as the server finds it, else by place. */
function instanceSlot(slots, name, index) {
  const named = slots.findIndex((s) => s.name === name);
  return named >= 0 ? named : index < slots.length ? index : -1;
}

/** Takes slot `index` off a node's inputs or outputs; links to the slots after it follow them. */
function removeNodeSlot(graph, node, kind, index) {
  if (kind === 'input') {
    if (node.inputs[index]?.link != null) graph.removeLink(node.inputs[index].link);
    node.inputs.splice(index, 1);
    for (const link of graph.links.values()) if (link.target_id === node.id && link.target_slot > index) link.target_slot -= 1;
  } else {
    for (const id of [...(node.outputs[index]?.links || [])]) graph.removeLink(id);
    node.outputs.splice(index, 1);
    for (const link of graph.links.values()) if (link.origin_id === node.id && link.origin_slot > index) link.origin_slot -= 1;
  }
}

/** Whether subgraph input `index` feeds an inner widget, and its place among those that do (its slot in an instance's `widgets_values`). */
function widgetPlace(level, index) {
  const feeds = (slot) => slot.links.some((id) => {
    const link = level.links.get(id);
    return link && level.nodes.get(link.target_id)?.inputs[link.target_slot]?.widget;
  });
  const slots = slotsOf(level, 'input');
  return { feeds: feeds(slots[index]), place: slots.slice(0, index).filter(feeds).length };
}

/**
 * A link drawn to or from a boundary node's empty slot: a new subgraph input (or output) named after
 * the inner slot, linked to it, and a matching slot on every instance. Returns the new inner link;
 * undefined when no empty slot is involved, null when nothing could be made.
 * `innerValue(node, widgetName)` is the inner widget's value, which instances storing their widget
 * values get for a new widget input.
 */
export function connectToEmptySlot(root, level, originId, originSlot, targetId, targetSlot, innerValue) {
  const origin = level.nodes.get(originId);
  const target = level.nodes.get(targetId);
  const fromEmpty = isEmptySlot(origin, 'output', originSlot);
  const toEmpty = isEmptySlot(target, 'input', targetSlot);
  if (!fromEmpty && !toEmpty) return undefined;
  if (fromEmpty === toEmpty || !level.definition) return null;
  if (fromEmpty) return addInput(root, level, origin, target, targetSlot, innerValue);
  return addOutput(root, level, origin, originSlot, target);
}

function newEntry(level, side, inner) {
  const slots = slotsOf(level, side);
  const taken = new Set(slots.filter((s) => !s.empty).map((s) => s.name));
  const name = uniqueName(inner.widget?.name || inner.name || inner.type, taken);
  const entry = { id: uuid(), name, type: inner.type, linkIds: [], localized_name: inner.localized_name || name };
  const key = entriesKey(side);
  level.definition = { ...level.definition, [key]: [...(level.definition[key] || []), entry] };
  return entry;
}

function addInput(root, level, boundary, target, targetSlot, innerValue) {
  const inner = target.inputs[targetSlot];
  const entry = newEntry(level, 'input', inner);
  const index = boundary.outputs.length - 1;
  boundary.outputs.splice(index, 0, { name: entry.name, type: entry.type, links: [] });
  const link = level.connect(boundary.id, index, target.id, targetSlot);
  const { feeds, place } = widgetPlace(level, index);
  const value = feeds ? innerValue(target, inner.widget.name) : undefined;
  forEachInstance(root, level, (graph, node) => {
    node.inputs.push({ name: entry.name, localized_name: entry.localized_name, type: entry.type, link: null, ...(feeds ? { widget: { name: entry.name } } : {}) });
    if (feeds && Array.isArray(node.widgets_values) && node.widgets_values.length >= place) node.widgets_values.splice(place, 0, value);
  });
  return link;
}

function addOutput(root, level, origin, originSlot, boundary) {
  const entry = newEntry(level, 'output', origin.outputs[originSlot]);
  const index = boundary.inputs.length - 1;
  boundary.inputs.splice(index, 0, { name: entry.name, type: entry.type, link: null });
  const link = level.connect(origin.id, originSlot, boundary.id, index);
  forEachInstance(root, level, (graph, node) => {
    node.outputs.push({ name: entry.name, localized_name: entry.localized_name, type: entry.type, links: [] });
  });
  return link;
}

/** Renames subgraph input (or output) `index`; a name another one has gets a number. Returns whether anything changed. */
export function renameInterfaceSlot(root, level, side, index, wanted) {
  const slots = slotsOf(level, side);
  const slot = slots[index];
  const text = String(wanted ?? '').trim();
  if (!slot || slot.empty || !text) return false;
  const old = slot.name;
  const name = uniqueName(text, new Set(slots.filter((s, i) => i !== index && !s.empty).map((s) => s.name)));
  if (name === old && slot.label === name) return false;
  Object.assign(slot, { name, label: name });
  const key = entriesKey(side);
  level.definition = { ...level.definition, [key]: (level.definition[key] || []).map((e, i) => (i === index ? { ...e, name, label: name } : e)) };
  forEachInstance(root, level, (graph, node) => {
    const list = side === 'input' ? node.inputs : node.outputs;
    const at = instanceSlot(list, old, index);
    if (at < 0) return;
    Object.assign(list[at], { name, label: name });
    if (list[at].widget) list[at].widget = { ...list[at].widget, name };
    const named = node.passthrough?.widgets_values_named;
    if (named && old in named) { named[name] = named[old]; delete named[old]; }
  });
  return true;
}

/** Removes subgraph input (or output) `index` with its links inside and every instance's matching slot and links. */
export function removeInterfaceSlot(root, level, side, index) {
  const slots = slotsOf(level, side);
  const slot = slots[index];
  if (!slot || slot.empty) return false;
  const { feeds, place } = side === 'input' ? widgetPlace(level, index) : { feeds: false, place: -1 };
  removeNodeSlot(level, boundaryOf(level, side), side === 'input' ? 'output' : 'input', index);
  const key = entriesKey(side);
  level.definition = { ...level.definition, [key]: (level.definition[key] || []).filter((e, i) => i !== index) };
  forEachInstance(root, level, (graph, node) => {
    const list = side === 'input' ? node.inputs : node.outputs;
    const at = instanceSlot(list, slot.name, index);
    if (at >= 0) removeNodeSlot(graph, node, side, at);
    if (feeds && Array.isArray(node.widgets_values) && place < node.widgets_values.length) node.widgets_values.splice(place, 1);
    const named = node.passthrough?.widgets_values_named;
    if (named) delete named[slot.name];
  });
  return true;
}
