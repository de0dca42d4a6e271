/**
 * What is under a world point, topmost first: slots, then the resize handle, title, widgets and body,
 * then links and groups. Slots win over the handle where they touch, as connecting is the commoner act.
 */
import { linkMidpoint } from './render.js';
import { nodeBounds, pointInRect, resizeHandle } from './layout.js';

const SLOT_RADIUS = 10;

export function hitTest(editor, boxes, wx, wy) {
  const nodes = [...editor.graph.nodes.values()].reverse();
  for (const node of nodes) {
    const box = boxes.get(node.id);
    const bounds = nodeBounds(box);
    if (!pointInRect(wx, wy, [bounds[0] - SLOT_RADIUS, bounds[1], bounds[2] + 2 * SLOT_RADIUS, bounds[3]])) continue;
    if (!box.collapsed) {
      for (let i = 0; i < box.outputs.length; i++) {
        if (Math.hypot(wx - box.outputs[i][0], wy - box.outputs[i][1]) < SLOT_RADIUS) return { kind: 'output', node, slot: i, box };
      }
      for (let i = 0; i < box.inputs.length; i++) {
        if (Math.hypot(wx - box.inputs[i][0], wy - box.inputs[i][1]) < SLOT_RADIUS) return { kind: 'input', node, slot: i, box };
      }
    }
    if (!pointInRect(wx, wy, bounds)) continue;
    const handle = resizeHandle(box);
    if (handle && pointInRect(wx, wy, handle)) return { kind: 'resize', node, box };
    if (box.title && wy < box.y) return { kind: 'title', node, box };
    const rect = box.widgets.find((r) => pointInRect(wx, wy, [r.x, r.y, r.w, r.h]));
    if (rect) return { kind: 'widget', node, rect, box };
    return { kind: 'node', node, box };
  }
  for (const link of editor.graph.links.values()) {
    const from = boxes.get(link.origin_id);
    const to = boxes.get(link.target_id);
    const a = from && from.outputs[link.origin_slot];
    const b = to && to.inputs[link.target_slot];
    if (!a || !b) continue;
    const [mx, my] = linkMidpoint(a, b);
    if (Math.hypot(wx - mx, wy - my) < 8) return { kind: 'link', link };
  }
  for (const group of [...editor.graph.groups].reverse()) {
    const [x, y, w] = group.bounding;
    if (pointInRect(wx, wy, [x, y, w, (group.font_size || 24) + 12])) return { kind: 'group', group };
  }
  for (const group of [...editor.graph.groups].reverse()) {
    if (pointInRect(wx, wy, group.bounding)) return { kind: 'group-body', group };
  }
  return null;
}
