/**
 * The editing session: one graph, the node definitions, the view, the selection and the undo history.
 * Every user-visible edit goes through a method here and ends in commit(), which records the undo
 * snapshot and stores the workflow in localStorage so a reload restores it.
 */
import { copyNodes, pasteNodes, readClipboard } from './clipboard.js';
import { Graph, MODE_ALWAYS } from './graph_model.js';
import { UndoHistory } from './history.js';
import { createNode, createReroute } from './node_factory.js';
import { defaultWidgetValue, typesCompatible, widgetSpecs } from './node_defs.js';
import { View } from './canvas/view.js';
import { layoutNode, nodeBounds, TITLE_H } from './canvas/layout.js';
import { GROUP_COLORS } from './canvas/colors.js';

export const STORAGE_KEY = 'loom.workflow';

export class UnknownNodeTypeError extends Error {
  constructor(type) {
    super(`unknown node type "${type}": the server's /object_info does not list it`);
    this.type = type;
  }
}

export class Editor extends EventTarget {
  constructor(defs, execution) {
    super();
    this.defs = defs;
    this.execution = execution;
    this.graph = new Graph();
    this.view = new View();
    this.selection = new Set();
    this.history = new UndoHistory();
    this.widgetCache = new Map();
    this.imageCache = new Map();
    this.dirty = true;
  }

  markDirty() {
    this.dirty = true;
  }

  widgetsFor(node) {
    if (!this.widgetCache.has(node.type)) {
      const def = this.defs[node.type];
      this.widgetCache.set(node.type, def ? widgetSpecs(def) : []);
    }
    return this.widgetCache.get(node.type);
  }

  /** Image shown on the node: execution output or preview, or the picked file of an upload widget. */
  nodeImage(node) {
    const shown = this.execution.imageFor(node.id);
    if (shown) return shown;
    const upload = this.widgetsFor(node).find((w) => w.kind === 'upload');
    if (!upload) return null;
    const index = this.widgetsFor(node).findIndex((w) => w.name === upload.target);
    const filename = node.widgets_values[index];
    return filename ? { url: this.execution.api.viewUrl({ filename, subfolder: '', type: 'input' }), count: 1 } : null;
  }

  /** Whether nothing defines the node's type: not the server, not the editor, not the file's subgraphs. */
  isMissing(node) {
    return !this.defs[node.type] && node.type !== 'Reroute' && !this.graph.subgraphOf(node.type);
  }

  /** The title bar's text: a subgraph instance is named by its definition; a missing type says so. */
  titleOf(node) {
    const title = node.title || this.defs[node.type]?.display_name || this.graph.subgraphOf(node.type)?.name || node.type;
    return this.isMissing(node) ? `${title} (missing)` : title;
  }

  /** Layout also writes the settled size back (never less than the content needs), so saved files hold a box that fits. */
  layout(node) {
    const box = layoutNode(node, { widgets: this.widgetsFor(node), hasImage: Boolean(this.nodeImage(node)), title: this.titleOf(node) });
    if (box.size) node.size = box.size;
    return box;
  }

  /** Sizes grow to fit content (a longer title), so they are settled before every snapshot to keep snapshots comparable. */
  snapshot() {
    for (const node of this.graph.nodes.values()) this.layout(node);
    this.graph.extra.ds = this.view.toDs();
    return JSON.stringify(this.graph.toJSON());
  }

  commit() {
    const snapshot = this.snapshot();
    this.history.commit(snapshot);
    localStorage.setItem(STORAGE_KEY, snapshot);
    this.markDirty();
    this.dispatchEvent(new Event('change'));
  }

  /** Only the view changed: remember it for the next reload without an undo step. */
  persistView() {
    localStorage.setItem(STORAGE_KEY, this.snapshot());
  }

  /** Opens a whole workflow: 'load' tells the canvas to check that the saved view shows it, 'change' the rest. */
  load(json) {
    this.graph = Graph.fromJSON(json);
    this.view.fromDs(this.graph.extra.ds);
    this.selection.clear();
    this.execution.outputs.clear();
    this.execution.clearErrors();
    const snapshot = this.snapshot();
    this.history.reset(snapshot);
    localStorage.setItem(STORAGE_KEY, snapshot);
    this.markDirty();
    this.dispatchEvent(new Event('load'));
    this.dispatchEvent(new Event('change'));
  }

  restore(snapshot) {
    if (snapshot == null) return;
    const view = this.view.toDs();
    this.graph = Graph.fromJSON(JSON.parse(snapshot));
    this.view.fromDs(view);
    this.selection = new Set([...this.selection].filter((id) => this.graph.nodes.has(id)));
    localStorage.setItem(STORAGE_KEY, snapshot);
    this.markDirty();
    this.dispatchEvent(new Event('change'));
  }

  undo() { this.restore(this.history.undo()); }

  redo() { this.restore(this.history.redo()); }

  addNode(type, pos) {
    let node;
    if (type === 'Reroute') node = createReroute(pos);
    else {
      const def = this.defs[type];
      if (!def) throw new UnknownNodeTypeError(type);
      node = createNode(def, pos);
    }
    this.graph.addNode(node);
    this.select([node.id]);
    this.commit();
    return node;
  }

  select(ids, additive = false) {
    if (!additive) this.selection.clear();
    for (const id of ids) this.selection.add(id);
    this.bringToFront(ids);
    this.markDirty();
  }

  bringToFront(ids) {
    for (const id of ids) {
      const node = this.graph.nodes.get(id);
      if (!node) continue;
      this.graph.nodes.delete(id);
      this.graph.nodes.set(id, node);
    }
  }

  selectedNodes() {
    return [...this.selection].map((id) => this.graph.nodes.get(id)).filter(Boolean);
  }

  deleteSelected() {
    if (!this.selection.size) return;
    for (const id of this.selection) this.graph.removeNode(id);
    this.selection.clear();
    this.commit();
  }

  copySelected() {
    if (this.selection.size) copyNodes(this.graph, [...this.selection]);
  }

  paste(at, keepInputs = false) {
    const ids = pasteNodes(this.graph, readClipboard(), at, keepInputs);
    if (!ids.length) return;
    this.select(ids);
    this.commit();
  }

  duplicateSelected() {
    const nodes = this.selectedNodes();
    if (!nodes.length) return;
    const data = copyNodes(this.graph, nodes.map((n) => n.id));
    const left = Math.min(...nodes.map((n) => n.pos[0]));
    const top = Math.min(...nodes.map((n) => n.pos[1]));
    this.select(pasteNodes(this.graph, data, [left + 30, top + 30]));
    this.commit();
  }

  /** Ctrl+B / Ctrl+M: toggles; if any selected node is not yet in `mode`, all go into it. */
  toggleMode(mode) {
    const nodes = this.selectedNodes();
    if (!nodes.length) return;
    const target = nodes.every((n) => n.mode === mode) ? MODE_ALWAYS : mode;
    nodes.forEach((n) => { n.mode = target; });
    this.commit();
  }

  toggleCollapse() {
    const nodes = this.selectedNodes();
    nodes.forEach((n) => { n.flags = { ...n.flags, collapsed: !(n.flags && n.flags.collapsed) }; if (!n.flags.collapsed) delete n.flags.collapsed; });
    if (nodes.length) this.commit();
  }

  /** Live, during a resize drag; layout clamps `size` to what the content needs. The drag's end commits. */
  resizeNode(node, size) {
    node.size = size;
    this.layout(node);
    this.markDirty();
  }

  moveSelected(dx, dy) {
    for (const node of this.selectedNodes()) node.pos = [node.pos[0] + dx, node.pos[1] + dy];
    this.markDirty();
  }

  /** Links are made only between type-compatible slots; returns the link or null. */
  connect(originId, originSlot, targetId, targetSlot) {
    const origin = this.graph.nodes.get(originId);
    const target = this.graph.nodes.get(targetId);
    if (!origin || !target || originId === targetId) return null;
    if (!typesCompatible(origin.outputs[originSlot].type, target.inputs[targetSlot].type)) return null;
    const link = this.graph.connect(originId, originSlot, targetId, targetSlot);
    if (link && origin.type === 'Reroute' && origin.outputs[0].type === '*') origin.outputs[0].type = target.inputs[targetSlot].type;
    if (link && target.type === 'Reroute') target.outputs[0].type = link.type;
    this.commit();
    return link;
  }

  disconnect(linkId) {
    this.graph.removeLink(linkId);
    this.commit();
  }

  setWidgetValue(node, index, value) {
    if (node.widgets_values[index] === value) return;
    while (node.widgets_values.length <= index) node.widgets_values.push(defaultWidgetValue(this.widgetsFor(node)[node.widgets_values.length]));
    node.widgets_values[index] = value;
    this.commit();
  }

  setTitle(node, title) {
    const def = this.defs[node.type];
    node.title = title && title !== (def && def.display_name) ? title : undefined;
    this.commit();
  }

  /** Turns a widget into an input socket on its row (docs/compatibility.md §C.5.2: `inputs[].widget.name`). */
  convertWidgetToInput(node, name) {
    const widget = this.widgetsFor(node).find((w) => w.name === name);
    if (!widget || node.inputs.some((i) => i.widget && i.widget.name === name)) return;
    node.inputs.push({ name, type: widget.type === 'COMBO' ? 'COMBO' : widget.type, link: null, widget: { name } });
    this.commit();
  }

  convertInputToWidget(node, inputIndex) {
    const input = node.inputs[inputIndex];
    if (!input || !input.widget) return;
    if (input.link != null) this.graph.removeLink(input.link);
    node.inputs.splice(inputIndex, 1);
    for (const link of this.graph.links.values()) if (link.target_id === node.id && link.target_slot > inputIndex) link.target_slot -= 1;
    this.commit();
  }

  createGroup(title = 'Group') {
    const nodes = this.selectedNodes();
    if (!nodes.length) return null;
    const boxes = nodes.map((n) => nodeBounds(this.layout(n)));
    const pad = 10;
    const x = Math.min(...boxes.map((b) => b[0])) - pad;
    const y = Math.min(...boxes.map((b) => b[1])) - pad - TITLE_H;
    const right = Math.max(...boxes.map((b) => b[0] + b[2])) + pad;
    const bottom = Math.max(...boxes.map((b) => b[1] + b[3])) + pad;
    const group = { title, bounding: [x, y, right - x, bottom - y], color: GROUP_COLORS[0], font_size: 24 };
    this.graph.groups.push(group);
    this.commit();
    return group;
  }

  /** Nodes whose whole box lies in the group, title bar included, move with it. */
  nodesInGroup(group) {
    const [gx, gy, gw, gh] = group.bounding;
    return [...this.graph.nodes.values()].filter((n) => {
      const [x, y, w, h] = nodeBounds(this.layout(n));
      return x >= gx && y >= gy && x + w <= gx + gw && y + h <= gy + gh;
    });
  }

  align(edge) {
    const nodes = this.selectedNodes();
    if (nodes.length < 2) return;
    if (edge === 'left') { const x = Math.min(...nodes.map((n) => n.pos[0])); nodes.forEach((n) => { n.pos[0] = x; }); }
    if (edge === 'top') { const y = Math.min(...nodes.map((n) => n.pos[1])); nodes.forEach((n) => { n.pos[1] = y; }); }
    if (edge === 'right') { const r = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])); nodes.forEach((n) => { n.pos[0] = r - n.size[0]; }); }
    // The drawn height, not `size`: a shown image makes a node taller than the size it keeps.
    const height = (n) => this.layout(n).h;
    if (edge === 'bottom') {
      const b = Math.max(...nodes.map((n) => n.pos[1] + height(n)));
      nodes.forEach((n) => { n.pos[1] = b - height(n); });
    }
    this.commit();
  }
}
