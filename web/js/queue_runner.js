/**
 * Queueing: POST /api/prompt with the API prompt, the whole editor graph as
 * `extra_data.extra_pnginfo.workflow` (so outputs carry it), and our client id (docs/compatibility.md §1.3, §C.4).
 * Seed controls are applied only after the server accepted the prompt.
 */
import { ApiError } from './api.js';
import { graphToPrompt } from './to_api.js';
import { applyControls } from './widgets/seed_control.js';

export async function queueWorkflow(editor, api, batchCount = 1) {
  const accepted = [];
  for (let i = 0; i < batchCount; i++) {
    const workflow = editor.graph.toJSON();
    const body = { prompt: graphToPrompt(editor.graph, editor.defs), client_id: api.clientId,
      extra_data: { extra_pnginfo: { workflow } } };
    try {
      const reply = await api.post('/prompt', body);
      if (reply.node_errors && Object.keys(reply.node_errors).length) editor.execution.showValidation(reply.node_errors);
      else editor.execution.clearErrors();
      accepted.push(reply.prompt_id);
    } catch (error) {
      if (error instanceof ApiError && error.body && error.body.node_errors) {
        editor.execution.showValidation(error.body.node_errors);
        const top = error.body.error || {};
        throw new Error(top.details ? `${top.message}: ${top.details}` : top.message || error.message);
      }
      throw error;
    }
    if (applyControls(editor.graph, editor.defs)) editor.commit();
  }
  return accepted;
}
