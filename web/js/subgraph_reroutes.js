/**
 * Native reroutes across a subgraph's boundary (docs/compatibility.md §C.5.3). Converting nodes to a
 * subgraph moves the reroutes of the links between them into the definition, and a link that crosses
 * the boundary keeps its reroutes on its outer part; unpacking brings them back out, a link made of an
 * outer and an inner part passing through the reroutes of both, origin side first. Reroutes are read
 * from copies taken before any link went, as removing a link drops the reroutes only it passed through.
 * Floating links (reroutes.js) move in and out with the node they kept and the reroutes they pass.
 */
import { keepsOutput, markFloatingEnds } from './reroutes.js';

const clone = (value) => JSON.parse(JSON.stringify(value));

/** The graph's reroutes as they are now, by id: where each is and which one comes before it. */
export function rerouteCopies(graph) {
  return new Map([...graph.reroutes].map(([id, r]) => [id, { id, pos: [...r.pos], parentId: r.parentId }]));
}

/**
 * One part of a route: the reroutes in `saved` from `parentId` (the one nearest the target) back to
 * the origin side; in the graph routed they get the ids `idOf` gives and are moved by `shift`.
 */
export const part = (parentId, saved, idOf = (id) => id, shift = [0, 0]) => ({ parentId, saved, idOf, shift });

/** Fresh reroute ids of `graph` for reroutes coming from another graph, one per original id. */
export function reroutedIds(graph) {
  const given = new Map();
  return (id) => {
    if (!given.has(id)) { graph.lastRerouteId += 1; given.set(id, graph.lastRerouteId); }
    return given.get(id);
  };
}

/**
 * Draws `link` of `graph` through the reroutes of `parts`, given origin side first: reroutes the graph
 * lacks are added, every one lists the link, and each part starts after the last reroute of the one before.
 */
export function routeLink(graph, link, parts) {
  let last = null;
  for (const { parentId, saved, idOf, shift } of parts) {
    let nearestOrigin = null;
    let nearestTarget = null;
    for (let at = parentId, steps = 0; at != null && saved.has(at) && steps <= saved.size; steps++) {
      const source = saved.get(at);
      const id = idOf(source.id);
      let reroute = graph.reroutes.get(id);
      if (!reroute) {
        reroute = { id, pos: [source.pos[0] + shift[0], source.pos[1] + shift[1]], linkIds: [] };
        if (source.parentId != null && saved.has(source.parentId)) reroute.parentId = idOf(source.parentId);
        graph.reroutes.set(id, reroute);
        graph.lastRerouteId = Math.max(graph.lastRerouteId, id);
      }
      if (!reroute.linkIds.includes(link.id)) reroute.linkIds.push(link.id);
      nearestTarget ??= id;
      nearestOrigin = reroute;
      at = source.parentId;
    }
    if (!nearestOrigin) continue;
    if (last != null) nearestOrigin.parentId = last;
    else if (!graph.reroutes.has(nearestOrigin.parentId)) delete nearestOrigin.parentId;
    last = nearestTarget;
  }
  if (last != null) link.parentId = last; else delete link.parentId;
}

/**
 * Copies the floating links `links` of graph `from` into graph `to`, with ids of `to`'s own.
 * `endOf(nodeId, slot, kept)` says where, in `to`, the end each kept ('output' or 'input' side) is:
 * `[nodeId, slot]`, or null to leave that link out. Their reroutes get the ids `idOf` gives (the same
 * as the live links' reroutes, so shared ones stay shared) and are moved by `shift`.
 */
export function copyFloatingLinks(from, to, links, endOf, idOf = (id) => id, shift = [0, 0]) {
  for (const f of links) {
    const output = keepsOutput(f);
    const end = output ? endOf(f.origin_id, f.origin_slot, 'output') : endOf(f.target_id, f.target_slot, 'input');
    const chain = from.rerouteChain(f);
    if (!end || !chain.length) continue;
    chain.forEach((source, i) => {
      const id = idOf(source.id);
      if (to.reroutes.has(id)) return;
      const reroute = { id, pos: [source.pos[0] + shift[0], source.pos[1] + shift[1]], linkIds: [] };
      if (i > 0) reroute.parentId = idOf(chain[i - 1].id);
      to.reroutes.set(id, reroute);
      to.lastRerouteId = Math.max(to.lastRerouteId, id);
    });
    const id = Math.max(to.lastFloatingLinkId, ...to.floatingLinks.keys()) + 1;
    to.lastFloatingLinkId = id;
    const [nodeId, slot] = end;
    to.floatingLinks.set(id, { ...clone(f), id, parentId: idOf(f.parentId),
      ...(output ? { origin_id: nodeId, origin_slot: slot } : { target_id: nodeId, target_slot: slot }) });
  }
  markFloatingEnds(to);
}
