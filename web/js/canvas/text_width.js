/**
 * Width of canvas text outside a frame, for the layout's minimum node width. Each (font, text) pair
 * is measured once: layout runs for every node on every frame, and titles and labels rarely change.
 */
const measured = new Map();
let context = null;

export function textWidth(font, text) {
  const key = `${font}\n${text}`;
  if (!measured.has(key)) {
    context ??= document.createElement('canvas').getContext('2d');
    context.font = font;
    measured.set(key, context.measureText(text).width);
  }
  return measured.get(key);
}
