/**
 * The text of the editor's note nodes, as DOM widgets laid over the node body (canvas/dom_widgets.js):
 * a Note is a plain text area; a MarkdownNote shows its markdown rendered, and a double-click swaps
 * in a text area on the source. Both take the node's whole body and grow with it. The text is stored
 * once, when the text area loses focus, so a paragraph of typing is one undo step, not one per key.
 */
import { renderMarkdown } from '../markdown.js';
import { registerWidgetType } from './custom_widgets.js';

export const NOTE_TEXT = 'LOOM_NOTE_TEXT';
export const MARKDOWN_TEXT = 'LOOM_MARKDOWN_TEXT';
const OWNER = 'Loom';
/** Small enough that notes from ComfyUI files keep their size (its smallest are about 58 high). */
const LEAST_HEIGHT = 40;

function textArea(value, placeholder, setValue) {
  const area = Object.assign(document.createElement('textarea'), { className: 'note-text', value: String(value), placeholder, spellcheck: false });
  area.addEventListener('change', () => setValue(area.value));
  return area;
}

registerWidgetType(NOTE_TEXT, {
  height: LEAST_HEIGHT,
  grow: true,
  create({ value, setValue }) {
    const area = textArea(value, 'Note', setValue);
    return { element: area, update: (next) => { area.value = String(next); } };
  },
}, OWNER);

registerWidgetType(MARKDOWN_TEXT, {
  height: LEAST_HEIGHT,
  grow: true,
  create({ value, setValue }) {
    const element = Object.assign(document.createElement('div'), { className: 'note-markdown' });
    const shown = Object.assign(document.createElement('div'), { className: 'markdown-view', title: 'Double-click to edit' });
    const area = textArea(value, 'Markdown', setValue);
    const render = (text) => { shown.innerHTML = renderMarkdown(text); };
    area.hidden = true;
    render(value);
    shown.addEventListener('dblclick', () => {
      shown.hidden = true;
      area.hidden = false;
      area.focus();
    });
    area.addEventListener('blur', () => {
      render(area.value);
      area.hidden = true;
      shown.hidden = false;
    });
    element.append(shown, area);
    return { element, update: (next) => { area.value = String(next); render(next); } };
  },
}, OWNER);
