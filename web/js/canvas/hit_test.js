/**
 * What is under a world point, topmost first: slots, then the resize handle, title, widgets and body,
 * then reroutes (their dot, then their output slot), links and groups. Slots win over the handle where
 * they touch, as connecting is the commoner act.
 */
import { BADGE_W, nodeBounds, pointInRect, resizeHandle, SLOT_H } from './layout.js';
import { linkMarker, linkPoints } from './link_route.js';
import { REROUTE_RADIUS, REROUTE_SLOT_OFFSET, REROUTE_SLOT_RADIUS } from './render.js';
import { rerouteSource } from '../reroutes.js';

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
    if (box.title && wy < box.y) {
      // The sign at an instance's title end opens it, as a click on ComfyUI's does.
      const badge = editor.isInstance(node) && wx > box.x + box.w - BADGE_W;
      return { kind: 'title', node, box, badge };
    }
    const rect = box.widgets.find((r) => pointInRect(wx, wy, [r.x, r.y, r.w, r.h]));
    if (rect) return { kind: 'widget', node, rect, box };
    return { kind: 'node', node, box };
  }
  const reroute = rerouteAt(editor.graph, wx, wy);
  if (reroute) return reroute;
  for (const link of editor.graph.links.values()) {
    const points = linkPoints(editor.graph, link, boxes);
    if (!points) continue;
    const [mx, my] = linkMarker(editor.graph, link, points).at;
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

/**
 * A reroute's dot, else its output slot to the right or its input slot to the left (generous targets,
 * as the slots only show under the pointer); the output slot counts only where the reroute carries
 * an output to drag a link from.
 */
export function rerouteAt(graph, wx, wy) {
  for (const reroute of graph.reroutes.values()) {
    if (Math.hypot(wx - reroute.pos[0], wy - reroute.pos[1]) <= REROUTE_RADIUS + 2) return { kind: 'reroute', reroute };
  }
  const near = (reroute, side) => Math.hypot(wx - reroute.pos[0] - side * REROUTE_SLOT_OFFSET, wy - reroute.pos[1]) <= 2 * REROUTE_SLOT_RADIUS;
  for (const reroute of graph.reroutes.values()) {
    if (near(reroute, 1) && rerouteSource(graph, reroute.id)) return { kind: 'reroute-output', reroute };
    if (near(reroute, -1)) return { kind: 'reroute-input', reroute };
  }
  return null;
}

/**
 * The slot whose row of a subgraph boundary node is at a world point, its label included:
 * `{slotKind, slot}` (the input node shows the subgraph's inputs as its outputs), or null.
 */
export function boundaryRowAt(node, box, wx, wy) {
  if (!node.boundary || !pointInRect(wx, wy, [box.x, box.y, box.w, box.h])) return null;
  const slotKind = node.boundary === 'input' ? 'output' : 'input';
  const dots = slotKind === 'output' ? box.outputs : box.inputs;
  const slot = dots.findIndex(([, y]) => Math.abs(wy - y) <= SLOT_H / 2);
  return slot < 0 ? null : { slotKind, slot };
}
