/**
 * Where a link runs: from its origin's output dot through its native reroutes (graph_model.js) to its
 * target's input dot, as one curve per stretch. Its marker (the dot a click on a link hits) sits
 * in the middle of the middle stretch, which is also where a new reroute on that link goes.
 */

/** The points a link passes, or null when an end is not laid out. */
export function linkPoints(graph, link, boxes) {
  const from = boxes.get(link.origin_id);
  const to = boxes.get(link.target_id);
  const a = from && from.outputs[link.origin_slot];
  const b = to && to.inputs[link.target_slot];
  if (!a || !b) return null;
  if (link.parentId == null) return [a, b];
  return [a, ...graph.rerouteChain(link).map((r) => r.pos), b];
}

/**
 * The points a floating link passes (reroutes.js): from the end it kept through its reroutes, or null
 * when that end is not laid out.
 */
export function floatingLinkPoints(graph, link, boxes) {
  const chain = graph.rerouteChain(link).map((r) => r.pos);
  if (!chain.length) return null;
  if (link.origin_id !== -1) {
    const from = boxes.get(link.origin_id);
    const a = from && from.outputs[link.origin_slot];
    return a ? [a, ...chain] : null;
  }
  const to = boxes.get(link.target_id);
  const b = to && to.inputs[link.target_slot];
  return b ? [...chain, b] : null;
}

/** Links leave and enter horizontally, reroutes included, as in ComfyUI's splines. */
export function stretchPath(ctx, a, b) {
  const dx = Math.max(40, Math.abs(b[0] - a[0]) * 0.5);
  ctx.moveTo(a[0], a[1]);
  ctx.bezierCurveTo(a[0] + dx, a[1], b[0] - dx, b[1], b[0], b[1]);
}

export function stretchMidpoint(a, b) {
  const dx = Math.max(40, Math.abs(b[0] - a[0]) * 0.5);
  // The cubic at t = 0.5: (p0 + 3 p1 + 3 p2 + p3) / 8.
  return [(a[0] + 3 * (a[0] + dx) + 3 * (b[0] - dx) + b[0]) / 8, (a[1] + 3 * a[1] + 3 * b[1] + b[1]) / 8];
}

/** The marker's position, and the reroute before the middle stretch (null: the origin). */
export function linkMarker(graph, link, points) {
  const stretch = Math.floor((points.length - 1) / 2);
  const chain = stretch ? graph.rerouteChain(link) : [];
  return { at: stretchMidpoint(points[stretch], points[stretch + 1]), after: stretch ? chain[stretch - 1].id : null };
}
