/**
 * Boot: read what the editor needs from the server, open the first workflow, then wire the sidebar,
 * the canvas, the commands and the page's controls, and connect the WebSocket.
 * `window.loom` exposes the model and slot coordinates so browser tests can aim real mouse events.
 */
import { Api } from './api.js';
import { serverPrompt } from './api_prompt.js';
import { bindDrops, bindKeyboard, bindToolbar } from './bindings.js';
import { canvasActions } from './canvas_actions.js';
import { CanvasController } from './canvas/controller.js';
import { editorCommands } from './commands.js';
import { showPluginNotice } from './extensions.js';
import { watchForMissingModels } from './missing_models.js';
import { openSidebar } from './panels/sidebar.js';
import { createSession } from './session.js';
import { loadStartup, openFirstWorkflow } from './startup.js';
import { showServerStatus } from './status_bar.js';
import { toast } from './toast.js';

async function boot() {
  const api = new Api();
  const session = createSession(api, await loadStartup(api));
  watchForMissingModels(session);
  showServerStatus(api);
  openFirstWorkflow(session);
  openSidebar(session);
  session.controller = new CanvasController(document.getElementById('canvas'), session.editor, canvasActions(session));
  const commands = editorCommands(session);
  bindKeyboard(session, commands);
  bindDrops(session, commands);
  bindToolbar(commands);
  session.extensions.start(session.editor, session.defs);
  showPluginNotice(api, document.getElementById('workspace'));
  api.connect();
  exposeForTests(session);
  document.body.dataset.ready = 'true';
}

function exposeForTests({ api, editor, controller, execution, defs, extensions }) {
  window.loom = {
    api, editor, controller, execution, defs, extensions,
    get graph() { return editor.graph; },
    slot: (nodeId, kind, index) => controller.slotOnScreen(nodeId, kind, index),
    widget: (nodeId, name, where) => controller.widgetOnScreen(nodeId, name, where),
    title: (nodeId) => controller.titleOnScreen(nodeId),
    resizeHandle: (nodeId) => controller.resizeHandleOnScreen(nodeId),
    bounds: (nodeId) => controller.boundsOnScreen(nodeId),
    /** The server's conversion of the open graph (a promise), as Queue and Export API use it. */
    prompt: async () => (await serverPrompt(api, editor.graph)).prompt,
    ready: true,
  };
}

boot().catch((error) => {
  console.error(error);
  toast(`Loom could not start: ${error.message}`, { kind: 'error' });
});
