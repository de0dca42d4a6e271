/**
 * One frame of the canvas: grid, groups, links, nodes, the link being dragged, the selection rectangle
 * and the minimap. Only what intersects the visible rectangle is drawn, which keeps 300-node graphs
 * smooth: a frame's cost follows what is on screen, not the graph's size.
 */
import { THEME, typeColor } from './colors.js';
import { drawNode } from './draw_node.js';
import { floatingLinkPoints, linkMarker, linkPoints, stretchPath } from './link_route.js';
import { isFloating, rerouteLink, rerouteSource } from '../reroutes.js';
import { nodeBounds, rectsOverlap } from './layout.js';
import { drawMinimap } from './minimap.js';

function drawGrid(ctx, view, width, height) {
  ctx.fillStyle = THEME.background;
  ctx.fillRect(0, 0, width, height);
  if (view.scale < 0.5) return;
  const step = 20 * view.scale;
  const ox = (view.offset[0] * view.scale) % step;
  const oy = (view.offset[1] * view.scale) % step;
  ctx.strokeStyle = THEME.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let x = ox; x < width; x += step) { ctx.moveTo(Math.round(x) + 0.5, 0); ctx.lineTo(Math.round(x) + 0.5, height); }
  for (let y = oy; y < height; y += step) { ctx.moveTo(0, Math.round(y) + 0.5); ctx.lineTo(width, Math.round(y) + 0.5); }
  ctx.stroke();
}

function drawGroups(ctx, editor, visible) {
  for (const group of editor.graph.groups) {
    const [x, y, w, h] = group.bounding;
    if (!rectsOverlap(visible, group.bounding)) continue;
    ctx.globalAlpha = 0.22;
    ctx.fillStyle = group.color || THEME.group;
    ctx.fillRect(x, y, w, h);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = group.color || THEME.group;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(x, y, w, h);
    const size = group.font_size || 24;
    ctx.font = `${size}px sans-serif`;
    ctx.fillStyle = THEME.text;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    ctx.fillText(group.title || 'Group', x + 8, y + 6);
  }
}

/** Strokes the curve through `points` when it may be on screen; says whether it did. */
function strokeRoute(ctx, points, visible) {
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const bbox = [Math.min(...xs) - 60, Math.min(...ys) - 10, Math.max(...xs) - Math.min(...xs) + 120, Math.max(...ys) - Math.min(...ys) + 20];
  if (!rectsOverlap(bbox, visible)) return false;
  ctx.beginPath();
  for (let i = 1; i < points.length; i++) stretchPath(ctx, points[i - 1], points[i]);
  ctx.stroke();
  return true;
}

function drawLinks(ctx, editor, boxes, visible) {
  ctx.lineWidth = 3;
  for (const link of editor.graph.links.values()) {
    const points = linkPoints(editor.graph, link, boxes);
    if (!points) continue;
    ctx.strokeStyle = typeColor(link.type);
    if (!strokeRoute(ctx, points, visible)) continue;
    if (editor.view.scale >= 0.6) {
      const [mx, my] = linkMarker(editor.graph, link, points).at;
      ctx.fillStyle = typeColor(link.type);
      ctx.beginPath();
      ctx.arc(mx, my, 4, 0, Math.PI * 2);
      ctx.fill();
    }
  }
}

/** Floating links (reroutes.js): dimmed and dashed, from the end they kept to their last reroute. */
function drawFloatingLinks(ctx, editor, boxes, visible) {
  ctx.lineWidth = 3;
  ctx.globalAlpha = FLOATING_ALPHA;
  ctx.setLineDash([10, 8]);
  for (const link of editor.graph.floatingLinks.values()) {
    const points = floatingLinkPoints(editor.graph, link, boxes);
    if (!points) continue;
    ctx.strokeStyle = typeColor(link.type);
    strokeRoute(ctx, points, visible);
  }
  ctx.setLineDash([]);
  ctx.globalAlpha = 1;
}

export const REROUTE_RADIUS = 7;
/** A reroute's output slot: shown beside it under the pointer; a link is dragged out of it. */
export const REROUTE_SLOT_OFFSET = 17;
export const REROUTE_SLOT_RADIUS = 5;
const FLOATING_ALPHA = 0.45;

/**
 * Native reroutes: a dot in the colour of what passes through, ringed when selected, dimmed when only
 * floating links pass. The one under the pointer shows its input slot (left) and, where it carries an
 * output, its output slot (right); the slot pointed at is filled.
 */
function drawReroutes(ctx, editor, visible, hover) {
  const { graph } = editor;
  for (const reroute of graph.reroutes.values()) {
    const [x, y] = reroute.pos;
    if (!rectsOverlap([x - 10, y - 10, 20 + REROUTE_SLOT_OFFSET, 20], visible)) continue;
    const link = rerouteLink(graph, reroute);
    const color = typeColor(link ? link.type : '*');
    ctx.globalAlpha = isFloating(reroute) ? FLOATING_ALPHA : 1;
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(x, y, REROUTE_RADIUS, 0, Math.PI * 2);
    ctx.fill();
    const selected = editor.selectedReroutes.has(reroute.id);
    // A selected floating reroute's ring is not dimmed: what is selected must read as such.
    if (selected) ctx.globalAlpha = 1;
    ctx.strokeStyle = selected ? THEME.reroute : THEME.nodeBorder;
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.globalAlpha = 1;
    if (hover && hover.id === reroute.id) {
      if (rerouteSource(graph, reroute.id)) drawRerouteSlot(ctx, x + REROUTE_SLOT_OFFSET, y, color, hover.slot === 'output');
      drawRerouteSlot(ctx, x - REROUTE_SLOT_OFFSET, y, color, hover.slot === 'input');
    }
  }
}

function drawRerouteSlot(ctx, x, y, color, pointed) {
  ctx.beginPath();
  ctx.arc(x, y, REROUTE_SLOT_RADIUS, 0, Math.PI * 2);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  if (pointed) { ctx.fillStyle = color; ctx.fill(); }
  ctx.stroke();
}

/** Layout of every node (links need both ends even when a node is off screen). */
export function layoutAll(editor) {
  const boxes = new Map();
  for (const node of editor.graph.nodes.values()) boxes.set(node.id, editor.layout(node));
  return boxes;
}

export function renderFrame(ctx, editor, width, height, overlay) {
  const { view, execution } = editor;
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  drawGrid(ctx, view, width, height);
  ctx.setTransform(view.scale * devicePixelRatio, 0, 0, view.scale * devicePixelRatio,
    view.offset[0] * view.scale * devicePixelRatio, view.offset[1] * view.scale * devicePixelRatio);
  const visible = view.visibleRect(width, height);
  const boxes = layoutAll(editor);
  drawGroups(ctx, editor, visible);
  drawLinks(ctx, editor, boxes, visible);
  drawFloatingLinks(ctx, editor, boxes, visible);
  drawReroutes(ctx, editor, visible, overlay.reroute);
  const drag = overlay.link;
  for (const node of editor.graph.nodes.values()) {
    const box = boxes.get(node.id);
    if (!rectsOverlap(nodeBounds(box), [visible[0], visible[1] - 80, visible[2], visible[3] + 160])) continue;
    const id = editor.apiId(node);
    // An instance runs while any node inside it does: their prompt ids start with the instance's.
    const running = execution.running === id || (execution.running != null && execution.running.startsWith(`${id}:`));
    drawNode(editor, ctx, node, box, {
      scale: view.scale, selected: editor.selection.has(node.id), running,
      progress: execution.progress && execution.progress.node === id ? execution.progress : null,
      error: execution.errors.get(id), dragType: drag ? drag.type : null, dragFromOutput: drag ? drag.fromOutput : false,
    });
  }
  if (drag) {
    ctx.strokeStyle = typeColor(drag.type);
    ctx.lineWidth = 3;
    ctx.beginPath();
    if (drag.fromOutput) stretchPath(ctx, drag.start, drag.end); else stretchPath(ctx, drag.end, drag.start);
    ctx.stroke();
  }
  if (overlay.rubber) {
    const [x, y, w, h] = overlay.rubber;
    ctx.fillStyle = 'rgba(120, 160, 255, 0.12)';
    ctx.fillRect(x, y, w, h);
    ctx.strokeStyle = 'rgba(120, 160, 255, 0.8)';
    ctx.lineWidth = 1 / view.scale;
    ctx.strokeRect(x, y, w, h);
  }
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  drawMinimap(ctx, editor, boxes, width, height);
  return boxes;
}
