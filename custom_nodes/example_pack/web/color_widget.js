/**
 * The example pack's editor extension: a colour-picker widget for inputs declared with
 * `widgetType: "EXAMPLE_COLOR"` (see ../tint.py).
 *
 * An extension is an ES module whose default export is an extension object; the editor imports
 * every script `/extensions` lists and registers that object (docs/plugins.md, "Editor extensions").
 * Nothing is imported from the editor, so the module works whatever URL it is served from.
 */

const HEX_COLOR = /^#[0-9a-fA-F]{6}$/;

/** The swatch and picker; `setValue` stores the value in the node, `update` shows a value set elsewhere. */
function createColorWidget({ name, value, setValue }) {
  const element = document.createElement('label');
  element.className = 'example-pack-color';
  element.style.cssText = 'display:flex;align-items:center;gap:6px;font:12px sans-serif;';

  const caption = document.createElement('span');
  caption.textContent = name;
  caption.style.flex = '1';

  const picker = document.createElement('input');
  picker.type = 'color';
  picker.title = 'Pick the tint colour';
  picker.style.cssText = 'width:32px;height:18px;border:none;padding:0;background:none;cursor:pointer;';

  const code = document.createElement('code');

  function show(color) {
    const valid = HEX_COLOR.test(color);
    picker.value = valid ? color.toLowerCase() : '#000000';
    code.textContent = valid ? color.toLowerCase() : `${color} (invalid)`;
  }

  picker.addEventListener('input', () => {
    show(picker.value);
    setValue(picker.value);
  });

  show(String(value));
  element.append(caption, picker, code);
  return { element, update: (color) => show(String(color)) };
}

export default {
  name: 'example_pack.color_widget',
  widgets: {
    EXAMPLE_COLOR: { height: 24, create: createColorWidget },
  },
};
