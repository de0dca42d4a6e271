/**
 * Typing into a widget: a real <input> or <textarea> placed over the widget, so the browser handles
 * selection, IME and clipboard. Enter (Ctrl+Enter in multiline) or leaving the field commits, Escape
 * cancels; the promise gives the text or null.
 */
export function openTextEditor(host, rect, value, { multiline = false, numeric = false } = {}) {
  return new Promise((resolve) => {
    const field = document.createElement(multiline ? 'textarea' : 'input');
    field.className = 'widget-editor';
    if (numeric) field.inputMode = 'decimal';
    field.value = value == null ? '' : String(value);
    Object.assign(field.style, { left: `${rect.x}px`, top: `${rect.y}px`, width: `${rect.w}px`, height: `${multiline ? Math.max(rect.h, 90) : rect.h}px` });
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      field.remove();
      resolve(result);
    };
    field.addEventListener('keydown', (event) => {
      event.stopPropagation();
      if (event.key === 'Escape') finish(null);
      else if (event.key === 'Enter' && (!multiline || event.ctrlKey)) { event.preventDefault(); finish(field.value); }
    });
    field.addEventListener('blur', () => finish(field.value));
    host.appendChild(field);
    field.focus();
    field.select();
  });
}
