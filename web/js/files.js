/**
 * Workflow files in and out: a dropped or opened `.json` (editor format, or an API prompt), a PNG
 * with a `workflow` text chunk, or one with only a `prompt` chunk (laid out automatically).
 */
import { promptToGraph } from './auto_layout.js';
import { readPngText } from './png_meta.js';

export class WorkflowFileError extends Error {
  constructor(name, reason) {
    super(`${name}: ${reason}`);
    this.fileName = name;
    this.reason = reason;
  }
}

const looksLikePrompt = (json) => json && typeof json === 'object' && !Array.isArray(json) && !('nodes' in json)
  && Object.values(json).length > 0 && Object.values(json).every((v) => v && typeof v === 'object' && 'class_type' in v);

/** Parses a file into a v0.4 workflow object (a Graph's JSON). */
export async function readWorkflowFile(file, defs) {
  const name = file.name || 'file';
  if (file.type === 'image/png' || name.toLowerCase().endsWith('.png')) {
    let texts;
    try { texts = readPngText(await file.arrayBuffer()); } catch (error) { throw new WorkflowFileError(name, error.message); }
    if (texts.workflow) return parseJson(name, texts.workflow);
    if (texts.prompt) return promptToGraph(parseJson(name, texts.prompt), defs).toJSON();
    throw new WorkflowFileError(name, 'the PNG carries no "workflow" or "prompt" metadata');
  }
  const json = parseJson(name, await file.text());
  if (looksLikePrompt(json)) return promptToGraph(json, defs).toJSON();
  if (!json || !Array.isArray(json.nodes)) throw new WorkflowFileError(name, 'not a workflow: no "nodes" list');
  return json;
}

function parseJson(name, text) {
  try { return JSON.parse(text); } catch (error) { throw new WorkflowFileError(name, `invalid JSON (${error.message})`); }
}

export function downloadJson(filename, value) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(value, null, 2)], { type: 'application/json' }));
  const a = Object.assign(document.createElement('a'), { href: url, download: filename });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function pickFile(accept) {
  return new Promise((resolve) => {
    const input = Object.assign(document.createElement('input'), { type: 'file', accept });
    input.addEventListener('change', () => resolve(input.files[0] || null));
    input.click();
  });
}
