/**
 * What the editor reads before it can show anything, and the first workflow it shows. The order is
 * the official frontend's (docs/compatibility.md §C.2): the user and settings, then the node library
 * (/object_info plus the editor's own note nodes), then the extensions, whose widget types must be
 * registered before any definition is turned into widgets.
 */
import { firstWorkflow, missingCheckpointMessage } from './default_workflow.js';
import { STORAGE_KEY } from './editor.js';
import { ExtensionHost } from './extensions.js';
import { withFrontendNodes } from './frontend_nodes.js';
import { toast } from './toast.js';

/** `{defs, extensions, checkpoints, upscalers}`; a server without a checkpoints folder lists none. */
export async function loadStartup(api) {
  await api.json('/users');
  await api.json('/settings');
  const defs = withFrontendNodes(await api.json('/object_info'));
  const extensions = new ExtensionHost(api);
  await extensions.load();
  let checkpoints = [];
  try { checkpoints = await api.json('/models/checkpoints'); } catch { checkpoints = []; }
  // The loader's own choices: an ncnn pair appears once there, by its .param file.
  const upscalers = defs.UpscaleModelLoader?.input?.required?.model_name?.[0] ?? [];
  return { defs, extensions, checkpoints, upscalers };
}

/** The graph open before the last reload, else the first-open workflow; and the missing-checkpoint banner. */
export function openFirstWorkflow(session) {
  const { checkpoints, upscalers } = session;
  const saved = localStorage.getItem(STORAGE_KEY);
  try {
    session.open(saved ? JSON.parse(saved) : firstWorkflow(checkpoints, upscalers));
  } catch (error) {
    toast(`Could not restore the last workflow (${error.message}); opened the default one.`, { kind: 'error' });
    session.open(firstWorkflow(checkpoints, upscalers));
  }
  const banner = document.getElementById('banner');
  if (checkpoints.length) banner.remove();
  else banner.textContent = missingCheckpointMessage();
}
