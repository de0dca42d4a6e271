/**
 * The editing session: one workflow, the node definitions, the view, the selection and the undo history.
 * Every user-visible edit goes through a method here and ends in commit(), which records the undo
 * snapshot and stores the workflow in localStorage so a reload restores it.
 * `root` is the workflow's own graph; `graph` is the one shown and edited, which is the root or, after
 * entering a subgraph instance, that subgraph's inside (subgraphs.js). Each commit writes an edited
 * inside back into the root's definitions, so snapshots, saving and queueing always see the whole file.
 */
import { copyNodes, pasteNodes, readClipboard } from './clipboard.js';
import { Graph, MODE_ALWAYS } from './graph_model.js';
import { UndoHistory } from './history.js';
import { createNode, createReroute } from './node_factory.js';
import { connectThroughReroute, rerouteSource, resourceReroute } from './reroutes.js';
import { connectToEmptySlot } from './subgraph_interface.js';
import { convertToSubgraph, definitionInUse, definitionOf, openLevel, storeDefinition, unpackSubgraph } from './subgraphs.js';
import { instanceWidgets, instanceWidgetValue, setInstanceWidgetValue } from './subgraphs_widgets.js';
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
    this.root = this.graph;
    /** The subgraphs entered, outermost first: `{definitionId, instanceId, view}` (the view to return to). */
    this.path = [];
    this.levelBaseline = null;
    this.view = new View();
    this.selection = new Set();
    this.selectedReroutes = new Set();
    this.instanceWidgetCache = new Map();
    this.history = new UndoHistory();
    this.widgetCache = new Map();
    this.imageCache = new Map();
    this.dirty = true;
  }

  markDirty() {
    this.dirty = true;
  }

  widgetsFor(node) {
    const definition = !this.defs[node.type] && this.graph.subgraphOf(node.type);
    if (definition) {
      // Per node: proxy widgets are the instance's own choice. Cleared whenever the graph may have changed.
      if (!this.instanceWidgetCache.has(node.id)) {
        this.instanceWidgetCache.set(node.id, instanceWidgets(node, definition, (type) => (this.defs[type] ? this.typeWidgets(type) : [])));
      }
      return this.instanceWidgetCache.get(node.id);
    }
    return this.typeWidgets(node.type);
  }

  typeWidgets(type) {
    if (!this.widgetCache.has(type)) {
      const def = this.defs[type];
      this.widgetCache.set(type, def ? widgetSpecs(def) : []);
    }
    return this.widgetCache.get(type);
  }

  /** A widget's value, wherever it lives: the node's `widgets_values`, or for an instance maybe inside its subgraph. */
  widgetValue(node, index) {
    const spec = this.widgetsFor(node)[index];
    if (spec && spec.source) return instanceWidgetValue(this.graph.subgraphOf(node.type), node, spec.source);
    return node.widgets_values[index];
  }

  /** Sets a widget without an undo step (a drag in progress); the gesture's end commits. */
  setWidgetLive(node, index, value) {
    const specs = this.widgetsFor(node);
    const spec = specs[index];
    if (spec && spec.source) { setInstanceWidgetValue(this.graph.subgraphOf(node.type), node, specs, spec.source, value); return; }
    while (node.widgets_values.length <= index) node.widgets_values.push(defaultWidgetValue(specs[node.widgets_values.length]));
    node.widgets_values[index] = value;
  }

  /** The id the server gives this node in the prompt: inside subgraphs, the instance path joined with ':'. */
  apiId(node) {
    return [...this.path.map((entry) => entry.instanceId), node.id].join(':');
  }

  /** Image shown on the node: execution output or preview, or the picked file of an upload widget. */
  nodeImage(node) {
    const shown = this.execution.imageFor(this.apiId(node));
    if (shown) return shown;
    const upload = this.widgetsFor(node).find((w) => w.kind === 'upload');
    if (!upload) return null;
    const index = this.widgetsFor(node).findIndex((w) => w.name === upload.target);
    const filename = this.widgetValue(node, index);
    return filename ? { url: this.execution.api.viewUrl({ filename, subfolder: '', type: 'input' }), count: 1 } : null;
  }

  /** Whether nothing defines the node's type: not the server, not the editor, not the file's subgraphs. */
  isMissing(node) {
    return !this.defs[node.type] && node.type !== 'Reroute' && !node.boundary && !this.graph.subgraphOf(node.type);
  }

  /** Whether the node is a subgraph instance, which double-click opens. */
  isInstance(node) {
    return !this.defs[node.type] && Boolean(this.graph.subgraphOf(node.type));
  }

  /** The title bar's text: a subgraph instance is named by its definition; a missing type says so. */
  titleOf(node) {
    const title = node.title || this.defs[node.type]?.display_name || this.graph.subgraphOf(node.type)?.name || node.type;
    return this.isMissing(node) ? `${title} (missing)` : title;
  }

  /** Layout also writes the settled size back (never less than the content needs), so saved files hold a box that fits. */
  layout(node) {
    const box = layoutNode(node, { widgets: this.widgetsFor(node), hasImage: Boolean(this.nodeImage(node)), title: this.titleOf(node),
      badge: this.isInstance(node) });
    if (box.size) node.size = box.size;
    return box;
  }

  /** Sizes grow to fit content (a longer title), so they are settled before every snapshot to keep snapshots comparable. */
  snapshot() {
    for (const node of this.graph.nodes.values()) this.layout(node);
    this.root.extra.ds = this.path.length ? this.path[0].view : this.view.toDs();
    if (this.path.length) this.storeLevel();
    return JSON.stringify(this.root.toJSON());
  }

  /**
   * Writes the shown subgraph back into the file, only once it differs from what was opened: a
   * definition nobody edited stays exactly as the file had it.
   */
  storeLevel() {
    const text = JSON.stringify(definitionOf(this.graph));
    if (text === this.levelBaseline) return;
    storeDefinition(this.root, JSON.parse(text));
    this.levelBaseline = text;
  }

  commit() {
    this.instanceWidgetCache.clear();
    const snapshot = this.snapshot();
    this.history.commit(snapshot);
    localStorage.setItem(STORAGE_KEY, snapshot);
    this.markDirty();
    this.dispatchEvent(new Event('change'));
  }

  /** Only the view changed: remember it for the next reload without an undo step. */
  persistView() {
    persist(this);
  }

  /** Opens a whole workflow: 'load' tells the canvas to check that the saved view shows it, 'change' the rest. */
  load(json) {
    this.root = Graph.fromJSON(json);
    this.graph = this.root;
    this.path = [];
    this.instanceWidgetCache.clear();
    this.view.fromDs(this.graph.extra.ds);
    this.selection.clear();
    this.selectedReroutes.clear();
    this.execution.outputs.clear();
    this.execution.clearErrors();
    const snapshot = this.snapshot();
    this.history.reset(snapshot);
    localStorage.setItem(STORAGE_KEY, snapshot);
    this.markDirty();
    this.dispatchEvent(new Event('load'));
    this.dispatchEvent(new Event('navigate'));
    this.dispatchEvent(new Event('change'));
  }

  /** Undo and redo: the whole file comes back, and the subgraph being edited is reopened from it. */
  restore(snapshot) {
    if (snapshot == null) return;
    const view = this.view.toDs();
    const depth = this.path.length;
    this.root = Graph.fromJSON(JSON.parse(snapshot));
    this.showLevel();
    this.view.fromDs(view);
    this.selection = new Set([...this.selection].filter((id) => this.graph.nodes.has(id)));
    this.selectedReroutes = new Set([...this.selectedReroutes].filter((id) => this.graph.reroutes.has(id)));
    localStorage.setItem(STORAGE_KEY, snapshot);
    this.markDirty();
    if (this.path.length !== depth) this.dispatchEvent(new Event('navigate'));
    this.dispatchEvent(new Event('change'));
  }

  /** Opens the level `path` leads to; where the file no longer has a step of it, stops at the step before. */
  showLevel() {
    let graph = this.root;
    for (let depth = 0; depth < this.path.length; depth++) {
      const { definitionId, instanceId } = this.path[depth];
      const definition = this.root.subgraphOf(definitionId);
      if (!definition || graph.nodes.get(instanceId)?.type !== definitionId) { this.path.length = depth; break; }
      graph = openLevel(this.root, definition);
    }
    this.graph = graph;
    this.instanceWidgetCache.clear();
    for (const node of graph.nodes.values()) this.layout(node);
    this.levelBaseline = this.path.length ? JSON.stringify(definitionOf(graph)) : null;
  }

  /** Double-click on an instance: the canvas shows its subgraph. Not an edit, so no undo step. */
  enterSubgraph(node) {
    const definition = !this.defs[node.type] && this.graph.subgraphOf(node.type);
    if (!definition) return false;
    if (this.path.length) this.storeLevel();
    this.path.push({ definitionId: definition.id, instanceId: node.id, view: this.view.toDs() });
    this.showLevel();
    this.selection.clear();
    this.selectedReroutes.clear();
    this.markDirty();
    this.dispatchEvent(new CustomEvent('navigate', { detail: { entered: true } }));
    return true;
  }

  /** Back out to `depth` levels deep (0: the workflow itself), with the view that level had. */
  leaveTo(depth) {
    if (depth >= this.path.length) return;
    this.storeLevel();
    const { view } = this.path[depth];
    this.path.length = depth;
    this.showLevel();
    this.view.fromDs(view);
    this.selection.clear();
    this.selectedReroutes.clear();
    this.markDirty();
    this.dispatchEvent(new CustomEvent('navigate', { detail: { entered: false } }));
    persist(this);
  }

  /** The breadcrumb's names: the workflow, then each subgraph entered. */
  levelNames() {
    return ['Workflow', ...this.path.map((entry) => this.root.subgraphOf(entry.definitionId)?.name || 'Subgraph')];
  }

  /** Context menu: the selected nodes (and floating reroutes selected with them) become one subgraph instance; one undo step. */
  convertSelectionToSubgraph() {
    const instance = convertToSubgraph(this.graph, [...this.selection], (node) => nodeBounds(this.layout(node)), [...this.selectedReroutes]);
    if (!instance) return null;
    this.select([instance.id]);
    this.commit();
    return instance;
  }

  /** Context menu: an instance is replaced by its subgraph's nodes; a definition nothing uses any more goes. */
  unpackSubgraph(node) {
    const ids = unpackSubgraph(this.graph, node.id, (type) => this.typeWidgets(type).map((w) => w.name));
    if (!ids.length) return [];
    if (!definitionInUse(this.root, this.graph, node.type)) {
      const defs = this.root.passthrough.definitions;
      defs.subgraphs = defs.subgraphs.filter((d) => d.id !== node.type);
    }
    this.select(ids);
    this.commit();
    return ids;
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

  /** Additive: the nodes join what is selected, reroutes included. */
  select(ids, additive = false) {
    if (!additive) { this.selection.clear(); this.selectedReroutes.clear(); }
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

  /** The selection less a subgraph's input and output nodes, which can be moved but not deleted, copied or restyled. */
  editableNodes() {
    return this.selectedNodes().filter((n) => !n.boundary);
  }

  deleteSelected() {
    if (!this.selection.size && !this.selectedReroutes.size) return;
    for (const node of this.editableNodes()) this.graph.removeNode(node.id, true);
    for (const id of this.selectedReroutes) this.graph.removeReroute(id);
    this.selection.clear();
    this.selectedReroutes.clear();
    this.commit();
  }

  /** Toolbar "Clear": every node of the level shown goes, a subgraph's boundary stays. */
  clear() {
    for (const node of [...this.graph.nodes.values()]) if (!node.boundary) this.graph.removeNode(node.id);
    this.graph.groups = [];
    this.selection.clear();
    this.selectedReroutes.clear();
    this.commit();
  }

  /** A native reroute on `link` at `pos`, after the reroutes the link passes before that point. */
  addReroute(link, pos, after = null) {
    const reroute = this.graph.addReroute(link, pos, after);
    this.selectReroute(reroute.id);
    this.commit();
    return reroute;
  }

  removeReroute(id) {
    this.graph.removeReroute(id);
    this.selectedReroutes.delete(id);
    this.commit();
  }

  /** A link dragged out of a reroute: from the output it carries, through it, to `targetId`'s input. */
  connectThroughReroute(rerouteId, targetId, targetSlot) {
    const source = rerouteSource(this.graph, rerouteId);
    const target = this.graph.nodes.get(targetId);
    const origin = source && this.graph.nodes.get(source.origin_id);
    if (!origin || !target || origin.id === targetId) return null;
    // A subgraph boundary's empty slot grows the interface (connect does that); that link starts at the output.
    if (target.inputs[targetSlot]?.empty) return this.connect(origin.id, source.origin_slot, targetId, targetSlot);
    if (!typesCompatible(origin.outputs[source.origin_slot].type, target.inputs[targetSlot].type)) return null;
    if (target.inputs[targetSlot].link != null) this.graph.removeLink(target.inputs[targetSlot].link, true);
    const link = connectThroughReroute(this.graph, rerouteId, targetId, targetSlot);
    if (link && target.type === 'Reroute') target.outputs[0].type = link.type;
    this.commit();
    return link;
  }

  /**
   * A link dragged from a reroute's input side to an output: every link through the reroute comes from
   * that output now (reroutes.js). Throws RerouteSourceError, with nothing changed, where types do not allow it.
   */
  resourceReroute(rerouteId, originId, originSlot) {
    const links = resourceReroute(this.graph, rerouteId, originId, originSlot, typesCompatible);
    for (const link of links) {
      const target = this.graph.nodes.get(link.target_id);
      if (target.type === 'Reroute') target.outputs[0].type = link.type;
    }
    this.commit();
    return links;
  }

  selectReroute(id) {
    this.selection.clear();
    this.selectedReroutes = new Set([id]);
    this.markDirty();
  }

  copySelected() {
    const ids = this.editableNodes().map((n) => n.id);
    if (ids.length) copyNodes(this.graph, ids);
  }

  paste(at, keepInputs = false) {
    const ids = pasteNodes(this.graph, readClipboard(), at, keepInputs);
    if (!ids.length) return;
    this.select(ids);
    this.commit();
  }

  duplicateSelected() {
    const nodes = this.editableNodes();
    if (!nodes.length) return;
    const data = copyNodes(this.graph, nodes.map((n) => n.id));
    const left = Math.min(...nodes.map((n) => n.pos[0]));
    const top = Math.min(...nodes.map((n) => n.pos[1]));
    this.select(pasteNodes(this.graph, data, [left + 30, top + 30]));
    this.commit();
  }

  /** Ctrl+B / Ctrl+M: toggles; if any selected node is not yet in `mode`, all go into it. */
  toggleMode(mode) {
    const nodes = this.editableNodes();
    if (!nodes.length) return;
    const target = nodes.every((n) => n.mode === mode) ? MODE_ALWAYS : mode;
    nodes.forEach((n) => { n.mode = target; });
    this.commit();
  }

  toggleCollapse() {
    const nodes = this.editableNodes();
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
    for (const id of this.selectedReroutes) {
      const reroute = this.graph.reroutes.get(id);
      if (reroute) reroute.pos = [reroute.pos[0] + dx, reroute.pos[1] + dy];
    }
    this.markDirty();
  }

  /** Links are made only between type-compatible slots; returns the link or null. */
  connect(originId, originSlot, targetId, targetSlot) {
    const origin = this.graph.nodes.get(originId);
    const target = this.graph.nodes.get(targetId);
    if (!origin || !target || originId === targetId) return null;
    // Onto a subgraph boundary's empty slot: the subgraph gains an input or output for it.
    const grown = connectToEmptySlot(this.root, this.graph, originId, originSlot, targetId, targetSlot,
      (node, name) => node.widgets_values[this.typeWidgets(node.type).findIndex((w) => w.name === name)]);
    if (grown !== undefined) { if (grown) this.commit(); return grown; }
    if (!typesCompatible(origin.outputs[originSlot].type, target.inputs[targetSlot].type)) return null;
    // What fed the input before leaves its reroutes floating, as disconnecting it would.
    if (target.inputs[targetSlot].link != null) this.graph.removeLink(target.inputs[targetSlot].link, true);
    const link = this.graph.connect(originId, originSlot, targetId, targetSlot);
    if (link && origin.type === 'Reroute' && origin.outputs[0].type === '*') origin.outputs[0].type = target.inputs[targetSlot].type;
    if (link && target.type === 'Reroute') target.outputs[0].type = link.type;
    this.commit();
    return link;
  }

  /** A link through reroutes leaves them floating (reroutes.js), to be deleted or reconnected. */
  disconnect(linkId) {
    this.graph.removeLink(linkId, true);
    this.commit();
  }

  setWidgetValue(node, index, value) {
    if (this.widgetValue(node, index) === value) return;
    this.setWidgetLive(node, index, value);
    this.commit();
  }

  setTitle(node, title) {
    const def = this.defs[node.type];
    const named = def ? def.display_name : this.graph.subgraphOf(node.type)?.name;
    node.title = title && title !== named ? title : undefined;
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

function persist(editor) {
  localStorage.setItem(STORAGE_KEY, editor.snapshot());
}
