/**
 * The editor's live parts in one object, so that each piece of wiring (sidebar, canvas actions,
 * commands, bindings) takes one argument: what boot read from the server, the execution state, the
 * editing session, and, once boot made them, the canvas controller and the sidebar panels.
 */
import { Editor } from './editor.js';
import { ExecutionState } from './execution.js';

const TITLE_SUFFIX = ' - Loom';

export function createSession(api, startup) {
  const execution = new ExecutionState(api);
  const editor = new Editor(startup.defs, execution);
  editor.showMinimap = true;
  execution.addEventListener('change', () => editor.markDirty());
  return {
    api, execution, editor, ...startup, controller: null, workflows: null, queuePanel: null,
    /** Shows a workflow; the name of the file it came from becomes the page title. */
    open(json, name = null) {
      editor.load(json);
      if (name) this.nameFile(name);
    },
    nameFile(name) {
      document.title = `${name}${TITLE_SUFFIX}`;
    },
    /** The open file's name without extension, for the save dialog. */
    fileName() {
      const title = document.title.endsWith(TITLE_SUFFIX) ? document.title.slice(0, -TITLE_SUFFIX.length) : document.title;
      return title.replace(/\.json$/, '');
    },
  };
}
