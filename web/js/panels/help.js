/** The shortcuts overlay, generated from the keymap so it always tells the truth. */
import { KEYMAP, POINTER_HELP } from '../keymap.js';

const pretty = (combo) => combo.split('+').map((k) => ({ mod: 'Ctrl', shift: 'Shift', alt: 'Alt', enter: 'Enter', delete: 'Del', backspace: 'Backspace', escape: 'Esc' }[k] || k.toUpperCase())).join('+');

export function toggleHelp() {
  const existing = document.querySelector('.help-overlay');
  if (existing) { existing.remove(); return; }
  const overlay = document.createElement('div');
  overlay.className = 'help-overlay';
  const rows = KEYMAP.map((e) => [pretty(e.combo), e.label]).concat(POINTER_HELP);
  overlay.innerHTML = '<div class="help-card"><h2>Keyboard and mouse</h2><table></table><p>Press ? or Esc to close.</p></div>';
  const table = overlay.querySelector('table');
  for (const [keys, label] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = keys;
    tr.insertCell().textContent = label;
  }
  overlay.addEventListener('click', (e) => { if (e.target === overlay) overlay.remove(); });
  document.body.appendChild(overlay);
}

export function closeHelp() {
  const existing = document.querySelector('.help-overlay');
  if (existing) existing.remove();
  return Boolean(existing);
}
