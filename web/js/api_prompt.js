/**
 * The open graph as the server receives it. The editor has no converter of its own: it sends its
 * workflow and the server turns it into the API prompt (graph/formats/editor.py, docs/compatibility.md §2.2),
 * so the prompt that Queue runs and the file that Export API writes follow one set of rules.
 * Only the browser knows which socket types its extensions draw as widgets, so it names them.
 */
import { widgetTypeNames } from './widgets/custom_widgets.js';

/**
 * The body fields that carry a workflow, for POST /prompt and POST /loom/api_prompt alike. `graph` may
 * be a subgraph's inside that is being edited: the whole file it belongs to is sent.
 */
export function workflowBody(graph) {
  return { workflow: graph.root.toJSON(), widget_types: widgetTypeNames() };
}

/** `{prompt, warnings}`: the API prompt queueing this graph would run, without queueing it. */
export function serverPrompt(api, graph) {
  return api.post('/loom/api_prompt', workflowBody(graph));
}
