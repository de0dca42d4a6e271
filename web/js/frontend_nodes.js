/**
 * Node types that exist only in the editor, as in ComfyUI files: `Note` (plain text) and
 * `MarkdownNote` (markdown), each holding its text in `widgets_values[0]` and having no slots.
 * They are written as `/object_info` definitions so that search, the node library, menus and layout
 * treat them like any node; the server's conversion leaves them out of the prompt (they are virtual
 * there too, graph/formats/editor.py), so they never run. Two fields are the editor's own:
 * `color`/`bgcolor`, drawn when a node has no colours of its own, and `size`, a new note's room to
 * write (far more than the least a note may shrink to, which stays small so that notes in files keep
 * their size).
 */
import { MARKDOWN_TEXT, NOTE_TEXT } from './widgets/note_widgets.js';

const note = (name, displayName, widgetType, description) => ({
  name, display_name: displayName, description, category: 'utils',
  input: { required: { text: [widgetType, {}] } }, input_order: { required: ['text'] },
  output: [], output_name: [], output_is_list: [], output_node: false,
  color: '#5a4d28', bgcolor: '#3b3422', size: [360, 150],
});

export const FRONTEND_NODE_DEFS = {
  Note: note('Note', 'Note', NOTE_TEXT, 'A text note on the canvas; it does not run.'),
  MarkdownNote: note('MarkdownNote', 'Markdown Note', MARKDOWN_TEXT, 'A note written in markdown, shown formatted; it does not run.'),
};

/** The server's definitions plus the editor's own, which win: a type of that name never runs. */
export function withFrontendNodes(serverDefs) {
  return { ...serverDefs, ...FRONTEND_NODE_DEFS };
}
