/**
 * Node geometry, as litegraph lays it out so that positions in ComfyUI files land where they did
 * there: `pos` is the top-left of the body and the title bar sits above it. Slot rows come first
 * (inputs left, outputs right), then one row per widget, then an image area when there is one.
 * A widget that was turned into an input keeps its row and gets a socket at its left edge.
 */
import { customWidgetType } from '../widgets/custom_widgets.js';

export const TITLE_H = 30;
export const SLOT_H = 20;
export const WIDGET_H = 22;
export const MULTILINE_H = 66;
export const IMAGE_H = 200;
export const REROUTE_SIZE = [75, 26];
export const MIN_WIDTH = 160;

/** An extension's widget asks for its own height; a multiline text box is taller than a row. */
function widgetHeight(widget) {
  if (widget.custom) return customWidgetType(widget.custom).height ?? WIDGET_H;
  return widget.kind === 'string' && widget.options.multiline ? MULTILINE_H : WIDGET_H;
}

/** `widgets` are the node's widget specs (empty for unknown types); `hasImage` reserves the image area. */
export function layoutNode(node, widgets, hasImage) {
  const [x, y] = node.pos;
  if (node.type === 'Reroute') {
    const [w, h] = REROUTE_SIZE;
    return { x, y, w, h, title: false, inputs: [[x, y + h / 2]], outputs: [[x + w, y + h / 2]], widgets: [], image: null };
  }
  const w = Math.max(MIN_WIDTH, node.size[0]);
  if (node.flags && node.flags.collapsed) {
    const cy = y - TITLE_H / 2;
    return { x, y, w: 150, h: 0, title: true, collapsed: true,
      inputs: node.inputs.map(() => [x, cy]), outputs: node.outputs.map(() => [x + 150, cy]), widgets: [], image: null };
  }
  const widgetNames = new Set(widgets.map((wd) => wd.name));
  const socketInputs = node.inputs.map((input, i) => [input, i]).filter(([input]) => !(input.widget && widgetNames.has(input.widget.name)));
  const rows = Math.max(socketInputs.length, node.outputs.length);
  const inputs = new Array(node.inputs.length);
  socketInputs.forEach(([, index], row) => { inputs[index] = [x, y + row * SLOT_H + SLOT_H / 2 + 2]; });
  const outputs = node.outputs.map((_, row) => [x + w, y + row * SLOT_H + SLOT_H / 2 + 2]);
  let cursor = y + rows * SLOT_H + 6;
  const widgetRects = widgets.map((widget, index) => {
    const h = widgetHeight(widget);
    const rect = { index, widget, x: x + 10, y: cursor, w: w - 20, h };
    cursor += h + 4;
    return rect;
  });
  node.inputs.forEach((input, i) => {
    if (inputs[i]) return;
    const rect = widgetRects.find((r) => r.widget.name === input.widget.name);
    inputs[i] = [x, rect.y + rect.h / 2];
  });
  let image = null;
  if (hasImage) {
    image = { x: x + 6, y: cursor + 2, w: w - 12, h: IMAGE_H };
    cursor += IMAGE_H + 6;
  }
  const h = Math.max(cursor - y + 4, SLOT_H + 6);
  return { x, y, w, h, title: true, inputs, outputs, widgets: widgetRects, image };
}

/** The node's full rectangle including its title bar, for hit tests, culling and groups. */
export function nodeBounds(box) {
  const top = box.title ? box.y - TITLE_H : box.y;
  return [box.x, top, box.w, box.h + (box.title ? TITLE_H : 0)];
}

export function rectsOverlap(a, b) {
  return a[0] < b[0] + b[2] && a[0] + a[2] > b[0] && a[1] < b[1] + b[3] && a[1] + a[3] > b[1];
}

export function pointInRect(px, py, r) {
  return px >= r[0] && py >= r[1] && px <= r[0] + r[2] && py <= r[1] + r[3];
}
