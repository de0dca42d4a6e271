/**
 * Copy/paste of nodes. The clipboard lives in localStorage, which every tab of this origin shares, so a
 * selection copied in one tab pastes in another. Links between copied nodes are kept; with `keepInputs`
 * (Ctrl+Shift+V) links coming from outside the selection are re-made too. Copied subgraph instances
 * carry their definitions, nested ones included, so they work in any workflow; one the workflow
 * already has (the same id) is used as it is there.
 */
import { makeNode } from './graph_model.js';
import { definitionsUsedBy, storeDefinition } from './subgraphs.js';

const KEY = 'loom.clipboard';

export function copyNodes(graph, ids) {
  const chosen = new Set(ids);
  const nodes = [...chosen].map((id) => graph.nodes.get(id)).filter(Boolean).map((n) => JSON.parse(JSON.stringify(n)));
  const links = [...graph.links.values()].filter((l) => chosen.has(l.target_id))
    .map((l) => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
  const definitions = definitionsUsedBy(graph.root, nodes.map((n) => n.type));
  const data = { nodes, links, ...(definitions.length ? { definitions: JSON.parse(JSON.stringify(definitions)) } : {}) };
  localStorage.setItem(KEY, JSON.stringify(data));
  return data;
}

export function readClipboard() {
  const text = localStorage.getItem(KEY);
  return text ? JSON.parse(text) : null;
}

/** Adds the copied nodes with fresh ids, their top-left corner at `at`; returns the new node ids. */
export function pasteNodes(graph, data, at, keepInputs = false) {
  if (!data || !data.nodes.length) return [];
  for (const definition of data.definitions || []) if (!graph.subgraphOf(definition.id)) storeDefinition(graph.root, JSON.parse(JSON.stringify(definition)));
  // An instance of the subgraph being edited, or of one holding it, would contain itself.
  const inside = graph.definition?.id;
  const nodes = data.nodes.filter((raw) => !inside || !definitionsUsedBy(graph.root, [raw.type]).some((d) => d.id === inside));
  if (!nodes.length) return [];
  const left = Math.min(...nodes.map((n) => n.pos[0]));
  const top = Math.min(...nodes.map((n) => n.pos[1]));
  const idMap = new Map();
  for (const raw of nodes) {
    const node = makeNode({ ...raw, id: null, pos: [raw.pos[0] - left + at[0], raw.pos[1] - top + at[1]] });
    node.inputs.forEach((i) => { i.link = null; });
    node.outputs.forEach((o) => { o.links = []; });
    graph.addNode(node);
    idMap.set(raw.id, node.id);
  }
  for (const [, originId, originSlot, targetId, targetSlot] of data.links) {
    const origin = idMap.get(originId) ?? (keepInputs && graph.nodes.has(originId) ? originId : null);
    if (origin != null && idMap.has(targetId)) graph.connect(origin, originSlot, idMap.get(targetId), targetSlot);
  }
  return [...idMap.values()];
}
