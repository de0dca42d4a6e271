/**
 * The editor's graph as plain data, in the shape of ComfyUI's v0.4 workflow files (docs/compatibility.md §2.2, §C.5.2):
 * nodes keep `inputs[].link`, `outputs[].links` and positional `widgets_values`; links are
 * `[id, origin_id, origin_slot, target_id, target_slot, type]` tuples on disk. No drawing, no DOM here,
 * so the same model serves the canvas, the API conversion and the tests.
 */

import { detachFloatingLinks, dropFloatingLinksOf, dropUnusedReroutes, floatingLinksJSON, floatRoute, markFloatingEnds,
  readFloatingLinks } from './reroutes.js';

export const MODE_ALWAYS = 0;
export const MODE_NEVER = 2;
export const MODE_BYPASS = 4;

export class WorkflowFormatError extends Error {
  constructor(path, reason) {
    super(`workflow ${path}: ${reason}`);
    this.path = path;
    this.reason = reason;
  }
}

function clone(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

export class Graph {
  constructor() {
    this.nodes = new Map();
    this.links = new Map();
    /** Native reroutes (docs/compatibility.md §C.5.3): points a link is drawn through; they never run. */
    this.reroutes = new Map();
    /** What is left of links through reroutes whose one end is gone (reroutes.js); ids of their own. */
    this.floatingLinks = new Map();
    this.lastFloatingLinkId = 0;
    this.groups = [];
    this.lastNodeId = 0;
    this.lastLinkId = 0;
    this.lastRerouteId = 0;
    /** The workflow this graph belongs to: itself, or for a subgraph's inside (subgraphs.js) the file's graph. */
    this.root = this;
    this.extra = { ds: { scale: 1, offset: [0, 0] } };
    this.config = {};
    this.passthrough = {};
    this.id = globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : String(Date.now());
  }

  /** Keeps a given free id (loading, pasting with ids kept), else assigns the next one. */
  addNode(node) {
    if (node.id == null || this.nodes.has(node.id)) node.id = this.lastNodeId + 1;
    this.lastNodeId = Math.max(this.lastNodeId, node.id);
    this.nodes.set(node.id, node);
    return node;
  }

  /** `keepReroutes`: the reroutes of links into the node stay, floating from their origin (reroutes.js). */
  removeNode(id, keepReroutes = false) {
    const node = this.nodes.get(id);
    if (!node) return;
    node.inputs.forEach((input) => { if (input.link != null) this.removeLink(input.link, keepReroutes); });
    node.outputs.forEach((output) => (output.links || []).slice().forEach((l) => this.removeLink(l)));
    dropFloatingLinksOf(this, id);
    dropUnusedReroutes(this);
    markFloatingEnds(this);
    this.nodes.delete(id);
  }

  /** One link per input: connecting replaces whatever fed that input before. */
  connect(originId, originSlot, targetId, targetSlot, linkId = null) {
    const origin = this.nodes.get(originId);
    const target = this.nodes.get(targetId);
    if (!origin || !target || !origin.outputs[originSlot] || !target.inputs[targetSlot]) return null;
    const existing = target.inputs[targetSlot].link;
    if (existing != null) this.removeLink(existing);
    const id = linkId != null && !this.links.has(linkId) ? linkId : this.lastLinkId + 1;
    this.lastLinkId = Math.max(this.lastLinkId, id);
    const output = origin.outputs[originSlot];
    const link = { id, origin_id: originId, origin_slot: originSlot, target_id: targetId, target_slot: targetSlot,
      type: output.type === '*' ? target.inputs[targetSlot].type : output.type };
    this.links.set(id, link);
    output.links = output.links || [];
    output.links.push(id);
    target.inputs[targetSlot].link = id;
    return link;
  }

  /**
   * `keepReroutes`: the link's target side is what went (a person disconnected it or deleted its
   * node), so its reroutes stay as ComfyUI's floating reroutes; otherwise those only it used go.
   */
  removeLink(id, keepReroutes = false) {
    const link = this.links.get(id);
    if (!link) return;
    if (keepReroutes) floatRoute(this, link);
    const origin = this.nodes.get(link.origin_id);
    const target = this.nodes.get(link.target_id);
    const output = origin && origin.outputs[link.origin_slot];
    if (output && output.links) output.links = output.links.filter((l) => l !== id);
    const input = target && target.inputs[link.target_slot];
    if (input && input.link === id) input.link = null;
    this.links.delete(id);
    for (const reroute of this.reroutes.values()) reroute.linkIds = reroute.linkIds.filter((l) => l !== id);
    dropUnusedReroutes(this);
    if (keepReroutes) markFloatingEnds(this);
  }

  /** The reroutes a link passes through, from its origin to its target (each reroute names the one before it). */
  rerouteChain(link) {
    const chain = [];
    for (let id = link.parentId; id != null && chain.length <= this.reroutes.size;) {
      const reroute = this.reroutes.get(id);
      if (!reroute) break;
      chain.unshift(reroute);
      id = reroute.parentId;
    }
    return chain;
  }

  /**
   * A new reroute at `pos` on `link`, placed after the reroute `after` (null: right after the origin).
   * Reroutes are shared by every link through them, so a reroute added on a bundle serves all of its links.
   */
  addReroute(link, pos, after = null) {
    const id = this.lastRerouteId + 1;
    this.lastRerouteId = id;
    const reroute = { id, pos: [...pos], linkIds: [link.id] };
    if (after != null) reroute.parentId = after;
    const chain = this.rerouteChain(link);
    const next = chain[after == null ? 0 : chain.findIndex((r) => r.id === after) + 1];
    if (next) next.parentId = id; else link.parentId = id;
    this.reroutes.set(id, reroute);
    return reroute;
  }

  /** Takes a reroute out of every chain it is in; its links go straight to its neighbours. */
  removeReroute(id) {
    const reroute = this.reroutes.get(id);
    if (!reroute) return;
    for (const link of this.links.values()) if (link.parentId === id) link.parentId = reroute.parentId;
    for (const other of this.reroutes.values()) if (other.parentId === id) other.parentId = reroute.parentId;
    for (const link of this.links.values()) if (link.parentId === undefined) delete link.parentId;
    for (const other of this.reroutes.values()) if (other.parentId === undefined) delete other.parentId;
    detachFloatingLinks(this, reroute);
    this.reroutes.delete(id);
    dropUnusedReroutes(this);
    markFloatingEnds(this);
  }

  nodesJSON() {
    return [...this.nodes.values()].filter((n) => !n.boundary).sort((a, b) => a.id - b.id).map(nodeJSON);
  }

  /** v0.4 files store links as tuples (their reroute in `extra.linkExtensions`), version 1 as objects. */
  linksJSON(asObjects) {
    const links = [...this.links.values()].sort((a, b) => a.id - b.id);
    if (!asObjects) return links.map((l) => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
    return links.map((l) => {
      const out = { id: l.id, origin_id: l.origin_id, origin_slot: l.origin_slot, target_id: l.target_id, target_slot: l.target_slot, type: l.type };
      if (l.parentId != null) out.parentId = l.parentId;
      return out;
    });
  }

  reroutesJSON() {
    return [...this.reroutes.values()].sort((a, b) => a.id - b.id).map((r) => {
      const out = { id: r.id, pos: [...r.pos], linkIds: [...r.linkIds] };
      if (r.parentId != null) out.parentId = r.parentId;
      if (r.floating) out.floating = clone(r.floating);
      return out;
    });
  }

  /**
   * Reads native reroutes: version 1 keeps them and the links' `parentId` at the top, v0.4 in `extra`;
   * both keep floating links at the top.
   */
  readReroutes(rawReroutes, linkParents, rawFloatingLinks = []) {
    for (const raw of rawReroutes || []) {
      if (!raw || typeof raw.id !== 'number' || !Array.isArray(raw.pos)) continue;
      const reroute = { id: raw.id, pos: [Number(raw.pos[0]), Number(raw.pos[1])], linkIds: (raw.linkIds || []).filter((l) => this.links.has(l)) };
      if (raw.parentId != null) reroute.parentId = raw.parentId;
      if (raw.floating) reroute.floating = clone(raw.floating);
      this.reroutes.set(reroute.id, reroute);
      this.lastRerouteId = Math.max(this.lastRerouteId, reroute.id);
    }
    for (const [linkId, parentId] of linkParents) {
      const link = this.links.get(linkId);
      if (link && this.reroutes.has(parentId)) link.parentId = parentId;
    }
    readFloatingLinks(this, rawFloatingLinks);
    dropUnusedReroutes(this);
  }

  /** The subgraph definition that nodes of `type` are instances of, when the file defines one. */
  subgraphOf(type) {
    return (this.root.passthrough.definitions?.subgraphs || []).find((definition) => definition.id === type) || null;
  }

  toJSON() {
    const extra = clone(this.extra);
    delete extra.reroutes;
    delete extra.linkExtensions;
    if (this.reroutes.size) {
      extra.reroutes = this.reroutesJSON();
      extra.linkExtensions = [...this.links.values()].filter((l) => l.parentId != null).sort((a, b) => a.id - b.id)
        .map((l) => ({ id: l.id, parentId: l.parentId }));
    }
    return { ...clone(this.passthrough), id: this.id, revision: 0, last_node_id: this.lastNodeId, last_link_id: this.lastLinkId,
      nodes: this.nodesJSON(), links: this.linksJSON(false), ...(this.floatingLinks.size ? { floatingLinks: floatingLinksJSON(this) } : {}),
      groups: clone(this.groups), config: clone(this.config), extra, version: 0.4 };
  }

  /** Accepts v0.4 files (tuple links) and version 1 files (object links, docs/compatibility.md §C.5.3). */
  static fromJSON(json) {
    if (!json || typeof json !== 'object') throw new WorkflowFormatError('(root)', 'not a JSON object');
    if (!Array.isArray(json.nodes)) throw new WorkflowFormatError('nodes', 'missing or not a list');
    const graph = new Graph();
    if (json.id) graph.id = json.id;
    graph.passthrough = json.version === 1 ? version1Fields(json) : unknownFields(json, TOP_FIELDS);
    const linkParents = (json.extra?.linkExtensions || []).map((e) => [e.id, e.parentId]);
    json.nodes.forEach((raw, i) => {
      if (typeof raw.type !== 'string') throw new WorkflowFormatError(`nodes[${i}].type`, 'missing node type');
      if (typeof raw.id !== 'number') throw new WorkflowFormatError(`nodes[${i}].id`, 'node id must be a number');
      const node = makeNode(raw);
      node.inputs.forEach((input) => { input.link = null; });
      node.outputs.forEach((output) => { output.links = []; });
      graph.nodes.set(node.id, node);
      graph.lastNodeId = Math.max(graph.lastNodeId, node.id);
    });
    (json.links || []).forEach((raw, i) => {
      const link = Array.isArray(raw) ? { id: raw[0], origin_id: raw[1], origin_slot: raw[2], target_id: raw[3], target_slot: raw[4], type: raw[5] } : raw;
      if (link == null || typeof link.id !== 'number') throw new WorkflowFormatError(`links[${i}]`, 'not a link');
      const made = graph.connect(link.origin_id, link.origin_slot, link.target_id, link.target_slot, link.id);
      if (made && link.type) made.type = link.type;
      if (made && link.parentId != null) linkParents.push([made.id, link.parentId]);
    });
    graph.groups = clone(json.groups) || [];
    graph.config = clone(json.config) || {};
    graph.extra = { ds: { scale: 1, offset: [0, 0] }, ...(clone(json.extra) || {}) };
    graph.readReroutes(json.version === 1 ? json.reroutes : json.extra?.reroutes, linkParents, json.floatingLinks);
    const state = json.state || {};
    graph.lastRerouteId = Math.max(graph.lastRerouteId, state.lastRerouteId || 0);
    graph.lastNodeId = Math.max(graph.lastNodeId, json.last_node_id || 0, state.lastNodeId || 0);
    graph.lastLinkId = Math.max(graph.lastLinkId, json.last_link_id || 0, state.lastLinkId || 0);
    return graph;
  }
}

/** A node record with every field the file format has, copied from `raw`. */
const NODE_FIELDS = new Set(['id', 'type', 'title', 'pos', 'size', 'flags', 'order', 'mode', 'inputs', 'outputs',
  'properties', 'widgets_values', 'color', 'bgcolor', 'passthrough']);
const TOP_FIELDS = new Set(['id', 'revision', 'last_node_id', 'last_link_id', 'nodes', 'links', 'floatingLinks', 'groups',
  'config', 'extra', 'version', 'state']);

/** Fields this editor does not use (widgets_values_named, shape, models, definitions...) ride along unchanged. */
function unknownFields(raw, known) {
  return Object.fromEntries(Object.entries(raw).filter(([key]) => !known.has(key)).map(([key, value]) => [key, clone(value)]));
}

/**
 * Of a version 1 file's own fields only the subgraph `definitions` are kept (v0.4 files carry them in
 * the same shape); its reroutes and floating links are read into the graph.
 */
function version1Fields(raw) {
  return raw.definitions === undefined ? {} : { definitions: clone(raw.definitions) };
}

/** A slot's shown name (ComfyUI's `label`, set by renaming) and translated name ride along with it. */
function slotNames(slot) {
  const out = {};
  for (const key of ['label', 'localized_name']) if (slot[key] !== undefined) out[key] = slot[key];
  return out;
}

/** A node as the file stores it; `order` is its place in the saved list. */
export function nodeJSON(n, order) {
  const out = { ...clone(n.passthrough), id: n.id, type: n.type, pos: [...n.pos], size: [...n.size], flags: clone(n.flags) || {},
    order, mode: n.mode || 0,
    inputs: n.inputs.map((i) => { const o = { name: i.name, type: i.type, link: i.link ?? null }; if (i.widget) o.widget = { ...i.widget }; if (i.shape !== undefined) o.shape = i.shape; return { ...slotNames(i), ...o }; }),
    outputs: n.outputs.map((o, slot) => ({ ...slotNames(o), name: o.name, type: o.type, links: o.links && o.links.length ? [...o.links] : null, slot_index: slot })),
    properties: clone(n.properties) || {}, widgets_values: clone(n.widgets_values) || [] };
  for (const key of ['title', 'color', 'bgcolor']) if (n[key] !== undefined) out[key] = n[key];
  return out;
}

export function makeNode(raw) {
  return {
    passthrough: { ...unknownFields(raw, NODE_FIELDS), ...clone(raw.passthrough) },
    id: raw.id ?? null,
    type: raw.type,
    title: raw.title,
    pos: raw.pos ? [Number(raw.pos[0] ?? raw.pos['0']), Number(raw.pos[1] ?? raw.pos['1'])] : [0, 0],
    size: raw.size ? [Number(raw.size[0] ?? raw.size['0']), Number(raw.size[1] ?? raw.size['1'])] : [220, 80],
    flags: clone(raw.flags) || {},
    mode: raw.mode || 0,
    inputs: (raw.inputs || []).map((i) => ({ ...clone(i), link: i.link ?? null })),
    outputs: (raw.outputs || []).map((o) => ({ ...slotNames(o), name: o.name, type: o.type, links: o.links ? [...o.links] : [] })),
    properties: clone(raw.properties) || {},
    widgets_values: clone(raw.widgets_values) ?? [],
    color: raw.color,
    bgcolor: raw.bgcolor,
  };
}
