/**
 * Boot: read the user and settings, the node library (/object_info, plus the editor's own note
 * nodes), then restore the last graph from localStorage or open the default SD1.5 workflow; wire the
 * toolbar, panels, shortcuts and file drops.
 * `window.loom` exposes the model and slot coordinates so browser tests can aim real mouse events.
 */
import { Api } from './api.js';
import { CanvasController, isTyping } from './canvas/controller.js';
import { askText } from './dialogs.js';
import { Editor, STORAGE_KEY } from './editor.js';
import { ExecutionState } from './execution.js';
import { ExtensionHost, showPluginNotice } from './extensions.js';
import { downloadJson, pickFile, readWorkflowFile } from './files.js';
import { withFrontendNodes } from './frontend_nodes.js';
import { MODE_BYPASS, MODE_NEVER } from './graph_model.js';
import { commandFor } from './keymap.js';
import { closeMenus, showMenu } from './menus.js';
import { buildMenu } from './node_menus.js';
import { defaultWorkflow, firstWorkflow, missingCheckpointMessage } from './default_workflow.js';
import { Gallery } from './panels/gallery.js';
import { LibraryPanel, NODE_DRAG_TYPE } from './panels/library.js';
import { closeHelp, toggleHelp } from './panels/help.js';
import { QueuePanel } from './panels/queue_panel.js';
import { WorkflowsPanel } from './panels/workflows.js';
import { queueWorkflow } from './queue_runner.js';
import { graphToPrompt } from './to_api.js';
import { toast } from './toast.js';

const $ = (selector) => document.querySelector(selector);

async function boot() {
  const api = new Api();
  await api.json('/users');
  await api.json('/settings');
  const defs = withFrontendNodes(await api.json('/object_info'));
  const extensions = new ExtensionHost(api);
  await extensions.load();
  let checkpoints = [];
  try { checkpoints = await api.json('/models/checkpoints'); } catch { checkpoints = []; }
  // The loader's own choices: an ncnn pair appears once there, by its .param file.
  const upscalers = defs.UpscaleModelLoader?.input?.required?.model_name?.[0] ?? [];

  const execution = new ExecutionState(api);
  const editor = new Editor(defs, execution);
  editor.showMinimap = true;
  execution.addEventListener('change', () => editor.markDirty());
  api.addEventListener('status', (e) => { $('#queue-size').textContent = `queue: ${e.detail.status?.exec_info?.queue_remaining ?? 0}`; });
  api.addEventListener('open', () => $('#connection').classList.remove('offline'));
  api.addEventListener('close', () => $('#connection').classList.add('offline'));
  api.addEventListener('execution_error', (e) => toast(`${e.detail.node_type} #${e.detail.node_id} failed: ${e.detail.exception_message}`, { kind: 'error' }));

  const openWorkflow = (json, name = null) => {
    editor.load(json);
    if (name) document.title = `${name} - Loom`;
  };
  const saved = localStorage.getItem(STORAGE_KEY);
  try {
    openWorkflow(saved ? JSON.parse(saved) : firstWorkflow(checkpoints, upscalers));
  } catch (error) {
    toast(`Could not restore the last workflow (${error.message}); opened the default one.`, { kind: 'error' });
    openWorkflow(firstWorkflow(checkpoints, upscalers));
  }
  if (!checkpoints.length) $('#banner').textContent = missingCheckpointMessage();
  else $('#banner').remove();

  const workflows = new WorkflowsPanel($('#panel-workflows'), api, (json, path) => openWorkflow(json, path));
  const queuePanel = new QueuePanel($('#panel-queue'), api, (json) => openWorkflow(json));
  new Gallery($('#panel-gallery'), api, execution);
  new LibraryPanel($('#panel-library'), defs, (type) => {
    editor.addNode(type, editor.view.toWorld(controller.width / 2 - 100, controller.height / 2 - 50));
  });

  const actions = {
    rename: async (node) => {
      const title = await askText('Node title', node.title || defs[node.type]?.display_name || node.type);
      if (title !== null) editor.setTitle(node, title.trim());
    },
    renameGroup: async (group) => {
      const title = await askText('Group title', group.title);
      if (title !== null) { group.title = title; editor.commit(); }
    },
    linkMenu: (link, x, y) => showMenu(x, y, buildMenu({ kind: 'link', link }, null, { editor, controller, actions })),
    comboMenu: (values, x, y, pick) => showMenu(x, y, values.map((v) => ({ label: String(v), action: () => pick(v) }))),
    contextMenu: (hit, at, x, y) => showMenu(x, y, buildMenu(hit, at, { editor, controller, actions })),
    upload: async (node, widget) => {
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
    },
    help: toggleHelp,
    extensionMenu: () => extensions.menuEntries(),
  };
  const controller = new CanvasController($('#canvas'), editor, actions);

  const queue = async () => {
    const count = Math.max(1, Math.min(100, Number($('#batch-count').value) || 1));
    try {
      const ids = await queueWorkflow(editor, api, count);
      toast(`Queued ${ids.length} prompt${ids.length > 1 ? 's' : ''}`);
      queuePanel.scheduleRefresh();
    } catch (error) {
      toast(`Not queued: ${error.message}`, { kind: 'error' });
    }
  };
  const saveToServer = async () => {
    const name = await askText('Save workflow as', (document.title.replace(/ - Loom$/, '').replace(/\.json$/, '')) || 'workflow');
    if (!name) return;
    try {
      const file = await workflows.save(name.trim(), editor.graph.toJSON());
      document.title = `${file} - Loom`;
      toast(`Saved ${file}`);
    } catch (error) {
      toast(`Save failed: ${error.message}`, { kind: 'error' });
    }
  };
  const openFile = async (file) => {
    try {
      openWorkflow(await readWorkflowFile(file, defs), file.name);
    } catch (error) {
      toast(`Could not open ${error.message}`, { kind: 'error' });
    }
  };
  const commands = {
    queue,
    undo: () => editor.undo(),
    redo: () => editor.redo(),
    copy: () => editor.copySelected(),
    paste: () => editor.paste(editor.view.toWorld(...controller.pointer)),
    pasteWithInputs: () => editor.paste(editor.view.toWorld(...controller.pointer), true),
    duplicate: () => editor.duplicateSelected(),
    delete: () => editor.deleteSelected(),
    selectAll: () => editor.select([...editor.graph.nodes.keys()]),
    bypass: () => editor.toggleMode(MODE_BYPASS),
    mute: () => editor.toggleMode(MODE_NEVER),
    collapse: () => editor.toggleCollapse(),
    group: () => editor.createGroup(),
    save: saveToServer,
    open: async () => { const f = await pickFile('.json,.png,application/json,image/png'); if (f) openFile(f); },
    fit: () => controller.fit(),
    help: toggleHelp,
    escape: () => { closeMenus(); if (!closeHelp()) { editor.selection.clear(); editor.markDirty(); } },
  };

  addEventListener('keydown', (event) => {
    if (isTyping(event) || document.querySelector('.modal, .search-dialog')) return;
    const command = commandFor(event);
    if (command) { event.preventDefault(); commands[command](); return; }
    if (event.key.length === 1 && /\S/.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      const r = $('#canvas').getBoundingClientRect();
      controller.searchAt(r.left + controller.pointer[0], r.top + controller.pointer[1], event.key);
    }
  });
  addEventListener('dragover', (e) => e.preventDefault());
  addEventListener('drop', (e) => {
    e.preventDefault();
    const nodeType = e.dataTransfer.getData(NODE_DRAG_TYPE);
    if (nodeType) {
      const r = $('#canvas').getBoundingClientRect();
      editor.addNode(nodeType, editor.view.toWorld(e.clientX - r.left, e.clientY - r.top));
      return;
    }
    const file = e.dataTransfer.files[0];
    if (file) openFile(file);
  });

  $('#btn-queue').addEventListener('click', queue);
  $('#btn-save').addEventListener('click', saveToServer);
  $('#btn-open').addEventListener('click', commands.open);
  $('#btn-export').addEventListener('click', () => downloadJson('workflow.json', editor.graph.toJSON()));
  $('#btn-export-api').addEventListener('click', () => downloadJson('workflow_api.json', graphToPrompt(editor.graph, defs)));
  $('#btn-default').addEventListener('click', () => openWorkflow(defaultWorkflow(checkpoints[0])));
  $('#btn-clear').addEventListener('click', () => { editor.graph.nodes.clear(); editor.graph.links.clear(); editor.graph.groups = []; editor.selection.clear(); editor.commit(); });
  $('#btn-help').addEventListener('click', toggleHelp);
  $('#btn-interrupt').addEventListener('click', () => api.post('/interrupt', {}));
  for (const tab of document.querySelectorAll('.tab')) {
    tab.addEventListener('click', () => {
      const open = tab.classList.contains('active');
      document.querySelectorAll('.tab, .panel').forEach((el) => el.classList.remove('active'));
      if (!open) {
        tab.classList.add('active');
        $(`#panel-${tab.dataset.panel}`).classList.add('active');
        if (tab.dataset.panel === 'workflows') workflows.refresh();
        if (tab.dataset.panel === 'queue') queuePanel.refresh();
      }
      controller.resize();
    });
  }

  extensions.start(editor, defs);
  showPluginNotice(api, $('#workspace'));
  api.connect();
  window.loom = {
    api, editor, controller, execution, defs, extensions,
    get graph() { return editor.graph; },
    slot: (nodeId, kind, index) => controller.slotOnScreen(nodeId, kind, index),
    widget: (nodeId, name, where) => controller.widgetOnScreen(nodeId, name, where),
    title: (nodeId) => controller.titleOnScreen(nodeId),
    resizeHandle: (nodeId) => controller.resizeHandleOnScreen(nodeId),
    bounds: (nodeId) => controller.boundsOnScreen(nodeId),
    prompt: () => graphToPrompt(editor.graph, defs),
    ready: true,
  };
  document.body.dataset.ready = 'true';
}

boot().catch((error) => {
  console.error(error);
  toast(`Loom could not start: ${error.message}`, { kind: 'error' });
});
