/**
 * Node geometry, as litegraph lays it out so that positions and sizes in ComfyUI files land where
 * they did there: `pos` is the top-left of the body, the title bar sits above it, and `size` is the
 * body's size. Slot rows come first (inputs left, outputs right), then one row per widget, then an
 * image area when there is one. A widget that was turned into an input keeps its row and gets a
 * socket at its left edge. `size` is what a file or a resize drag asked for; the content sets the
 * minimum, and height beyond it goes to the image, or else is shared by the multiline text boxes
 * (and by widget types that ask for it, like a note's text).
 * The box's `size` is what the node keeps: clamped to the content but not to the image, which comes
 * and goes with runs (a sampler's preview must not leave the node tall and empty after the run).
 */
import { customWidgetType } from '../widgets/custom_widgets.js';
import { textWidth } from './text_width.js';

export const TITLE_H = 30;
export const SLOT_H = 20;
export const WIDGET_H = 22;
export const MULTILINE_H = 66;
export const IMAGE_H = 200;
export const REROUTE_SIZE = [75, 26];
export const MIN_WIDTH = 160;
export const RESIZE_HANDLE = 12;
export const TITLE_FONT = 'bold 13px sans-serif';
export const LABEL_FONT = '12px sans-serif';
/** Room in a subgraph instance's title bar for the sign that it can be opened. */
export const BADGE_W = 22;

const isMultiline = (widget) => !widget.custom && widget.kind === 'string' && Boolean(widget.options.multiline);
const grows = (widget) => (widget.custom ? customWidgetType(widget.custom).grow : isMultiline(widget));

/** An extension's widget asks for its own height; a multiline text box is taller than a row. */
function widgetHeight(widget) {
  if (widget.custom) return customWidgetType(widget.custom).height ?? WIDGET_H;
  return isMultiline(widget) ? MULTILINE_H : WIDGET_H;
}

/** Narrowest body where the title fits and no row's input label runs into its output label. */
function minimumWidth(title, socketInputs, outputs) {
  const label = (slot) => (slot ? textWidth(LABEL_FONT, slot.name || slot.type) : 0);
  let widest = textWidth(TITLE_FONT, title) + 24;
  for (let row = 0; row < Math.max(socketInputs.length, outputs.length); row++) {
    widest = Math.max(widest, label(socketInputs[row]) + label(outputs[row]) + 40);
  }
  return Math.max(MIN_WIDTH, Math.ceil(widest));
}

/** Body height that fits the slot rows, the widgets and the image: the least a node may be resized to. */
function minimumHeight(rows, widgetHeights, hasImage) {
  const widgets = widgetHeights.reduce((sum, h) => sum + h + 4, 0);
  return Math.max(rows * SLOT_H + 6 + widgets + (hasImage ? IMAGE_H + 6 : 0) + 4, SLOT_H + 6);
}

/**
 * A subgraph's input or output node (subgraphs.js): a titleless box of labelled slots, its dots on the
 * side facing the inner nodes; its stored bounding is the box.
 */
function layoutBoundary(node) {
  const [x, y] = node.pos;
  const slots = node.boundary === 'input' ? node.outputs : node.inputs;
  const widest = Math.max(0, ...slots.map((s) => textWidth(LABEL_FONT, s.name || s.type)));
  const w = Math.max(node.size[0], Math.ceil(widest) + 40, 100);
  const h = Math.max(node.size[1], slots.length * SLOT_H + 12, 40);
  const row = (i) => [y + 6 + i * SLOT_H + SLOT_H / 2];
  return { x, y, w, h, title: false, boundary: node.boundary, widgets: [], image: null, size: [w, h],
    inputs: node.inputs.map((_, i) => [x, ...row(i)]), outputs: node.outputs.map((_, i) => [x + w, ...row(i)]) };
}

/**
 * `widgets` are the node's widget specs (empty for unknown types), `hasImage` reserves the image
 * area, `title` is the title bar's text (it sets the minimum width), `badge` keeps room for a sign
 * at the title's end.
 */
export function layoutNode(node, { widgets, hasImage, title, badge = false }) {
  const [x, y] = node.pos;
  if (node.boundary) return layoutBoundary(node);
  if (node.type === 'Reroute') {
    const [w, h] = REROUTE_SIZE;
    return { x, y, w, h, title: false, inputs: [[x, y + h / 2]], outputs: [[x + w, y + h / 2]], widgets: [], image: null };
  }
  if (node.flags && node.flags.collapsed) {
    const cy = y - TITLE_H / 2;
    return { x, y, w: 150, h: 0, title: true, collapsed: true,
      inputs: node.inputs.map(() => [x, cy]), outputs: node.outputs.map(() => [x + 150, cy]), widgets: [], image: null };
  }
  const widgetNames = new Set(widgets.map((wd) => wd.name));
  const socketInputs = node.inputs.map((input, i) => [input, i]).filter(([input]) => !(input.widget && widgetNames.has(input.widget.name)));
  const rows = Math.max(socketInputs.length, node.outputs.length);
  const w = Math.max(minimumWidth(title, socketInputs.map(([input]) => input), node.outputs) + (badge ? BADGE_W : 0), node.size[0]);
  const heights = widgets.map(widgetHeight);
  const least = minimumHeight(rows, heights, hasImage);
  const h = Math.max(least, node.size[1]);
  const growing = widgets.filter(grows).length;
  const growth = !hasImage && growing ? (h - least) / growing : 0;
  const inputs = new Array(node.inputs.length);
  socketInputs.forEach(([, index], row) => { inputs[index] = [x, y + row * SLOT_H + SLOT_H / 2 + 2]; });
  const outputs = node.outputs.map((_, row) => [x + w, y + row * SLOT_H + SLOT_H / 2 + 2]);
  let cursor = y + rows * SLOT_H + 6;
  const widgetRects = widgets.map((widget, index) => {
    const rect = { index, widget, x: x + 10, y: cursor, w: w - 20, h: heights[index] + (grows(widget) ? growth : 0) };
    cursor += rect.h + 4;
    return rect;
  });
  node.inputs.forEach((input, i) => {
    if (inputs[i]) return;
    const rect = widgetRects.find((r) => r.widget.name === input.widget.name);
    inputs[i] = [x, rect.y + rect.h / 2];
  });
  const image = hasImage ? { x: x + 6, y: cursor + 2, w: w - 12, h: IMAGE_H + h - least } : null;
  const size = [w, Math.max(minimumHeight(rows, heights, false), node.size[1])];
  return { x, y, w, h, title: true, inputs, outputs, widgets: widgetRects, image, size };
}

/** The grip square in a node's bottom-right corner; collapsed nodes and reroutes have none. */
export function resizeHandle(box) {
  if (!box.title || box.collapsed) return null;
  return [box.x + box.w - RESIZE_HANDLE, box.y + box.h - RESIZE_HANDLE, RESIZE_HANDLE, RESIZE_HANDLE];
}

/** The node's full rectangle including its title bar, for hit tests, culling and groups. */
export function nodeBounds(box) {
  const top = box.title ? box.y - TITLE_H : box.y;
  return [box.x, top, box.w, box.h + (box.title ? TITLE_H : 0)];
}

/** The smallest rectangle [x, y, w, h] holding every one of `rects` (at least one). */
export function enclosingRect(rects) {
  const x = Math.min(...rects.map((r) => r[0]));
  const y = Math.min(...rects.map((r) => r[1]));
  return [x, y, Math.max(...rects.map((r) => r[0] + r[2])) - x, Math.max(...rects.map((r) => r[1] + r[3])) - y];
}

export function rectsOverlap(a, b) {
  return a[0] < b[0] + b[2] && a[0] + a[2] > b[0] && a[1] < b[1] + b[3] && a[1] + a[3] > b[1];
}

export function pointInRect(px, py, r) {
  return px >= r[0] && py >= r[1] && px <= r[0] + r[2] && py <= r[1] + r[3];
}
