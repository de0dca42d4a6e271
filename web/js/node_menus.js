/**
 * Right-click menus for what is under the pointer: a node, a slot, a link, a group or the canvas.
 * Each entry calls an editor method, so menu actions are undoable like any other edit.
 */
import { MODE_ALWAYS, MODE_BYPASS, MODE_NEVER } from './graph_model.js';
import { VIRTUAL_TYPES } from './node_defs.js';
import { linkMarker, linkPoints, stretchMidpoint } from './canvas/link_route.js';
import { GROUP_COLORS } from './canvas/colors.js';
import { showHelpFor } from './panels/help.js';
import { interfaceSide, removeInterfaceSlot } from './subgraph_interface.js';

function categoryTree(defs, onPick) {
  const root = new Map();
  for (const def of Object.values(defs)) {
    let level = root;
    for (const part of String(def.category || 'other').split('/')) {
      if (!level.has(part)) level.set(part, new Map());
      level = level.get(part);
    }
    if (!level.has('')) level.set('', []);
    level.get('').push(def);
  }
  const toItems = (level) => [...level.entries()].sort(([a], [b]) => a.localeCompare(b)).flatMap(([name, value]) => (name === ''
    ? value.map((def) => ({ label: def.display_name, action: () => onPick(def.name) }))
    : [{ label: name, submenu: () => toItems(value) }]));
  return toItems(root);
}

export function insertReroute(editor, link) {
  const from = editor.layout(editor.graph.nodes.get(link.origin_id)).outputs[link.origin_slot];
  const to = editor.layout(editor.graph.nodes.get(link.target_id)).inputs[link.target_slot];
  const [mx, my] = stretchMidpoint(from, to);
  const { origin_id: o, origin_slot: os, target_id: t, target_slot: ts } = link;
  const reroute = editor.addNode('Reroute', [mx - 37, my - 13]);
  editor.connect(o, os, reroute.id, 0);
  editor.connect(reroute.id, 0, t, ts);
}

/** A native reroute (a point on the link, saved in the file's `reroutes`) where the link's marker is. */
function addRerouteOnLink(editor, controller, link) {
  const points = linkPoints(editor.graph, link, controller.currentBoxes());
  if (!points) return;
  const { at: pos, after } = linkMarker(editor.graph, link, points);
  editor.addReroute(link, pos, after);
}

export function buildMenu(hit, at, { editor, controller, actions }) {
  if (hit && hit.kind === 'link') return [
    { label: 'Delete link', action: () => editor.disconnect(hit.link.id) },
    { label: 'Add reroute', action: () => insertReroute(editor, hit.link) },
    { label: 'Add reroute point', action: () => addRerouteOnLink(editor, controller, hit.link) },
  ];
  if (hit && hit.reroute) return [{ label: 'Delete reroute', action: () => editor.removeReroute(hit.reroute.id) }];
  if (hit && hit.node && hit.node.boundary) return [...interfaceEntries(editor, actions, hit), { label: 'Leave subgraph', action: () => editor.leaveTo(editor.path.length - 1) }];
  if (hit && hit.kind === 'input') {
    const input = hit.node.inputs[hit.slot];
    return [
      { label: 'Disconnect', disabled: input.link == null, action: () => editor.disconnect(input.link) },
      ...(input.widget ? [{ label: `Convert ${input.widget.name} to widget`, action: () => editor.convertInputToWidget(hit.node, hit.slot) }] : []),
    ];
  }
  if (hit && hit.kind === 'output') {
    const output = hit.node.outputs[hit.slot];
    return [{ label: 'Disconnect all', disabled: !output.links.length, action: () => { output.links.slice().forEach((l) => editor.graph.removeLink(l)); editor.commit(); } }];
  }
  if (hit && hit.kind === 'group') {
    const group = hit.group;
    return [
      { label: 'Rename', action: () => actions.renameGroup(group) },
      { label: 'Colour', submenu: GROUP_COLORS.map((c) => ({ label: c, checked: group.color === c, action: () => { group.color = c; editor.commit(); } })) },
      { label: 'Select nodes', action: () => editor.select(editor.nodesInGroup(group).map((n) => n.id)) },
      { label: 'Remove group', action: () => { editor.graph.groups = editor.graph.groups.filter((g) => g !== group); editor.commit(); } },
    ];
  }
  if (hit && (hit.kind === 'node' || hit.kind === 'title' || hit.kind === 'widget')) {
    const node = hit.node;
    // A node that never reaches the server has nothing to feed a widget turned into an input.
    const widgets = VIRTUAL_TYPES.has(node.type) ? [] : editor.widgetsFor(node).filter((w) => !w.control && w.kind !== 'upload');
    const converted = new Set(node.inputs.filter((i) => i.widget).map((i) => i.widget.name));
    const several = editor.selection.size > 1;
    const instance = editor.isInstance(node);
    return [
      ...(instance ? [
        { label: 'Open subgraph', action: () => editor.enterSubgraph(node) },
        { label: 'Unpack subgraph', action: () => editor.unpackSubgraph(node) },
        '-',
      ] : []),
      { label: 'Rename', action: () => actions.rename(node) },
      // A subgraph's type is its definition's id and an editor-only node has no server page.
      ...(instance || VIRTUAL_TYPES.has(node.type) ? [] : [{ label: 'Help', action: () => showHelpFor(node.type) }]),
      { label: 'Mode', submenu: [
        { label: 'Always', checked: node.mode === MODE_ALWAYS, action: () => { editor.selectedNodes().forEach((n) => { n.mode = MODE_ALWAYS; }); editor.commit(); } },
        { label: 'Bypass', checked: node.mode === MODE_BYPASS, action: () => editor.toggleMode(MODE_BYPASS) },
        { label: 'Mute (never)', checked: node.mode === MODE_NEVER, action: () => editor.toggleMode(MODE_NEVER) },
      ] },
      { label: node.flags.collapsed ? 'Expand' : 'Collapse', action: () => editor.toggleCollapse() },
      { label: 'Colour', submenu: [{ label: 'default', action: () => { delete node.color; delete node.bgcolor; editor.commit(); } },
        ...GROUP_COLORS.map((c) => ({ label: c, action: () => { node.color = c; editor.commit(); } }))] },
      { label: 'Convert widget to input', disabled: !widgets.some((w) => !converted.has(w.name)),
        submenu: () => widgets.filter((w) => !converted.has(w.name)).map((w) => ({ label: w.name, action: () => editor.convertWidgetToInput(node, w.name) })) },
      { label: 'Convert input to widget', disabled: !converted.size,
        submenu: () => node.inputs.map((i, idx) => [i, idx]).filter(([i]) => i.widget).map(([i, idx]) => ({ label: i.widget.name, action: () => editor.convertInputToWidget(node, idx) })) },
      '-',
      { label: 'Copy', action: () => editor.copySelected() },
      { label: 'Duplicate', action: () => editor.duplicateSelected() },
      { label: 'Group selected', action: () => editor.createGroup() },
      { label: 'Convert to subgraph', action: () => editor.convertSelectionToSubgraph() },
      { label: 'Align', disabled: !several, submenu: ['left', 'top', 'right', 'bottom'].map((edge) => ({ label: edge, action: () => editor.align(edge) })) },
      '-',
      { label: 'Delete', action: () => editor.deleteSelected() },
    ];
  }
  return [
    { label: 'Add node…', action: () => controller.searchAt(...controller.pageOf(at[0], at[1]), '') },
    { label: 'Add node', submenu: () => categoryTree(editor.defs, (type) => editor.addNode(type, at)) },
    { label: 'Add reroute', action: () => editor.addNode('Reroute', at) },
    { label: 'Add group around selection', disabled: !editor.selection.size, action: () => editor.createGroup() },
    { label: 'Paste', action: () => editor.paste(at) },
    '-',
    { label: 'Fit view', action: () => controller.fit() },
    { label: editor.showMinimap ? 'Hide minimap' : 'Show minimap', action: () => { editor.showMinimap = !editor.showMinimap; editor.markDirty(); } },
    { label: 'Keyboard shortcuts', action: () => actions.help() },
    ...extensionEntries(actions),
  ];
}

/** A subgraph input's or output's own entries, on its slot of the boundary node. */
function interfaceEntries(editor, actions, hit) {
  const side = interfaceSide(hit.node, hit.kind);
  const slot = side && (hit.kind === 'output' ? hit.node.outputs : hit.node.inputs)[hit.slot];
  if (!slot || slot.empty) return [];
  return [
    { label: `Rename ${side}`, action: () => actions.renameInterfaceSlot(hit.node, hit.kind, hit.slot) },
    { label: `Remove ${side}`, action: () => { if (removeInterfaceSlot(editor.root, editor.graph, side, hit.slot)) editor.commit(); } },
    '-',
  ];
}

/** Entries that editor extensions add (`menuItems`), under their own heading. */
function extensionEntries(actions) {
  const items = actions.extensionMenu ? actions.extensionMenu() : [];
  return items.length ? ['-', { label: 'Extensions', submenu: items }] : [];
}
