/**
 * What the canvas asks of the page when a person acts on it: rename dialogs, menus, the image
 * upload picker, help, and the extensions' menu entries. The canvas controller only reports the
 * gesture; these open the dialogs and apply the outcome through the editor.
 */
import { askText } from './dialogs.js';
import { pickFile } from './files.js';
import { showMenu } from './menus.js';
import { buildMenu } from './node_menus.js';
import { toggleHelp } from './panels/help.js';
import { interfaceSide, renameInterfaceSlot } from './subgraph_interface.js';
import { toast } from './toast.js';

export function canvasActions(session) {
  const { api, defs, editor, extensions } = session;
  const menuContext = () => ({ editor, controller: session.controller, actions });
  const actions = {
    rename: async (node) => {
      const title = await askText('Node title', node.title || defs[node.type]?.display_name || node.type);
      if (title !== null) editor.setTitle(node, title.trim());
    },
    renameGroup: async (group) => {
      const title = await askText('Group title', group.title);
      if (title !== null) { group.title = title; editor.commit(); }
    },
    /** A subgraph input or output, from its slot's menu or a double-click on its boundary row; one undo step. */
    renameInterfaceSlot: async (node, slotKind, index) => {
      const side = interfaceSide(node, slotKind);
      const slot = side && (slotKind === 'output' ? node.outputs : node.inputs)[index];
      if (!slot || slot.empty) return;
      const name = await askText(`Rename subgraph ${side}`, slot.label || slot.name);
      if (name !== null && renameInterfaceSlot(editor.root, editor.graph, side, index, name)) editor.commit();
    },
    linkMenu: (link, x, y) => showMenu(x, y, buildMenu({ kind: 'link', link }, null, menuContext())),
    comboMenu: (values, x, y, pick) => showMenu(x, y, values.map((v) => ({ label: String(v), action: () => pick(v) }))),
    contextMenu: (hit, at, x, y) => showMenu(x, y, buildMenu(hit, at, menuContext())),
    upload: (node, widget) => uploadInto(api, editor, node, widget),
    help: toggleHelp,
    extensionMenu: () => extensions.menuEntries(),
  };
  return actions;
}

/** Uploads a picked image to the input folder and selects it in the widget the upload button serves. */
async function uploadInto(api, editor, node, widget) {
  const file = await pickFile('image/*');
  if (!file) return;
  try {
    const result = await api.uploadImage(file);
    const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
    const target = editor.widgetsFor(node).find((w) => w.name === widget.target);
    if (!target.options.values.includes(name)) target.options.values.push(name);
    editor.setWidgetValue(node, editor.widgetsFor(node).indexOf(target), name);
  } catch (error) {
    toast(`Upload of ${file.name} failed: ${error.message}`, { kind: 'error' });
  }
}
