/**
 * The links of native reroutes (graph_model.js keeps the reroutes themselves): which output a reroute
 * carries, new links drawn out of a reroute, and ComfyUI's floating links (docs/compatibility.md §C.5.3).
 * A floating link is what is left of a link through reroutes once one of its ends is gone: it keeps
 * the reroutes on screen, still tied to the end that remains. Files store them in `floatingLinks`
 * (top level, and inside subgraph definitions), links with the lost end written as -1 and `parentId`
 * naming the reroute they stop at; that reroute is marked `floating: {slotType}`. Floating links
 * have ids of their own, apart from the links'. They never run. Plain data, no drawing.
 */

/** The end a floating link lost: its target ('output' side kept) or its origin ('input' side kept). */
export const LOST = -1;

const clone = (value) => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));

export const keepsOutput = (link) => link.target_id === LOST && link.target_slot === LOST;

function floatingThrough(graph, rerouteId) {
  return [...graph.floatingLinks.values()].filter((f) => graph.rerouteChain(f).some((r) => r.id === rerouteId));
}

/**
 * The link a reroute carries, live or floating: the one whose origin a new link drawn out of it
 * starts from (null when only floating links that lost their origin pass there).
 */
export function rerouteSource(graph, rerouteId) {
  const reroute = graph.reroutes.get(rerouteId);
  if (!reroute) return null;
  const live = reroute.linkIds.map((id) => graph.links.get(id)).find(Boolean);
  if (live) return live;
  return floatingThrough(graph, rerouteId).find((f) => f.origin_id !== LOST && graph.nodes.has(f.origin_id)) || null;
}

/** Any link through the reroute, for its colour. */
export function rerouteLink(graph, reroute) {
  return graph.links.get(reroute.linkIds[0]) || floatingThrough(graph, reroute.id)[0] || null;
}

/** A reroute only floating links pass through: drawn dimmed. */
export const isFloating = (reroute) => !reroute.linkIds.length;

/**
 * `link` is being removed with its target side gone: if the reroute it stops at carries nothing else,
 * a floating link from its origin to that reroute keeps the route (ComfyUI does the same, one floating
 * link per such reroute).
 */
export function floatRoute(graph, link) {
  const chain = graph.rerouteChain(link);
  const last = chain.at(-1);
  if (!last || last.linkIds.some((id) => id !== link.id) || floatingThrough(graph, last.id).length) return;
  const id = Math.max(graph.lastFloatingLinkId, ...graph.floatingLinks.keys()) + 1;
  graph.lastFloatingLinkId = id;
  graph.floatingLinks.set(id, { id, origin_id: link.origin_id, origin_slot: link.origin_slot, target_id: LOST,
    target_slot: LOST, type: link.type, parentId: last.id });
}

/** Reroutes no link, live or floating, passes through any more have nothing to draw. */
export function dropUnusedReroutes(graph) {
  const used = new Set();
  for (const f of graph.floatingLinks.values()) for (const r of graph.rerouteChain(f)) used.add(r.id);
  for (const [id, reroute] of graph.reroutes) if (!reroute.linkIds.length && !used.has(id)) graph.reroutes.delete(id);
}

/** The reroute a floating link stops at says so, as ComfyUI marks it; no other reroute does. */
export function markFloatingEnds(graph) {
  const ends = new Map([...graph.floatingLinks.values()].map((f) => [f.parentId, keepsOutput(f) ? 'output' : 'input']));
  for (const reroute of graph.reroutes.values()) {
    if (ends.has(reroute.id)) reroute.floating = { slotType: ends.get(reroute.id) };
    else delete reroute.floating;
  }
}

/** A node is gone: floating links tied to it go, and the reroutes only they kept. */
export function dropFloatingLinksOf(graph, nodeId) {
  for (const [id, f] of graph.floatingLinks) if (f.origin_id === nodeId || f.target_id === nodeId) graph.floatingLinks.delete(id);
}

/** A reroute is deleted: floating links that stopped at it stop at the reroute before it, or go. */
export function detachFloatingLinks(graph, reroute) {
  for (const [id, f] of graph.floatingLinks) {
    if (f.parentId !== reroute.id) continue;
    if (reroute.parentId == null) graph.floatingLinks.delete(id);
    else f.parentId = reroute.parentId;
  }
}

/**
 * A new link from the output the reroute carries to `targetId`'s input, passing through the reroute
 * and the ones before it. A floating link that stopped at this reroute is no longer needed.
 */
export function connectThroughReroute(graph, rerouteId, targetId, targetSlot) {
  const source = rerouteSource(graph, rerouteId);
  if (!source) return null;
  const link = graph.connect(source.origin_id, source.origin_slot, targetId, targetSlot);
  if (!link) return null;
  link.parentId = rerouteId;
  for (const reroute of graph.rerouteChain(link)) if (!reroute.linkIds.includes(link.id)) reroute.linkIds.push(link.id);
  for (const [id, f] of graph.floatingLinks) if (f.parentId === rerouteId && keepsOutput(f)) graph.floatingLinks.delete(id);
  markFloatingEnds(graph);
  return link;
}

/** Floating links as a file holds them; each keeps the fields it was read with. */
export function readFloatingLinks(graph, raw) {
  for (const f of raw || []) {
    if (!f || typeof f.id !== 'number' || !graph.reroutes.has(f.parentId)) continue;
    graph.floatingLinks.set(f.id, clone(f));
    graph.lastFloatingLinkId = Math.max(graph.lastFloatingLinkId, f.id);
  }
}

export function floatingLinksJSON(graph) {
  return [...graph.floatingLinks.values()].sort((a, b) => a.id - b.id).map(clone);
}

/** Why a reroute cannot take a new source; nothing was changed. */
export class RerouteSourceError extends Error {
  constructor(rerouteId, reason) {
    super(reason);
    this.rerouteId = rerouteId;
    this.reason = reason;
  }
}

/**
 * The links a reroute leads on to inputs, as `{link, floating}`: live ones, and floating ones that
 * lost their origin where their input is still free.
 */
function linksOnward(graph, rerouteId) {
  const through = (link) => graph.rerouteChain(link).some((r) => r.id === rerouteId);
  const free = (f) => graph.nodes.get(f.target_id)?.inputs[f.target_slot]?.link === null;
  return [...[...graph.links.values()].filter(through).map((link) => ({ link, floating: false })),
    ...floatingThrough(graph, rerouteId).filter((f) => !keepsOutput(f) && free(f)).map((link) => ({ link, floating: true }))];
}

/**
 * A link dragged from a reroute's input side to an output, as ComfyUI allows: everything through the
 * reroute now comes from output `originSlot` of `originId`. Its live links, and floating links that
 * lost their origin (where their input is still free), become links from that output through the
 * reroute and the ones after it; the reroutes before it stay only where other links still pass.
 * Floating links that kept their output start from the new one. Throws RerouteSourceError, having
 * changed nothing, when an input would not take the output's type (`compatible(outType, inType)`).
 * Returns the new links.
 */
export function resourceReroute(graph, rerouteId, originId, originSlot, compatible) {
  const reroute = graph.reroutes.get(rerouteId);
  const output = graph.nodes.get(originId)?.outputs[originSlot];
  if (!reroute) throw new RerouteSourceError(rerouteId, 'That reroute is gone');
  if (!output || output.empty) throw new RerouteSourceError(rerouteId, 'A reroute takes its links from an existing output');
  const onward = linksOnward(graph, rerouteId);
  for (const { link } of onward) {
    const target = graph.nodes.get(link.target_id);
    const input = target?.inputs[link.target_slot];
    if (link.target_id === originId) throw new RerouteSourceError(rerouteId, `${target.title || target.type} cannot feed itself`);
    if (input && !compatible(output.type, input.type)) {
      throw new RerouteSourceError(rerouteId, `A ${output.type} output cannot feed the ${input.type} input "${input.label || input.name}" through this reroute`);
    }
  }
  // The reroute becomes the first of its chain; the ones before it are copied first, as replacing a link drops those only it passed.
  const saved = new Map([...graph.reroutes].map(([id, r]) => [id, { ...clone(r), linkIds: [] }]));
  delete saved.get(rerouteId).parentId;
  delete reroute.parentId;
  const made = [];
  for (const { link: old, floating } of onward) {
    if (floating) graph.floatingLinks.delete(old.id);
    const link = graph.connect(originId, originSlot, old.target_id, old.target_slot);
    if (!link) continue;
    link.parentId = old.parentId;
    for (let id = old.parentId; saved.has(id); id = saved.get(id).parentId) {
      if (!graph.reroutes.has(id)) graph.reroutes.set(id, { ...clone(saved.get(id)), linkIds: [] });
      graph.reroutes.get(id).linkIds.push(link.id);
      if (id === rerouteId) break;
    }
    made.push(link);
  }
  for (const f of floatingThrough(graph, rerouteId)) {
    if (keepsOutput(f)) Object.assign(f, { origin_id: originId, origin_slot: originSlot, type: output.type });
  }
  dropUnusedReroutes(graph);
  markFloatingEnds(graph);
  return made;
}
