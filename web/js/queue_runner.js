/**
 * Queueing: POST /api/prompt with the editor graph as `workflow` and our client id; the server
 * converts it (web/js/api_prompt.js) and stores it as `extra_data.extra_pnginfo.workflow`, so outputs
 * carry it (docs/compatibility.md §1.3, §C.4). Seed controls are applied only after the server
 * accepted the prompt, so the run used the values on screen.
 */
import { ApiError, refusalText } from './api.js';
import { workflowBody } from './api_prompt.js';
import { applyControls } from './widgets/seed_control.js';

export async function queueWorkflow(editor, api, batchCount = 1) {
  const accepted = [];
  for (let i = 0; i < batchCount; i++) {
    const body = { ...workflowBody(editor.graph), client_id: api.clientId };
    try {
      const reply = await api.post('/prompt', body);
      if (reply.node_errors && Object.keys(reply.node_errors).length) editor.execution.showValidation(reply.node_errors);
      else editor.execution.clearErrors();
      accepted.push(reply.prompt_id);
    } catch (error) {
      if (error instanceof ApiError && error.body && error.body.node_errors) {
        editor.execution.showValidation(error.body.node_errors);
        throw new Error(refusalText(error));
      }
      throw error;
    }
    if (applyControls(editor.root, editor.graph, editor.defs)) editor.commit();
  }
  return accepted;
}
