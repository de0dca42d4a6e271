/**
 * Subgraphs as ComfyUI's v1 `definitions.subgraphs` hold them (docs/compatibility.md §C.5.2, §C.5.3): a
 * definition is a small version 1 graph plus an input node (id -10) whose outputs are the subgraph's
 * inputs and an output node (id -20) whose inputs are its outputs; an instance is a node whose `type`
 * is the definition's id. The server flattens instances to run them (graph/formats/editor.py); here a
 * definition is opened as an editable `Graph` (a level), written back into the file, and made from,
 * or dissolved into, a selection of nodes. Plain data, no drawing.
 */
import { Graph, makeNode, nodeJSON } from './graph_model.js';
import { floatingLinksJSON } from './reroutes.js';
import { copyFloatingLinks, part, rerouteCopies, reroutedIds, routeLink } from './subgraph_reroutes.js';

export const SUBGRAPH_INPUTS = 'Subgraph Inputs';
export const SUBGRAPH_OUTPUTS = 'Subgraph Outputs';
const INPUT_NODE_ID = -10;
const OUTPUT_NODE_ID = -20;
/** Room the boundary nodes of a new subgraph keep from its nodes. */
const BOUNDARY_GAP = 80;
const BOUNDARY_SIZE = [140, 60];

export const uuid = () => (globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
const clone = (value) => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));

/** Links of a definition as objects, whichever of the two forms it stores. */
export function definitionLinks(definition) {
  return (definition.links || []).map((l) => (Array.isArray(l)
    ? { id: l[0], origin_id: l[1], origin_slot: l[2], target_id: l[3], target_slot: l[4], type: l[5] } : l));
}

export const inputNodeId = (definition) => definition.inputNode?.id ?? INPUT_NODE_ID;
export const outputNodeId = (definition) => definition.outputNode?.id ?? OUTPUT_NODE_ID;

/**
 * A boundary node's slots are the subgraph's inputs (or outputs), then one empty slot: a link dropped
 * on it makes a new one (subgraph_interface.js).
 */
function boundaryNode(end, fallbackId, type, slots, side) {
  const [x, y, w, h] = end?.bounding || [0, 0, ...BOUNDARY_SIZE];
  const node = makeNode({ id: end?.id ?? fallbackId, type, pos: [x, y], size: [w, h] });
  const shown = (s) => ({ name: s.name, type: s.type, ...(s.label ? { label: s.label } : {}) });
  if (side === 'output') node.inputs = [...slots.map((s) => ({ ...shown(s), link: null })), { name: '', type: '*', link: null, empty: true }];
  else node.outputs = [...slots.map((s) => ({ ...shown(s), links: [] })), { name: '', type: '*', links: [], empty: true }];
  return node;
}

/**
 * The inside of `definition` as a graph of its own, its reroutes and floating links included; its
 * boundary nodes are marked `boundary`.
 */
export function openLevel(root, definition) {
  const inputs = boundaryNode(definition.inputNode, INPUT_NODE_ID, SUBGRAPH_INPUTS, definition.inputs || [], 'input');
  const outputs = boundaryNode(definition.outputNode, OUTPUT_NODE_ID, SUBGRAPH_OUTPUTS, definition.outputs || [], 'output');
  const level = Graph.fromJSON({ version: 1, id: definition.id, state: definition.state, nodes: [inputs, outputs, ...(definition.nodes || [])],
    links: definitionLinks(definition), groups: definition.groups, reroutes: definition.reroutes, floatingLinks: definition.floatingLinks });
  level.nodes.get(inputs.id).boundary = 'input';
  level.nodes.get(outputs.id).boundary = 'output';
  // Read back as any node's slots, the empty ones are marked again.
  level.nodes.get(inputs.id).outputs.at(-1).empty = true;
  level.nodes.get(outputs.id).inputs.at(-1).empty = true;
  level.root = root;
  level.definition = definition;
  return level;
}

export const boundaryOf = (level, side) => [...level.nodes.values()].find((n) => n.boundary === side);

/** The definition a level stands for now; fields the editor does not edit (uuids, widgets, config) ride along. */
export function definitionOf(level) {
  const base = level.definition;
  const input = boundaryOf(level, 'input');
  const output = boundaryOf(level, 'output');
  const slotEntry = (declared, slot, linkIds) => ({ ...clone(declared || { id: uuid() }), name: slot.name, type: slot.type, linkIds,
    ...(slot.label ? { label: slot.label } : {}) });
  const out = {
    ...clone(base), id: base.id, version: 1,
    state: { lastGroupId: base.state?.lastGroupId ?? 0, lastNodeId: level.lastNodeId, lastLinkId: level.lastLinkId, lastRerouteId: level.lastRerouteId },
    revision: base.revision ?? 0, config: clone(base.config) ?? {}, name: base.name,
    inputNode: { ...clone(base.inputNode), id: input.id, bounding: [...input.pos, ...input.size] },
    outputNode: { ...clone(base.outputNode), id: output.id, bounding: [...output.pos, ...output.size] },
    inputs: input.outputs.filter((slot) => !slot.empty).map((slot, i) => slotEntry(base.inputs?.[i], slot, [...slot.links])),
    outputs: output.inputs.filter((slot) => !slot.empty).map((slot, i) => slotEntry(base.outputs?.[i], slot, slot.link != null ? [slot.link] : [])),
    widgets: clone(base.widgets) ?? [],
    nodes: level.nodesJSON(), groups: clone(level.groups), links: level.linksJSON(true), extra: clone(base.extra) ?? {},
  };
  if (level.reroutes.size) out.reroutes = level.reroutesJSON(); else delete out.reroutes;
  if (level.floatingLinks.size) out.floatingLinks = floatingLinksJSON(level); else delete out.floatingLinks;
  return out;
}

/** Replaces the root's definition of the same id (definitions live in the file's top-level list, nested ones too). */
export function storeDefinition(root, definition) {
  const list = root.passthrough.definitions?.subgraphs || [];
  const at = list.findIndex((d) => d.id === definition.id);
  const subgraphs = at < 0 ? [...list, definition] : list.map((d, i) => (i === at ? definition : d));
  root.passthrough.definitions = { ...(root.passthrough.definitions || {}), subgraphs };
}

/**
 * Whether any instance of definition `id` is reachable from the root's nodes; `level` is the graph
 * being edited, whose stored definition may be out of date.
 */
export function definitionInUse(root, level, id) {
  const nodesOf = (definitionId) => (definitionId === level.definition?.id ? [...level.nodes.values()] : root.subgraphOf(definitionId)?.nodes || []);
  const seen = new Set();
  const queue = level === root ? [...root.nodes.values()] : [...root.nodes.values(), ...nodesOf(level.definition.id)];
  while (queue.length) {
    const type = queue.pop().type;
    if (seen.has(type) || !root.subgraphOf(type)) continue;
    seen.add(type);
    queue.push(...nodesOf(type));
  }
  return seen.has(id);
}

/** The definitions nodes of `types` use, and those their insides use in turn (each once, outermost first). */
export function definitionsUsedBy(root, types) {
  const found = new Map();
  const queue = [...types];
  while (queue.length) {
    const definition = root.subgraphOf(queue.shift());
    if (!definition || found.has(definition.id)) continue;
    found.set(definition.id, definition);
    queue.push(...(definition.nodes || []).map((n) => n.type));
  }
  return [...found.values()];
}

export function uniqueName(name, taken) {
  let candidate = name;
  for (let n = 2; taken.has(candidate); n++) candidate = `${name}_${n}`;
  taken.add(candidate);
  return candidate;
}

/** Links grouped by the output they leave: one subgraph slot per outside source, or per inside result. */
function bySource(links) {
  const groups = new Map();
  for (const link of links) {
    const key = `${link.origin_id}:${link.origin_slot}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(link);
  }
  return [...groups.values()];
}

/**
 * Moves the nodes `ids` of `graph` into a new subgraph and puts an instance where they were. Links
 * from outside become subgraph inputs (one per source output), links to outside its outputs (one per
 * inner output), so the instance computes exactly what the nodes did. `bounds(node)` is a node's drawn
 * rectangle. A floating link moves in when its kept end is a chosen node and every reroute it passes
 * is among `rerouteIds` (chosen with the nodes). Returns the instance, or null when nothing movable was chosen.
 */
export function convertToSubgraph(graph, ids, bounds, rerouteIds = []) {
  const chosen = new Set(ids.filter((id) => graph.nodes.has(id) && !graph.nodes.get(id).boundary));
  if (!chosen.size) return null;
  const nodes = [...chosen].map((id) => graph.nodes.get(id));
  const links = [...graph.links.values()];
  const saved = rerouteCopies(graph);
  const entering = bySource(links.filter((l) => !chosen.has(l.origin_id) && chosen.has(l.target_id)));
  const leaving = bySource(links.filter((l) => chosen.has(l.origin_id) && !chosen.has(l.target_id)));
  const [x, y, w, h] = enclosing(nodes.map(bounds));
  const inputNames = new Set();
  const outputNames = new Set();
  const inputs = entering.map((group) => {
    const target = graph.nodes.get(group[0].target_id).inputs[group[0].target_slot];
    const widget = group.some((l) => graph.nodes.get(l.target_id).inputs[l.target_slot].widget);
    return { name: uniqueName(target.widget?.name || target.name || group[0].type, inputNames), type: group[0].type, widget };
  });
  const outputs = leaving.map((group) => {
    const origin = graph.nodes.get(group[0].origin_id).outputs[group[0].origin_slot];
    return { name: uniqueName(origin.name || group[0].type, outputNames), type: origin.type };
  });
  const middle = y + h / 2 - BOUNDARY_SIZE[1] / 2;
  const level = new Graph();
  level.root = graph.root;
  level.definition = {
    id: uuid(), version: 1, state: {}, revision: 0, config: {}, name: 'New Subgraph',
    inputNode: { id: INPUT_NODE_ID, bounding: [x - BOUNDARY_GAP - BOUNDARY_SIZE[0], middle, ...BOUNDARY_SIZE] },
    outputNode: { id: OUTPUT_NODE_ID, bounding: [x + w + BOUNDARY_GAP, middle, ...BOUNDARY_SIZE] },
    inputs: inputs.map(() => ({ id: uuid() })), outputs: outputs.map(() => ({ id: uuid() })), widgets: [], extra: {},
  };
  const inputNode = boundaryNode(level.definition.inputNode, INPUT_NODE_ID, SUBGRAPH_INPUTS, inputs, 'input');
  const outputNode = boundaryNode(level.definition.outputNode, OUTPUT_NODE_ID, SUBGRAPH_OUTPUTS, outputs, 'output');
  inputNode.boundary = 'input';
  outputNode.boundary = 'output';
  level.nodes.set(inputNode.id, inputNode);
  level.nodes.set(outputNode.id, outputNode);
  for (const node of nodes) {
    const copy = makeNode(nodeJSON(node));
    copy.inputs.forEach((i) => { i.link = null; });
    copy.outputs.forEach((o) => { o.links = []; });
    level.addNode(copy);
  }
  for (const l of links.filter((l) => chosen.has(l.origin_id) && chosen.has(l.target_id))) {
    const made = level.connect(l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.id);
    if (made) { made.type = l.type; routeLink(level, made, [part(l.parentId, saved)]); }
  }
  entering.forEach((group, slot) => group.forEach((l) => level.connect(inputNode.id, slot, l.target_id, l.target_slot)));
  leaving.forEach((group, slot) => level.connect(group[0].origin_id, group[0].origin_slot, outputNode.id, slot));
  const chosenReroutes = new Set(rerouteIds);
  const floating = [...graph.floatingLinks.values()].filter((f) => graph.rerouteChain(f).every((r) => chosenReroutes.has(r.id)));
  copyFloatingLinks(graph, level, floating, (nodeId, slot) => (chosen.has(nodeId) ? [nodeId, slot] : null));
  const definition = definitionOf(level);
  storeDefinition(graph.root, definition);

  const instance = graph.addNode(makeNode({ type: definition.id, pos: [x, y + 30], size: [220, 0],
    inputs: inputs.map((i) => ({ name: i.name, type: i.type, link: null, ...(i.widget ? { widget: { name: i.name } } : {}) })),
    outputs: outputs.map((o) => ({ name: o.name, type: o.type, links: [] })), properties: {}, widgets_values: [] }));
  for (const id of chosen) graph.removeNode(id);
  // A link that crosses the boundary keeps its reroutes on its outer part.
  entering.forEach((group, slot) => {
    const made = graph.connect(group[0].origin_id, group[0].origin_slot, instance.id, slot);
    if (made) routeLink(graph, made, [part(group.find((l) => l.parentId != null)?.parentId, saved)]);
  });
  leaving.forEach((group, slot) => group.forEach((l) => {
    const made = graph.connect(instance.id, slot, l.target_id, l.target_slot);
    if (made) routeLink(graph, made, [part(l.parentId, saved)]);
  }));
  return instance;
}

function enclosing(rects) {
  const x = Math.min(...rects.map((r) => r[0]));
  const y = Math.min(...rects.map((r) => r[1]));
  return [x, y, Math.max(...rects.map((r) => r[0] + r[2])) - x, Math.max(...rects.map((r) => r[1] + r[3])) - y];
}

/**
 * Replaces the instance `instanceId` of `graph` by the nodes of its subgraph, wired as the instance
 * was: the inputs' outside links go to the inner nodes they fed, the outputs' consumers to the inner
 * nodes that produced them, and a value the instance held for a widget input lands in that widget.
 * `widgetNames(type)` lists a node type's widget names in `widgets_values` order. Returns the new ids.
 */
export function unpackSubgraph(graph, instanceId, widgetNames) {
  const instance = graph.nodes.get(instanceId);
  const definition = instance && graph.subgraphOf(instance.type);
  if (!definition) return [];
  const level = openLevel(graph.root, definition);
  const inner = [...level.nodes.values()].filter((n) => !n.boundary);
  const left = Math.min(...inner.map((n) => n.pos[0]));
  const top = Math.min(...inner.map((n) => n.pos[1]));
  const ids = new Map();
  for (const node of inner) {
    const copy = makeNode({ ...nodeJSON(node), id: null, pos: [node.pos[0] - left + instance.pos[0], node.pos[1] - top + instance.pos[1]] });
    copy.inputs.forEach((i) => { i.link = null; });
    copy.outputs.forEach((o) => { o.links = []; });
    ids.set(node.id, graph.addNode(copy).id);
  }
  const declared = (definition.inputs || []).map((entry) => entry.name);
  const outerInput = (slot) => instance.inputs.find((i) => i.name === declared[slot]) || instance.inputs[slot];
  const sources = (slot) => { const input = outerInput(slot); const link = input && graph.links.get(input.link); return link ? [link] : []; };
  const consumers = instance.outputs.map((o) => (o.links || []).map((id) => graph.links.get(id)).filter(Boolean));
  const held = heldWidgetValues(level, instance);
  // Each new link is drawn through the reroutes of the parts it was made of: outside, inside, outside.
  const outerReroutes = rerouteCopies(graph);
  const inside = part(null, rerouteCopies(level), reroutedIds(graph), [instance.pos[0] - left, instance.pos[1] - top]);
  const outer = (l) => l && part(l.parentId, outerReroutes);
  const wiring = [];
  for (const link of level.links.values()) {
    const origin = level.nodes.get(link.origin_id);
    const target = level.nodes.get(link.target_id);
    const from = origin.boundary ? sources(link.origin_slot).map((l) => [l.origin_id, l.origin_slot, l]) : [[ids.get(origin.id), link.origin_slot, null]];
    const to = target.boundary ? (consumers[link.target_slot] || []).map((l) => [l.target_id, l.target_slot, l]) : [[ids.get(target.id), link.target_slot, null]];
    for (const a of from) {
      for (const b of to) wiring.push({ ends: [a[0], a[1], b[0], b[1]], route: [outer(a[2]), { ...inside, parentId: link.parentId }, outer(b[2])] });
    }
    if (origin.boundary && !target.boundary && held.has(link.origin_slot)) {
      const copy = graph.nodes.get(ids.get(target.id));
      const name = copy.inputs[link.target_slot]?.widget?.name;
      const index = name ? widgetNames(copy.type).indexOf(name) : -1;
      if (index >= 0 && !from.length) copy.widgets_values[index] = held.get(link.origin_slot);
    }
  }
  graph.removeNode(instanceId);
  for (const { ends, route } of wiring) {
    const made = graph.connect(...ends);
    if (made) routeLink(graph, made, route.filter(Boolean));
  }
  // A floating link comes out with the inner node it kept, or from what feeds the subgraph input it kept.
  const inputNode = boundaryOf(level, 'input').id;
  copyFloatingLinks(level, graph, [...level.floatingLinks.values()], (nodeId, slot, kept) => {
    if (ids.has(nodeId)) return [ids.get(nodeId), slot];
    const source = nodeId === inputNode && kept === 'output' && sources(slot)[0];
    return source ? [source.origin_id, source.origin_slot] : null;
  }, inside.idOf, inside.shift);
  return [...ids.values()];
}

/** Subgraph input slot → the value the instance stores for it (one per input that feeds a widget, in order). */
function heldWidgetValues(level, instance) {
  const held = new Map();
  const values = Array.isArray(instance.widgets_values) ? instance.widgets_values : [];
  const input = boundaryOf(level, 'input');
  let position = 0;
  input.outputs.forEach((slot, index) => {
    const feedsWidget = slot.links.some((id) => { const l = level.links.get(id); return l && level.nodes.get(l.target_id).inputs[l.target_slot]?.widget; });
    if (!feedsWidget) return;
    if (position < values.length) held.set(index, values[position]);
    position += 1;
  });
  return held;
}
