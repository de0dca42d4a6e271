/**
 * Editor extensions (docs/plugins.md, "Editor extensions"): every script `/extensions` lists is
 * imported as an ES module, and its default export, an object {name, widgets, menuItems, setup,
 * onGraphChanged, onExecutionEvent}, is checked and registered. Extension code is someone else's:
 * a script that fails to import, an object that is not a valid extension, or a hook that throws is
 * reported with a toast and that extension is skipped from then on, while the editor keeps working.
 * A listed module without a default export is a helper another script imports, and is left alone.
 * Problems of the Python side of plugins (`/loom/plugins`) are listed in a notice above the canvas.
 */
import { customWidgetType, registerWidgetType } from './widgets/custom_widgets.js';
import { toast } from './toast.js';

const HOOKS = ['setup', 'onGraphChanged', 'onExecutionEvent'];

export class InvalidExtensionError extends Error {
  constructor(source, reason) {
    super(reason);
    this.source = source;
    this.reason = reason;
  }
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

/** The default export, checked whole before anything of it is registered. */
function checkExtension(value, url, takenNames) {
  const fail = (reason) => { throw new InvalidExtensionError(url, reason); };
  if (!isObject(value)) fail('the default export is not an extension object');
  if (typeof value.name !== 'string' || !value.name) fail('the extension has no name');
  if (takenNames.has(value.name)) fail(`another extension is already named "${value.name}"`);
  const widgets = value.widgets ?? {};
  if (!isObject(widgets)) fail(`"${value.name}": widgets must be an object of widget types`);
  for (const [type, factory] of Object.entries(widgets)) {
    if (!isObject(factory) || typeof factory.create !== 'function') fail(`"${value.name}": widget ${type} has no create() function`);
    if (factory.height !== undefined && !(Number(factory.height) > 0)) fail(`"${value.name}": widget ${type} height must be a positive number`);
    const owner = customWidgetType(type);
    if (owner) fail(`"${value.name}": widget type ${type} is already registered by "${owner.owner}"`);
  }
  const menuItems = value.menuItems ?? [];
  if (!Array.isArray(menuItems) || menuItems.some((item) => !isObject(item) || typeof item.label !== 'string' || typeof item.onSelect !== 'function')) {
    fail(`"${value.name}": menuItems must be a list of { label, onSelect }`);
  }
  for (const hook of HOOKS) {
    if (value[hook] !== undefined && typeof value[hook] !== 'function') fail(`"${value.name}": ${hook} is not a function`);
  }
  return { extension: value, widgets, menuItems };
}

export class ExtensionHost {
  constructor(api) {
    this.api = api;
    this.loaded = [];
    this.failures = [];
    this.context = null;
  }

  /** Import and register every listed script; runs before the editor reads any node definition. */
  async load() {
    let urls;
    try {
      urls = await this.api.json('/extensions');
    } catch (error) {
      this.fail('/extensions', error);
      return;
    }
    const outcomes = await Promise.allSettled(urls.map((url) => import(this.api.base + url)));
    const names = new Set();
    outcomes.forEach((outcome, i) => {
      if (outcome.status === 'rejected') { this.fail(urls[i], outcome.reason); return; }
      if (outcome.value.default === undefined) return;
      try {
        const checked = checkExtension(outcome.value.default, urls[i], names);
        for (const [type, factory] of Object.entries(checked.widgets)) registerWidgetType(type, factory, checked.extension.name);
        names.add(checked.extension.name);
        this.loaded.push({ ...checked, url: urls[i], broken: false });
      } catch (error) {
        this.fail(urls[i], error);
      }
    });
  }

  /** `setup` for each extension, then graph and server events for as long as the page lives. */
  start(editor, defs) {
    this.context = { get graph() { return editor.graph; }, nodeDefs: defs, notify: (text) => toast(String(text)) };
    for (const entry of this.loaded) this.call(entry, 'setup', [this.context]);
    editor.addEventListener('change', () => { for (const entry of this.loaded) this.call(entry, 'onGraphChanged', [this.context]); });
    this.api.addEventListener('server-event', (event) => {
      for (const entry of this.loaded) this.call(entry, 'onExecutionEvent', [event.detail.type, event.detail.data, this.context]);
    });
  }

  /** Entries for the editor's menu, from extensions that have not failed. */
  menuEntries() {
    return this.loaded.filter((entry) => !entry.broken).flatMap((entry) => entry.menuItems.map((item) => ({
      label: item.label,
      action: () => this.run(entry, `menu entry "${item.label}"`, () => item.onSelect(this.context)),
    })));
  }

  call(entry, hook, args) {
    const fn = entry.extension[hook];
    if (fn) this.run(entry, hook, () => fn.apply(entry.extension, args));
  }

  /** Runs extension code; a throw or a rejected promise disables that extension. */
  run(entry, what, code) {
    if (entry.broken) return;
    const disable = (error) => {
      if (entry.broken) return;
      entry.broken = true;
      this.fail(`${entry.extension.name} (${what})`, error);
    };
    try {
      const result = code();
      if (result && typeof result.then === 'function') result.then(null, disable);
    } catch (error) {
      disable(error);
    }
  }

  fail(source, error) {
    const message = error && error.message ? error.message : String(error);
    this.failures.push({ source, message });
    console.warn(`editor extension ${source} skipped`, error);
    toast(`Extension ${source} was skipped: ${message}`, { kind: 'error' });
  }
}

/** One line per plugin that did not load cleanly, from the server's `/loom/plugins` reports. */
export function pluginProblems(reports) {
  const problems = [];
  for (const report of reports) {
    if (report.status === 'failed') problems.push({ name: report.name, text: report.error });
    for (const refusal of report.refused) problems.push({ name: report.name, text: `node ${refusal.class_type} refused: ${refusal.reason}` });
    if (report.web_error) problems.push({ name: report.name, text: `web files not served: ${report.web_error}` });
  }
  return problems;
}

/** The notice above the canvas listing plugin problems; nothing is shown when there are none. */
export async function showPluginNotice(api, before) {
  let reports;
  try {
    reports = await api.json('/loom/plugins');
  } catch (error) {
    console.warn('could not read /loom/plugins', error);
    return null;
  }
  const problems = pluginProblems(reports);
  if (!problems.length) return null;
  const notice = Object.assign(document.createElement('div'), { id: 'plugin-notice' });
  const heading = Object.assign(document.createElement('strong'), {
    textContent: `${problems.length} plugin problem${problems.length > 1 ? 's' : ''}: the rest of Loom works; see the server log for tracebacks.`,
  });
  const list = document.createElement('ul');
  for (const problem of problems) {
    const item = document.createElement('li');
    item.append(Object.assign(document.createElement('b'), { textContent: problem.name }), `: ${problem.text}`);
    list.append(item);
  }
  const close = Object.assign(document.createElement('button'), { textContent: 'Dismiss', className: 'dismiss' });
  close.addEventListener('click', () => notice.remove());
  notice.append(close, heading, list);
  before.insertAdjacentElement('beforebegin', notice);
  return notice;
}
