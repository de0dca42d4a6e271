/** A small modal that asks for one line of text (names of nodes, groups, saved workflows). */
export function askText(title, initial = '') {
  return new Promise((resolve) => {
    const overlay = document.createElement('div');
    overlay.className = 'modal';
    overlay.innerHTML = '<form class="modal-card"><label></label><input name="value" spellcheck="false"><div class="modal-buttons"><button type="button" value="cancel">Cancel</button><button type="submit">OK</button></div></form>';
    overlay.querySelector('label').textContent = title;
    const input = overlay.querySelector('input');
    input.value = initial;
    const done = (value) => { overlay.remove(); resolve(value); };
    overlay.querySelector('form').addEventListener('submit', (e) => { e.preventDefault(); done(input.value); });
    overlay.querySelector('button[value=cancel]').addEventListener('click', () => done(null));
    input.addEventListener('keydown', (e) => { e.stopPropagation(); if (e.key === 'Escape') done(null); });
    document.body.appendChild(overlay);
    input.focus();
    input.select();
  });
}
