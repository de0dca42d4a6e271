/**
 * Everything a person can ask of the editor by name: the keymap's commands (keymap.js) and the
 * toolbar's buttons (bindings.js) both call into this one table, so a shortcut and its button
 * can never do different things.
 */
import { refusalText } from './api.js';
import { serverPrompt } from './api_prompt.js';
import { askText } from './dialogs.js';
import { defaultWorkflow } from './default_workflow.js';
import { downloadJson, pickFile, readWorkflowFile } from './files.js';
import { MODE_BYPASS, MODE_NEVER } from './graph_model.js';
import { closeMenus } from './menus.js';
import { closeHelp, toggleHelp } from './panels/help.js';
import { queueWorkflow } from './queue_runner.js';
import { toast } from './toast.js';

const MAX_BATCH = 100;

export function editorCommands(session) {
  const { api, editor } = session;
  const pointer = () => editor.view.toWorld(...session.controller.pointer);
  const openFile = (file) => openWorkflowFile(session, file);
  return {
    queue: () => queue(session),
    undo: () => editor.undo(),
    redo: () => editor.redo(),
    copy: () => editor.copySelected(),
    paste: () => editor.paste(pointer()),
    pasteWithInputs: () => editor.paste(pointer(), true),
    duplicate: () => editor.duplicateSelected(),
    delete: () => editor.deleteSelected(),
    selectAll: () => editor.select([...editor.graph.nodes.keys()]),
    bypass: () => editor.toggleMode(MODE_BYPASS),
    mute: () => editor.toggleMode(MODE_NEVER),
    collapse: () => editor.toggleCollapse(),
    group: () => editor.createGroup(),
    save: () => saveToServer(session),
    open: async () => { const file = await pickFile('.json,.png,application/json,image/png'); if (file) openFile(file); },
    openFile,
    exportWorkflow: () => downloadJson('workflow.json', editor.root.toJSON()),
    exportApi: () => exportApiPrompt(session),
    openDefault: () => session.open(defaultWorkflow(session.checkpoints[0])),
    clear: () => editor.clear(),
    interrupt: () => api.post('/interrupt', {}),
    fit: () => session.controller.fit(),
    help: toggleHelp,
    escape: () => { closeMenus(); if (!closeHelp()) { editor.selection.clear(); editor.markDirty(); } },
  };
}

async function queue(session) {
  const count = Math.max(1, Math.min(MAX_BATCH, Number(document.getElementById('batch-count').value) || 1));
  try {
    const ids = await queueWorkflow(session.editor, session.api, count);
    toast(`Queued ${ids.length} prompt${ids.length > 1 ? 's' : ''}`);
    session.queuePanel.scheduleRefresh();
  } catch (error) {
    toast(`Not queued: ${error.message}`, { kind: 'error' });
  }
}

async function saveToServer(session) {
  const name = await askText('Save workflow as', session.fileName() || 'workflow');
  if (!name) return;
  try {
    const file = await session.workflows.save(name.trim(), session.editor.root.toJSON());
    session.nameFile(file);
    toast(`Saved ${file}`);
  } catch (error) {
    toast(`Save failed: ${error.message}`, { kind: 'error' });
  }
}

async function openWorkflowFile(session, file) {
  try {
    session.open(await readWorkflowFile(file, session.defs), file.name);
  } catch (error) {
    toast(`Could not open ${error.message}`, { kind: 'error' });
  }
}

/** Downloads the server's conversion of the open graph: the very prompt that Queue would run. */
async function exportApiPrompt(session) {
  try {
    const { prompt, warnings } = await serverPrompt(session.api, session.editor.graph);
    downloadJson('workflow_api.json', prompt);
    if (warnings.length) toast(`Exported with ${warnings.length} warning${warnings.length > 1 ? 's' : ''}: ${warnings.join('; ')}`);
  } catch (error) {
    toast(`Not exported: ${refusalText(error)}`, { kind: 'error' });
  }
}
