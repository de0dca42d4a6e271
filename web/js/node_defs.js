/**
 * Reads `/object_info` node definitions into what the editor needs: sockets and widgets.
 *
 * ComfyUI's saved `widgets_values` is positional over the widgets in `input_order` (required, then
 * optional), and a widget declared with `control_after_generate` is followed by one extra, unsent value
 * ("fixed" | "increment" | "decrement" | "randomize"); an `image_upload` widget's button also holds a
 * value ("image"), which the frontend appends after the required widgets. widgetSpecs() reproduces
 * that order exactly so files round-trip, and the server's conversion reads the same slots
 * (graph/formats/editor.py, docs/compatibility.md §2.2, §C.5.2).
 */
import { customWidgetType } from './widgets/custom_widgets.js';

export const VIRTUAL_TYPES = new Set(['Reroute', 'PrimitiveNode', 'Note', 'MarkdownNote']);
export const CONTROL_VALUES = ['fixed', 'increment', 'decrement', 'randomize'];

const SCALAR_KINDS = { INT: 'int', FLOAT: 'float', STRING: 'string', BOOLEAN: 'boolean' };

/**
 * One input of a definition: `kind` is 'socket' or a widget kind (int, float, string, boolean, combo,
 * custom). `custom` names an extension's widget type that draws it: a scalar keeps its kind (and so
 * its value rules), an input whose type is itself a registered widget type becomes kind 'custom'.
 */
export function classifyInput(name, spec, section) {
  const [head, options = {}] = Array.isArray(spec) ? spec : [spec];
  if (Array.isArray(head)) return { name, section, type: 'COMBO', kind: 'combo', options: { ...options, values: head } };
  if (head === 'COMBO') return { name, section, type: 'COMBO', kind: 'combo', options: { ...options, values: options.options || [] } };
  const kind = SCALAR_KINDS[head];
  if (options.forceInput) return { name, section, type: String(head), kind: 'socket', options };
  if (!kind) {
    const own = customWidgetType(head);
    return own ? { name, section, type: String(head), kind: 'custom', custom: own.type, options }
      : { name, section, type: String(head), kind: 'socket', options };
  }
  const custom = customWidgetType(options.widgetType);
  return custom ? { name, section, type: head, kind, custom: custom.type, options } : { name, section, type: head, kind, options };
}

/** Required then optional inputs in declaration order; hidden inputs are the server's business. */
export function inputSpecs(def) {
  const specs = [];
  for (const section of ['required', 'optional']) {
    const entries = (def.input && def.input[section]) || {};
    const order = (def.input_order && def.input_order[section]) || Object.keys(entries);
    for (const name of order) if (name in entries) specs.push(classifyInput(name, entries[name], section));
  }
  return specs;
}

const controlOf = (input) => ({ name: 'control_after_generate', kind: 'combo', type: 'COMBO', control: input.name,
  options: { values: CONTROL_VALUES, default: 'randomize' } });
const uploadOf = (input) => ({ name: 'upload', kind: 'upload', type: 'IMAGEUPLOAD', target: input.name, options: { default: 'image' } });

/** Widgets in `widgets_values` order, including the control and upload companions. */
export function widgetSpecs(def) {
  const inputs = inputSpecs(def);
  return ['required', 'optional'].flatMap((section) => {
    const widgets = inputs.filter((input) => input.section === section && input.kind !== 'socket');
    return [
      ...widgets.flatMap((input) => (input.options.control_after_generate ? [input, controlOf(input)] : [input])),
      ...widgets.filter((input) => input.options.image_upload).map(uploadOf),
    ];
  });
}

export function outputSpecs(def) {
  const types = def.output || [];
  return types.map((type, i) => ({
    name: (def.output_name && def.output_name[i]) || String(type),
    type: Array.isArray(type) ? 'COMBO' : String(type),
    isList: Boolean(def.output_is_list && def.output_is_list[i]),
  }));
}

export function defaultWidgetValue(widget) {
  const o = widget.options;
  if (o.default !== undefined) return o.default;
  switch (widget.kind) {
    case 'int': case 'float': return o.min !== undefined ? Math.max(0, o.min) : 0;
    case 'boolean': return false;
    case 'combo': return o.values.length ? o.values[0] : '';
    default: return '';
  }
}

/** Socket types connect when either is "*" or their comma-separated unions intersect (docs/compatibility.md §3.1). */
export function typesCompatible(outType, inType) {
  if (outType === '*' || inType === '*' || outType === '' || inType === '') return true;
  const outs = String(outType).split(',');
  const ins = new Set(String(inType).split(','));
  return outs.some((t) => ins.has(t));
}
