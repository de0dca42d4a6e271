/**
 * The minimap in the bottom-right corner: every node as a small box, the visible area as a frame.
 * Clicking or dragging in it centres the view there (see minimapToWorld).
 */
import { THEME } from './colors.js';
import { nodeBounds } from './layout.js';

export const MINIMAP = { w: 200, h: 140, margin: 12 };

export function minimapFrame(width, height) {
  return [width - MINIMAP.w - MINIMAP.margin, height - MINIMAP.h - MINIMAP.margin, MINIMAP.w, MINIMAP.h];
}

/** The two largest screen rectangles the minimap leaves free: the band above it and the band beside it. */
export function besideMinimap(width, height) {
  const [fx, fy] = minimapFrame(width, height);
  return [[0, 0, width, fy], [0, 0, fx, height]];
}

/** The world rectangle the minimap shows: every node plus the current view. */
function worldExtent(editor, boxes, width, height) {
  const visible = editor.view.visibleRect(width, height);
  let [x0, y0, x1, y1] = [visible[0], visible[1], visible[0] + visible[2], visible[1] + visible[3]];
  for (const box of boxes.values()) {
    const [x, y, w, h] = nodeBounds(box);
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  const scale = Math.min(MINIMAP.w / (x1 - x0), MINIMAP.h / (y1 - y0));
  return { x0, y0, scale };
}

export function drawMinimap(ctx, editor, boxes, width, height) {
  if (!editor.showMinimap) return;
  const [fx, fy, fw, fh] = minimapFrame(width, height);
  const { x0, y0, scale } = worldExtent(editor, boxes, width, height);
  editor.minimapExtent = { x0, y0, scale, frame: [fx, fy, fw, fh] };
  ctx.fillStyle = 'rgba(20, 22, 26, 0.85)';
  ctx.fillRect(fx, fy, fw, fh);
  ctx.strokeStyle = '#3a3e45';
  ctx.lineWidth = 1;
  ctx.strokeRect(fx + 0.5, fy + 0.5, fw - 1, fh - 1);
  ctx.fillStyle = '#6b7380';
  for (const box of boxes.values()) {
    const [x, y, w, h] = nodeBounds(box);
    ctx.fillRect(fx + (x - x0) * scale, fy + (y - y0) * scale, Math.max(1, w * scale), Math.max(1, h * scale));
  }
  const [vx, vy, vw, vh] = editor.view.visibleRect(width, height);
  ctx.strokeStyle = THEME.selected;
  ctx.strokeRect(fx + (vx - x0) * scale, fy + (vy - y0) * scale, vw * scale, vh * scale);
}

/** Screen point inside the minimap → world point, or null when outside it. */
export function minimapToWorld(editor, sx, sy) {
  const extent = editor.minimapExtent;
  if (!editor.showMinimap || !extent) return null;
  const [fx, fy, fw, fh] = extent.frame;
  if (sx < fx || sy < fy || sx > fx + fw || sy > fy + fh) return null;
  return [extent.x0 + (sx - fx) / extent.scale, extent.y0 + (sy - fy) / extent.scale];
}
