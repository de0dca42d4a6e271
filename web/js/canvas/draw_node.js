/**
 * Drawing of one node: body, title, typed slots, widgets, image, resize handle, and the run state on
 * top of it (running outline and progress bar, error outline and message). At small zoom only the
 * boxes and titles are drawn: text is what costs most on a 2D canvas, and it is unreadable there anyway.
 */
import { MODE_BYPASS, MODE_NEVER } from '../graph_model.js';
import { typesCompatible } from '../node_defs.js';
import { THEME, typeColor } from './colors.js';
import { drawWidget } from './draw_widgets.js';
import { BADGE_W, LABEL_FONT, resizeHandle, TITLE_FONT, TITLE_H } from './layout.js';

export const DETAIL_SCALE = 0.45;

function slotDot(ctx, x, y, type, linked, dim) {
  ctx.globalAlpha = dim ? 0.2 : 1;
  ctx.fillStyle = typeColor(type);
  ctx.beginPath();
  ctx.arc(x, y, linked ? 5 : 4, 0, Math.PI * 2);
  if (linked) ctx.fill();
  else { ctx.strokeStyle = typeColor(type); ctx.lineWidth = 2; ctx.stroke(); }
  ctx.globalAlpha = 1;
}

function drawImage(editor, ctx, node, box) {
  const shown = editor.nodeImage(node);
  if (!shown || !box.image) return;
  let img = editor.imageCache.get(shown.url);
  if (!img) {
    img = new Image();
    img.onload = () => editor.markDirty();
    img.src = shown.url;
    editor.imageCache.set(shown.url, img);
  }
  const r = box.image;
  if (!img.complete || !img.naturalWidth) return;
  const s = Math.min(r.w / img.naturalWidth, r.h / img.naturalHeight);
  const w = img.naturalWidth * s;
  const h = img.naturalHeight * s;
  ctx.drawImage(img, r.x + (r.w - w) / 2, r.y + (r.h - h) / 2, w, h);
  if (shown.count > 1) {
    ctx.fillStyle = THEME.textDim;
    ctx.textAlign = 'right';
    ctx.fillText(`${shown.count} images`, r.x + r.w, r.y + r.h - 6);
  }
}

export function drawReroute(ctx, node, box, selected) {
  ctx.fillStyle = THEME.node;
  ctx.beginPath();
  ctx.roundRect(box.x, box.y, box.w, box.h, box.h / 2);
  ctx.fill();
  ctx.strokeStyle = selected ? THEME.selected : THEME.nodeBorder;
  ctx.lineWidth = selected ? 2 : 1;
  ctx.stroke();
  const type = node.outputs[0].type;
  slotDot(ctx, box.inputs[0][0], box.inputs[0][1], type, node.inputs[0].link != null, false);
  slotDot(ctx, box.outputs[0][0], box.outputs[0][1], type, node.outputs[0].links.length > 0, false);
}

/** A subgraph's input or output node: a faint box whose labels sit beside the dots, facing the inner nodes. */
function drawBoundary(ctx, node, box, s) {
  ctx.fillStyle = THEME.boundary;
  ctx.beginPath();
  ctx.roundRect(box.x, box.y, box.w, box.h, 8);
  ctx.fill();
  ctx.strokeStyle = s.selected ? THEME.selected : THEME.nodeBorder;
  ctx.lineWidth = s.selected ? 2 : 1;
  ctx.setLineDash([5, 4]);
  ctx.stroke();
  ctx.setLineDash([]);
  const input = node.boundary === 'input';
  const slots = input ? node.outputs : node.inputs;
  const dots = input ? box.outputs : box.inputs;
  ctx.font = LABEL_FONT;
  ctx.textBaseline = 'middle';
  ctx.textAlign = input ? 'right' : 'left';
  slots.forEach((slot, i) => {
    const [x, y] = dots[i];
    const linked = input ? slot.links.length > 0 : slot.link != null;
    const dim = s.dragType != null && (input ? (s.dragFromOutput || !typesCompatible(slot.type, s.dragType)) : (!s.dragFromOutput || !typesCompatible(s.dragType, slot.type)));
    // The empty slot takes a dropped link to make a new subgraph input or output (subgraph_interface.js).
    slotDot(ctx, x, y, slot.type, linked, dim);
    if (s.scale < DETAIL_SCALE) return;
    ctx.fillStyle = slot.empty ? THEME.textDim : THEME.text;
    ctx.fillText(slot.empty ? '+' : slot.label || slot.name || slot.type, input ? x - 12 : x + 12, y);
  });
}

/** Two overlapping squares at the title's end: this node holds a subgraph, double-click opens it. */
function drawSubgraphBadge(ctx, box, top) {
  const x = box.x + box.w - BADGE_W + 2;
  const y = top + TITLE_H / 2 - 6;
  ctx.strokeStyle = THEME.textDim;
  ctx.lineWidth = 1.5;
  ctx.strokeRect(x, y + 3, 9, 9);
  ctx.strokeRect(x + 4, y - 1, 9, 9);
}

/** `s`: {scale, selected, running, progress, error, dragType, dragFromOutput} for this frame. */
export function drawNode(editor, ctx, node, box, s) {
  if (node.type === 'Reroute') { drawReroute(ctx, node, box, s.selected); return; }
  if (node.boundary) { drawBoundary(ctx, node, box, s); return; }
  const def = editor.defs[node.type];
  const fullH = box.h + TITLE_H;
  const top = box.y - TITLE_H;
  ctx.globalAlpha = node.mode === MODE_NEVER ? THEME.muted : 1;
  ctx.fillStyle = node.bgcolor || (def && def.bgcolor) || THEME.node;
  ctx.beginPath();
  ctx.roundRect(box.x, top, box.w, box.collapsed ? TITLE_H : fullH, 6);
  ctx.fill();
  ctx.fillStyle = node.color || (def && def.color) || THEME.nodeTitle;
  ctx.beginPath();
  ctx.roundRect(box.x, top, box.w, TITLE_H, box.collapsed ? 6 : [6, 6, 0, 0]);
  ctx.fill();
  if (node.mode === MODE_BYPASS) {
    ctx.fillStyle = THEME.bypass;
    ctx.beginPath();
    ctx.roundRect(box.x, top, box.w, box.collapsed ? TITLE_H : fullH, 6);
    ctx.fill();
  }
  let outline = null;
  if (s.error) outline = [THEME.error, 3];
  else if (s.running) outline = [THEME.running, 3];
  else if (editor.isMissing(node)) outline = [THEME.error, 2];
  else if (s.selected) outline = [THEME.selected, 2];
  if (outline) {
    ctx.strokeStyle = outline[0];
    ctx.lineWidth = outline[1];
    ctx.beginPath();
    ctx.roundRect(box.x - 1, top - 1, box.w + 2, (box.collapsed ? TITLE_H : fullH) + 2, 7);
    ctx.stroke();
  } else {
    ctx.strokeStyle = THEME.nodeBorder;
    ctx.lineWidth = 1;
    ctx.stroke();
  }
  if (s.running && s.progress) {
    ctx.fillStyle = THEME.running;
    ctx.fillRect(box.x, top, box.w * Math.min(1, s.progress.value / Math.max(1, s.progress.max)), 4);
  }
  if (s.scale < DETAIL_SCALE) { ctx.globalAlpha = 1; return; }
  ctx.font = TITLE_FONT;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'left';
  ctx.fillStyle = THEME.text;
  ctx.fillText(editor.titleOf(node), box.x + 12, top + TITLE_H / 2);
  if (editor.isInstance(node)) drawSubgraphBadge(ctx, box, top);
  if (box.collapsed) { ctx.globalAlpha = 1; return; }
  ctx.font = LABEL_FONT;
  const widgetNames = new Set(box.widgets.map((r) => r.widget.name));
  node.inputs.forEach((input, i) => {
    const [x, y] = box.inputs[i];
    const dim = s.dragType != null && (!s.dragFromOutput || !typesCompatible(s.dragType, input.type));
    slotDot(ctx, x, y, input.type, input.link != null, dim);
    if (input.widget && widgetNames.has(input.widget.name)) return;
    ctx.textAlign = 'left';
    ctx.fillStyle = s.error && s.error.inputs.has(input.name) ? THEME.error : THEME.textDim;
    ctx.fillText(input.label || input.name || input.type, x + 12, y);
  });
  node.outputs.forEach((output, i) => {
    const [x, y] = box.outputs[i];
    const dim = s.dragType != null && (s.dragFromOutput || !typesCompatible(output.type, s.dragType));
    slotDot(ctx, x, y, output.type, output.links.length > 0, dim);
    ctx.textAlign = 'right';
    ctx.fillStyle = THEME.textDim;
    ctx.fillText(output.label || output.name || output.type, x - 12, y);
  });
  const linkedWidgets = new Set(node.inputs.filter((i) => i.widget && i.link != null).map((i) => i.widget.name));
  for (const rect of box.widgets) {
    drawWidget(ctx, rect, editor.widgetValue(node, rect.index), {
      linked: linkedWidgets.has(rect.widget.name), error: s.error && s.error.inputs.has(rect.widget.name) });
  }
  drawImage(editor, ctx, node, box);
  drawResizeHandle(ctx, box);
  ctx.globalAlpha = 1;
  if (s.error && s.error.message) drawErrorNote(ctx, box, s.error.message);
}

/** Two short diagonal strokes in the corner: the usual sign that it can be dragged, faint enough not to distract. */
function drawResizeHandle(ctx, box) {
  const [hx, hy, size] = resizeHandle(box);
  const right = hx + size - 3;
  const bottom = hy + size - 3;
  const alpha = ctx.globalAlpha;
  ctx.globalAlpha = alpha * 0.6;
  ctx.strokeStyle = THEME.textDim;
  ctx.lineWidth = 1.25;
  ctx.beginPath();
  for (const d of [8, 4]) { ctx.moveTo(right - d, bottom); ctx.lineTo(right, bottom - d); }
  ctx.stroke();
  ctx.globalAlpha = alpha;
}

function drawErrorNote(ctx, box, message) {
  ctx.font = '12px sans-serif';
  const lines = message.split('\n').slice(0, 4);
  const y = box.y + box.h + 6;
  ctx.fillStyle = 'rgba(120, 20, 20, 0.92)';
  ctx.beginPath();
  ctx.roundRect(box.x, y, Math.max(box.w, 260), 8 + lines.length * 16, 4);
  ctx.fill();
  ctx.fillStyle = '#fff';
  ctx.textAlign = 'left';
  ctx.textBaseline = 'top';
  lines.forEach((line, i) => ctx.fillText(line.slice(0, 80), box.x + 6, y + 5 + i * 16));
  ctx.textBaseline = 'middle';
}
