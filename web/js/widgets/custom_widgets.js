/**
 * Widget types contributed by editor extensions (docs/plugins.md, "Editor extensions") and by the
 * editor itself for its note nodes (note_widgets.js). An input gets one when its options name it in
 * `widgetType` (a STRING/INT/... input that keeps working as an ordinary widget where the extension
 * is absent) or when its type is the widget type's own name.
 * Registered before the editor reads any node definition, so every widget list sees the same types.
 */
const registered = new Map();

export class WidgetTypeTakenError extends Error {
  constructor(type, owner) {
    super(`widget type "${type}" is already registered by extension "${owner}"`);
    this.type = type;
    this.owner = owner;
  }
}

/**
 * `factory` is {create, height?, grow?}: `height` is the row's height (the least, with `grow`), and
 * `grow` lets the row take the height a resize gives the node; `owner` names it in error messages.
 */
export function registerWidgetType(type, factory, owner) {
  if (registered.has(type)) throw new WidgetTypeTakenError(type, registered.get(type).owner);
  registered.set(type, { type, owner, height: factory.height, grow: Boolean(factory.grow), create: factory.create });
}

export function customWidgetType(type) {
  return (type != null && registered.get(type)) || null;
}

/** Every registered type: the server needs them to read these widgets' values from a workflow. */
export function widgetTypeNames() {
  return [...registered.keys()];
}
