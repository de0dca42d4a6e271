/**
 * How the page's controls reach the commands (commands.js): toolbar buttons, keyboard shortcuts
 * (keymap.js), a typed letter (which opens node search at the pointer), and drops: a node type
 * dragged from the library, or a workflow file from the desktop.
 */
import { isTyping } from './canvas/controller.js';
import { commandFor } from './keymap.js';
import { NODE_DRAG_TYPE } from './panels/library.js';

const TOOLBAR = {
  'btn-queue': 'queue', 'btn-save': 'save', 'btn-open': 'open', 'btn-export': 'exportWorkflow',
  'btn-export-api': 'exportApi', 'btn-default': 'openDefault', 'btn-clear': 'clear', 'btn-help': 'help',
  'btn-interrupt': 'interrupt',
};

export function bindToolbar(commands) {
  for (const [id, command] of Object.entries(TOOLBAR)) document.getElementById(id).addEventListener('click', () => commands[command]());
}

export function bindKeyboard(session, commands) {
  addEventListener('keydown', (event) => {
    if (isTyping(event) || document.querySelector('.modal, .search-dialog')) return;
    const command = commandFor(event);
    if (command) { event.preventDefault(); commands[command](); return; }
    if (event.key.length === 1 && /\S/.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      const { controller } = session;
      const r = controller.canvas.getBoundingClientRect();
      controller.searchAt(r.left + controller.pointer[0], r.top + controller.pointer[1], event.key);
    }
  });
}

export function bindDrops(session, commands) {
  addEventListener('dragover', (e) => e.preventDefault());
  addEventListener('drop', (e) => {
    e.preventDefault();
    const nodeType = e.dataTransfer.getData(NODE_DRAG_TYPE);
    if (nodeType) {
      const { editor, controller } = session;
      const r = controller.canvas.getBoundingClientRect();
      editor.addNode(nodeType, editor.view.toWorld(e.clientX - r.left, e.clientY - r.top));
      return;
    }
    const file = e.dataTransfer.files[0];
    if (file) commands.openFile(file);
  });
}
