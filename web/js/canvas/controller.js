/**
 * The canvas element: one requestAnimationFrame loop that redraws only when something changed, and
 * the pointer gestures (pan, zoom, select, move, resize, connect, widget editing). Commands that are
 * not gestures (queue, save, menus) are reached through `actions`, which canvas_actions.js supplies.
 */
import { typesCompatible } from '../node_defs.js';
import { openSearch } from '../search.js';
import { clampNumber, dragNumber, stepNumber } from '../widgets/number.js';
import { openTextEditor } from '../widgets/text_editor.js';
import { SubgraphBreadcrumb } from '../subgraphs_breadcrumb.js';
import { DomWidgetLayer } from './dom_widgets.js';
import { rerouteLink, rerouteSource, RerouteSourceError } from '../reroutes.js';
import { toast } from '../toast.js';
import { boundaryRowAt, hitTest } from './hit_test.js';
import { enclosingRect, nodeBounds, pointInRect, rectsOverlap, resizeHandle, TITLE_H } from './layout.js';
import { besideMinimap, minimapFrame, minimapToWorld } from './minimap.js';
import { layoutAll, renderFrame, REROUTE_SLOT_OFFSET } from './render.js';
import { fitScale } from './view.js';

const ARROW_ZONE = 18;
const DRAG_THRESHOLD = 3;
const SHOWN_INSET = 24;

export class CanvasController {
  constructor(canvas, editor, actions) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.editor = editor;
    this.actions = actions;
    this.boxes = new Map();
    this.drag = null;
    /** `reroute`: the reroute under the pointer, `{id, slot}`, whose slots are shown; `slot` ('input', 'output' or null) is the one pointed at. */
    this.overlay = { link: null, rubber: null, reroute: null };
    this.pointer = [0, 0];
    this.spaceDown = false;
    this.frames = 0;
    this.domWidgets = new DomWidgetLayer(canvas, editor);
    this.breadcrumb = new SubgraphBreadcrumb(canvas, editor);
    this.resize();
    // Not only window resizes: a notice above the canvas or an opened panel changes its box too.
    new ResizeObserver(() => this.resize()).observe(canvas);
    // The graph opened at boot came before this canvas; later ones announce themselves.
    this.revealGraph();
    editor.addEventListener('load', () => this.revealGraph());
    // A subgraph opens fitted to its nodes; leaving it brings back the view it was entered from (the editor keeps that).
    editor.addEventListener('navigate', (e) => { this.drag = null; if (e.detail && e.detail.entered) this.fitNodes([...editor.graph.nodes.values()]); });
    canvas.addEventListener('pointerdown', (e) => this.onDown(e));
    addEventListener('pointermove', (e) => this.onMove(e));
    addEventListener('pointerup', (e) => this.onUp(e));
    canvas.addEventListener('wheel', (e) => this.onWheel(e), { passive: false });
    canvas.addEventListener('dblclick', (e) => this.onDoubleClick(e));
    canvas.addEventListener('contextmenu', (e) => { e.preventDefault(); this.onContextMenu(e); });
    addEventListener('keydown', (e) => { if (e.code === 'Space' && !isTyping(e)) this.spaceDown = true; });
    addEventListener('keyup', (e) => { if (e.code === 'Space') this.spaceDown = false; });
    requestAnimationFrame(() => this.frame());
  }

  get width() { return this.canvas.clientWidth; }

  get height() { return this.canvas.clientHeight; }

  resize() {
    this.canvas.width = Math.round(this.canvas.clientWidth * devicePixelRatio);
    this.canvas.height = Math.round(this.canvas.clientHeight * devicePixelRatio);
    this.editor.markDirty();
  }

  frame() {
    if (this.editor.dirty || this.alwaysRedraw) {
      this.editor.dirty = false;
      this.boxes = renderFrame(this.ctx, this.editor, this.width, this.height, this.overlay);
      this.domWidgets.sync(this.boxes);
      this.frames += 1;
    }
    requestAnimationFrame(() => this.frame());
  }

  local(event) {
    const r = this.canvas.getBoundingClientRect();
    return [event.clientX - r.left, event.clientY - r.top];
  }

  currentBoxes() {
    if (this.editor.dirty) this.boxes = layoutAll(this.editor);
    return this.boxes;
  }

  /** Screen (page) coordinates of a slot or widget centre: the test hook uses these to aim the mouse. */
  slotOnScreen(nodeId, kind, slot) {
    const box = this.currentBoxes().get(nodeId);
    const point = kind === 'input' ? box.inputs[slot] : box.outputs[slot];
    return this.pageOf(point[0], point[1]);
  }

  widgetOnScreen(nodeId, name, where = 'center') {
    const box = this.currentBoxes().get(nodeId);
    const rect = box.widgets.find((r) => r.widget.name === name);
    const x = where === 'left' ? rect.x + 8 : where === 'right' ? rect.x + rect.w - 8 : rect.x + rect.w / 2;
    return this.pageOf(x, rect.y + rect.h / 2);
  }

  titleOnScreen(nodeId) {
    const box = this.currentBoxes().get(nodeId);
    return this.pageOf(box.x + box.w / 2, box.y - TITLE_H / 2);
  }

  /** The node's whole box, title bar included, as page coordinates [left, top, right, bottom]. */
  boundsOnScreen(nodeId) {
    const [x, y, w, h] = nodeBounds(this.currentBoxes().get(nodeId));
    return [...this.pageOf(x, y), ...this.pageOf(x + w, y + h)];
  }

  resizeHandleOnScreen(nodeId) {
    const [x, y, w, h] = resizeHandle(this.currentBoxes().get(nodeId));
    return this.pageOf(x + w / 2, y + h / 2);
  }

  pageOf(wx, wy) {
    const [sx, sy] = this.editor.view.toScreen(wx, wy);
    const r = this.canvas.getBoundingClientRect();
    return [r.left + sx, r.top + sy];
  }

  onDown(event) {
    this.canvas.focus();
    const [sx, sy] = this.local(event);
    const [wx, wy] = this.editor.view.toWorld(sx, sy);
    const start = { sx, sy, wx, wy, moved: false };
    if (event.button === 1 || (event.button === 0 && this.spaceDown)) { this.drag = { kind: 'pan', ...start }; return; }
    if (event.button !== 0) return;
    const mini = minimapToWorld(this.editor, sx, sy);
    if (mini) { this.drag = { kind: 'minimap', ...start }; this.centerOn(mini); return; }
    const hit = hitTest(this.editor, this.currentBoxes(), wx, wy);
    if (!hit || hit.kind === 'group-body') {
      this.drag = event.ctrlKey || event.shiftKey || event.metaKey ? { kind: 'rubber', ...start, additive: event.shiftKey } : { kind: 'pan', ...start };
      return;
    }
    if (hit.kind === 'output') {
      const type = hit.node.outputs[hit.slot].type;
      this.drag = { kind: 'link', ...start, node: hit.node, slot: hit.slot };
      this.overlay.link = { fromOutput: true, type, start: hit.box.outputs[hit.slot], end: [wx, wy] };
    } else if (hit.kind === 'input') {
      const input = hit.node.inputs[hit.slot];
      const link = input.link != null ? this.editor.graph.links.get(input.link) : null;
      if (link) {
        // A link through reroutes comes off at its last reroute, which floats until the link is dropped somewhere.
        const origin = this.editor.graph.nodes.get(link.origin_id);
        const reroute = this.editor.graph.reroutes.get(link.parentId);
        this.editor.graph.removeLink(link.id, true);
        this.drag = { kind: 'link', ...start, node: origin, slot: link.origin_slot, detached: true, reroute: reroute ? reroute.id : null };
        const from = reroute ? [...reroute.pos] : this.editor.layout(origin).outputs[link.origin_slot];
        this.overlay.link = { fromOutput: true, type: link.type, start: from, end: [wx, wy] };
      } else {
        this.drag = { kind: 'link', ...start, node: hit.node, slot: hit.slot, reverse: true };
        this.overlay.link = { fromOutput: false, type: input.type, start: hit.box.inputs[hit.slot], end: [wx, wy] };
      }
    } else if (hit.kind === 'resize') {
      this.editor.select([hit.node.id]);
      this.drag = { kind: 'resize', ...start, node: hit.node, size: [hit.box.w, hit.box.h] };
    } else if (hit.kind === 'widget') {
      this.editor.select([hit.node.id]);
      this.drag = { kind: 'widget', ...start, node: hit.node, rect: hit.rect, value: this.editor.widgetValue(hit.node, hit.rect.index) };
    } else if (hit.kind === 'title' && hit.badge) {
      this.editor.enterSubgraph(hit.node);
    } else if (hit.kind === 'reroute-output' || (hit.kind === 'reroute' && event.shiftKey && rerouteSource(this.editor.graph, hit.reroute.id))) {
      // As in ComfyUI: a link is dragged out of a reroute from its output slot, or with Shift from its dot.
      const source = rerouteSource(this.editor.graph, hit.reroute.id);
      this.drag = { kind: 'link', ...start, node: this.editor.graph.nodes.get(source.origin_id), slot: source.origin_slot, reroute: hit.reroute.id };
      this.overlay.link = { fromOutput: true, type: source.type, start: [...hit.reroute.pos], end: [wx, wy] };
      this.overlay.reroute = null;
    } else if (hit.kind === 'reroute-input') {
      // Dragged back from a reroute's input side to an output, the reroute takes its links from there.
      const carried = rerouteLink(this.editor.graph, hit.reroute);
      this.drag = { kind: 'link', ...start, reverse: true, rerouteInput: hit.reroute.id };
      this.overlay.link = { fromOutput: false, type: carried ? carried.type : '*', start: [...hit.reroute.pos], end: [wx, wy] };
      this.overlay.reroute = null;
    } else if (hit.kind === 'reroute') {
      // Ctrl+click adds a reroute to the selection (or takes it out); a selected one drags the whole selection.
      const selected = this.editor.selectedReroutes;
      if (event.ctrlKey || event.metaKey) {
        if (selected.has(hit.reroute.id)) selected.delete(hit.reroute.id); else selected.add(hit.reroute.id);
      } else if (!selected.has(hit.reroute.id)) this.editor.selectReroute(hit.reroute.id);
      this.drag = { kind: 'nodes', ...start, lastX: wx, lastY: wy };
    } else if (hit.kind === 'title' || hit.kind === 'node') {
      if (event.shiftKey || event.ctrlKey) {
        if (this.editor.selection.has(hit.node.id) && event.ctrlKey) this.editor.selection.delete(hit.node.id);
        else this.editor.select([hit.node.id], true);
      } else if (!this.editor.selection.has(hit.node.id)) this.editor.select([hit.node.id]);
      else this.editor.bringToFront([hit.node.id]);
      this.drag = { kind: 'nodes', ...start, lastX: wx, lastY: wy };
    } else if (hit.kind === 'group') {
      this.drag = { kind: 'group', ...start, group: hit.group, nodes: this.editor.nodesInGroup(hit.group), lastX: wx, lastY: wy };
    } else if (hit.kind === 'link') {
      this.actions.linkMenu(hit.link, event.clientX, event.clientY);
    }
    this.editor.markDirty();
  }

  onMove(event) {
    const [sx, sy] = this.local(event);
    this.pointer = [sx, sy];
    const drag = this.drag;
    if (!drag) { if (event.target === this.canvas) this.hover(sx, sy); return; }
    const [wx, wy] = this.editor.view.toWorld(sx, sy);
    if (Math.hypot(sx - drag.sx, sy - drag.sy) > DRAG_THRESHOLD) drag.moved = true;
    switch (drag.kind) {
      case 'pan':
        this.editor.view.panBy(event.movementX, event.movementY);
        break;
      case 'minimap': {
        const at = minimapToWorld(this.editor, sx, sy);
        if (at) this.centerOn(at);
        break;
      }
      case 'nodes':
        this.editor.moveSelected(wx - drag.lastX, wy - drag.lastY);
        drag.lastX = wx; drag.lastY = wy;
        break;
      case 'resize':
        this.editor.resizeNode(drag.node, [drag.size[0] + wx - drag.wx, drag.size[1] + wy - drag.wy]);
        break;
      case 'group': {
        const [dx, dy] = [wx - drag.lastX, wy - drag.lastY];
        drag.group.bounding = [drag.group.bounding[0] + dx, drag.group.bounding[1] + dy, drag.group.bounding[2], drag.group.bounding[3]];
        drag.nodes.forEach((n) => { n.pos = [n.pos[0] + dx, n.pos[1] + dy]; });
        drag.lastX = wx; drag.lastY = wy;
        break;
      }
      case 'link':
        this.overlay.link.end = [wx, wy];
        break;
      case 'rubber':
        this.overlay.rubber = [Math.min(wx, drag.wx), Math.min(wy, drag.wy), Math.abs(wx - drag.wx), Math.abs(wy - drag.wy)];
        break;
      case 'widget': {
        const kind = drag.rect.widget.kind;
        if (drag.moved && (kind === 'int' || kind === 'float') && !this.widgetLinked(drag.node, drag.rect)) {
          this.editor.setWidgetLive(drag.node, drag.rect.index, dragNumber(drag.rect.widget, drag.value, sx - drag.sx));
          drag.dragged = true;
        }
        break;
      }
      default:
    }
    this.editor.markDirty();
  }

  /**
   * The cursor shows where a press would start a resize; the minimap, drawn on top, takes precedence.
   * A reroute near the pointer shows its output slot.
   */
  hover(sx, sy) {
    const [wx, wy] = this.editor.view.toWorld(sx, sy);
    const hit = !minimapToWorld(this.editor, sx, sy) && hitTest(this.editor, this.currentBoxes(), wx, wy);
    this.canvas.style.cursor = hit && hit.kind === 'resize' ? 'nwse-resize' : '';
    let reroute = null;
    if (hit && hit.reroute) reroute = { id: hit.reroute.id, slot: { 'reroute-input': 'input', 'reroute-output': 'output' }[hit.kind] ?? null };
    else if (!hit || !hit.node) {
      const near = [...this.editor.graph.reroutes.values()].find((r) => Math.hypot(wx - r.pos[0], wy - r.pos[1]) < 2 * REROUTE_SLOT_OFFSET);
      if (near) reroute = { id: near.id, slot: null };
    }
    const shown = this.overlay.reroute;
    if (shown?.id === reroute?.id && shown?.slot === reroute?.slot) return;
    this.overlay.reroute = reroute;
    this.editor.markDirty();
  }

  onUp(event) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    const [sx, sy] = this.local(event);
    const [wx, wy] = this.editor.view.toWorld(sx, sy);
    const editor = this.editor;
    switch (drag.kind) {
      case 'pan':
        if (!drag.moved) { editor.selection.clear(); editor.selectedReroutes.clear(); }
        editor.persistView();
        break;
      case 'minimap':
        editor.persistView();
        break;
      case 'nodes': case 'group':
        if (drag.moved) editor.commit();
        break;
      case 'resize':
        // Even under the drag threshold the size may have changed; history ignores an unchanged graph.
        editor.commit();
        break;
      case 'rubber': {
        const r = this.overlay.rubber;
        this.overlay.rubber = null;
        if (r) {
          const ids = [...editor.graph.nodes.values()].filter((n) => rectsOverlap(nodeBounds(editor.layout(n)), r)).map((n) => n.id);
          editor.select(ids, drag.additive);
          for (const reroute of editor.graph.reroutes.values()) if (pointInRect(reroute.pos[0], reroute.pos[1], r)) editor.selectedReroutes.add(reroute.id);
        }
        break;
      }
      case 'link':
        this.finishLink(drag, wx, wy, event);
        break;
      case 'widget':
        if (drag.dragged) editor.commit();
        else if (!drag.moved) this.clickWidget(drag.node, drag.rect, wx, event);
        break;
      default:
    }
    editor.markDirty();
  }

  finishLink(drag, wx, wy, event) {
    const editor = this.editor;
    const type = this.overlay.link.type;
    this.overlay.link = null;
    const hit = hitTest(editor, this.currentBoxes(), wx, wy);
    let linked = null;
    if (!drag.reverse && hit && (hit.kind === 'input' || hit.kind === 'title' || hit.kind === 'node' || hit.kind === 'widget')) {
      const slot = hit.kind === 'input' ? hit.slot : hit.node.inputs.findIndex((i) => i.link == null && typesCompatible(type, i.type));
      if (slot >= 0 && typesCompatible(type, hit.node.inputs[slot].type)) linked = this.linkTo(drag, hit.node.id, slot);
    } else if (drag.reverse && hit && (hit.kind === 'output' || hit.kind === 'title' || hit.kind === 'node')) {
      let slot = hit.kind === 'output' ? hit.slot : hit.node.outputs.findIndex((o) => !o.empty && typesCompatible(o.type, type));
      // From a reroute, an output of the wrong type is refused with a reason rather than ignored.
      if (slot < 0 && drag.rerouteInput != null && hit.node.outputs.length) slot = 0;
      if (slot >= 0 && (drag.rerouteInput != null || typesCompatible(hit.node.outputs[slot].type, type))) linked = this.linkFrom(drag, hit.node.id, slot);
    }
    if (linked) return;
    // A Shift+click on a reroute, or a click on one of its slots (no drag), selects it, as a plain click does.
    const clicked = drag.reroute ?? drag.rerouteInput;
    if (!drag.moved && clicked != null && !drag.detached && editor.graph.reroutes.has(clicked)) editor.selectReroute(clicked);
    if (drag.detached) editor.commit();
    if (!hit && drag.moved) this.searchAndConnect(drag, type, wx, wy, event.clientX, event.clientY);
  }

  /** A link dropped on empty canvas: pick a compatible node, add it there and connect it. */
  async searchAndConnect(drag, type, wx, wy, clientX, clientY) {
    const fromOutput = !drag.reverse;
    const chosen = await openSearch(this.editor.defs, clientX, clientY, { filter: { type, fromOutput } });
    if (!chosen) return;
    const node = this.editor.addNode(chosen, [wx, wy]);
    if (fromOutput) {
      const slot = node.inputs.findIndex((i) => typesCompatible(type, i.type));
      if (slot >= 0) this.linkTo(drag, node.id, slot);
    } else {
      const slot = node.outputs.findIndex((o) => typesCompatible(o.type, type));
      if (slot >= 0) this.linkFrom(drag, node.id, slot);
    }
  }

  /** A link dragged from an output, or out of a reroute (then it passes through that reroute). */
  linkTo(drag, nodeId, slot) {
    if (drag.reroute != null && this.editor.graph.reroutes.has(drag.reroute)) return this.editor.connectThroughReroute(drag.reroute, nodeId, slot);
    return this.editor.connect(drag.node.id, drag.slot, nodeId, slot);
  }

  /**
   * A link dragged back from an input to an output, or from a reroute's input side: then all the
   * reroute's links come from that output, or a toast says why they cannot.
   */
  linkFrom(drag, nodeId, slot) {
    if (drag.rerouteInput == null) return this.editor.connect(nodeId, slot, drag.node.id, drag.slot);
    try {
      return this.editor.resourceReroute(drag.rerouteInput, nodeId, slot);
    } catch (error) {
      if (!(error instanceof RerouteSourceError)) throw error;
      toast(`Not connected: ${error.reason}`);
      return null;
    }
  }

  widgetLinked(node, rect) {
    return node.inputs.some((i) => i.widget && i.widget.name === rect.widget.name && i.link != null);
  }

  async clickWidget(node, rect, wx, event) {
    const { widget, index } = rect;
    const editor = this.editor;
    if (this.widgetLinked(node, rect)) return;
    const value = editor.widgetValue(node, index);
    const onLeft = wx < rect.x + ARROW_ZONE;
    const onRight = wx > rect.x + rect.w - ARROW_ZONE;
    if (widget.kind === 'int' || widget.kind === 'float') {
      if (onLeft || onRight) { editor.setWidgetValue(node, index, stepNumber(widget, value, onLeft ? -1 : 1)); return; }
      const typed = await openTextEditor(this.canvas.parentElement, this.screenRect(rect), value, { numeric: true });
      if (typed === null || typed.trim() === '' || Number.isNaN(Number(typed))) return;
      editor.setWidgetValue(node, index, clampNumber(widget, Number(typed)));
    } else if (widget.kind === 'combo') {
      const values = widget.options.values;
      if (onLeft || onRight) {
        const at = values.indexOf(value);
        const next = values[(Math.max(0, at) + (onLeft ? values.length - 1 : 1)) % values.length];
        if (next !== undefined) editor.setWidgetValue(node, index, next);
        return;
      }
      this.actions.comboMenu(values, event.clientX, event.clientY, (choice) => editor.setWidgetValue(node, index, choice));
    } else if (widget.kind === 'boolean') {
      editor.setWidgetValue(node, index, !value);
    } else if (widget.kind === 'string') {
      const typed = await openTextEditor(this.canvas.parentElement, this.screenRect(rect), value, { multiline: Boolean(widget.options.multiline) });
      if (typed !== null) editor.setWidgetValue(node, index, typed);
    } else if (widget.kind === 'upload') {
      this.actions.upload(node, widget);
    }
  }

  screenRect(rect) {
    const [x, y] = this.editor.view.toScreen(rect.x, rect.y);
    return { x, y, w: rect.w * this.editor.view.scale, h: rect.h * this.editor.view.scale };
  }

  centerOn([wx, wy]) {
    this.editor.view.centerOn(wx, wy, this.width, this.height);
    this.editor.markDirty();
  }

  onWheel(event) {
    event.preventDefault();
    const [sx, sy] = this.local(event);
    if (event.shiftKey) this.editor.view.panBy(-event.deltaY, 0);
    else this.editor.view.zoomAt(Math.exp(-event.deltaY * (event.ctrlKey ? 0.01 : 0.0015)), sx, sy);
    this.editor.markDirty();
    clearTimeout(this.viewSave);
    this.viewSave = setTimeout(() => this.editor.persistView(), 300);
  }

  async onDoubleClick(event) {
    const [sx, sy] = this.local(event);
    const [wx, wy] = this.editor.view.toWorld(sx, sy);
    const hit = hitTest(this.editor, this.currentBoxes(), wx, wy);
    if (hit && hit.node && (hit.kind === 'title' || hit.kind === 'node') && this.editor.enterSubgraph(hit.node)) return;
    if (hit && hit.node && hit.node.boundary) {
      // A subgraph input's or output's name is edited where it is written, as a node's title is.
      const row = hit.kind === 'input' || hit.kind === 'output' ? { slotKind: hit.kind, slot: hit.slot } : boundaryRowAt(hit.node, hit.box, wx, wy);
      if (row) this.actions.renameInterfaceSlot(hit.node, row.slotKind, row.slot);
      return;
    }
    if (hit && hit.kind === 'title') { this.actions.rename(hit.node); return; }
    if (hit && hit.kind === 'group') { this.actions.renameGroup(hit.group); return; }
    if (hit && hit.kind !== 'group-body') return;
    this.searchAt(event.clientX, event.clientY, '');
  }

  async searchAt(clientX, clientY, initial) {
    const r = this.canvas.getBoundingClientRect();
    const [wx, wy] = this.editor.view.toWorld(clientX - r.left, clientY - r.top);
    const chosen = await openSearch(this.editor.defs, clientX, clientY, { initial });
    if (chosen) this.editor.addNode(chosen, [wx, wy]);
  }

  onContextMenu(event) {
    const [sx, sy] = this.local(event);
    const [wx, wy] = this.editor.view.toWorld(sx, sy);
    const hit = hitTest(this.editor, this.currentBoxes(), wx, wy);
    if (hit && (hit.kind === 'title' || hit.kind === 'node' || hit.kind === 'widget') && !this.editor.selection.has(hit.node.id)) this.editor.select([hit.node.id]);
    this.actions.contextMenu(hit, [wx, wy], event.clientX, event.clientY);
  }

  /** Zoom and centre on the selection, or on everything when nothing is selected. */
  fit() {
    this.fitNodes(this.editor.selection.size ? this.editor.selectedNodes() : [...this.editor.graph.nodes.values()]);
  }

  /** The whole canvas is used, unless the minimap would cover a node: then the roomier band beside or above it. */
  fitNodes(nodes) {
    if (!nodes.length) return;
    const { view, showMinimap } = this.editor;
    const boxes = nodes.map((n) => nodeBounds(this.editor.layout(n)));
    const rect = enclosingRect(boxes);
    view.fit(rect, [0, 0, this.width, this.height]);
    const underMinimap = view.worldRect(minimapFrame(this.width, this.height));
    if (showMinimap && boxes.some((box) => rectsOverlap(box, underMinimap))) {
      const [above, beside] = besideMinimap(this.width, this.height);
      view.fit(rect, fitScale(rect, above) >= fitScale(rect, beside) ? above : beside);
    }
    this.editor.markDirty();
    this.editor.persistView();
  }

  /**
   * An opened graph keeps the view it was saved with, unless that view shows none of its nodes (a
   * file saved on a larger screen puts them all past this window's edge): then the graph is fitted.
   * A node counts as shown only when it reaches SHOWN_INSET pixels into the canvas, not by a sliver.
   */
  revealGraph() {
    const nodes = [...this.editor.graph.nodes.values()];
    const shown = this.editor.view.visibleRect(this.width, this.height, SHOWN_INSET);
    if (nodes.some((n) => rectsOverlap(nodeBounds(this.editor.layout(n)), shown))) return;
    this.fitNodes(nodes);
  }
}

export function isTyping(event) {
  const t = event.target;
  return t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable);
}
