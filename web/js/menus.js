/**
 * Context menus: a list of entries {label, action, disabled, submenu, checked}, placed at the pointer
 * and kept on screen; submenus open beside their entry. One menu tree is open at a time.
 */
let openRoot = null;

export function closeMenus() {
  if (openRoot) openRoot.forEach((el) => el.remove());
  openRoot = null;
}

function build(items, x, y, level) {
  const menu = document.createElement('div');
  menu.className = 'context-menu';
  menu.dataset.level = String(level);
  for (const item of items) {
    if (item === '-') { menu.appendChild(Object.assign(document.createElement('hr'), {})); continue; }
    const entry = document.createElement('div');
    entry.className = 'menu-entry' + (item.disabled ? ' disabled' : '') + (item.submenu ? ' has-submenu' : '');
    entry.textContent = (item.checked ? '✓ ' : '') + item.label;
    entry.addEventListener('pointerenter', () => {
      openRoot.filter((el) => Number(el.dataset.level) > level).forEach((el) => el.remove());
      openRoot = openRoot.filter((el) => Number(el.dataset.level) <= level);
      if (item.submenu && !item.disabled) {
        const r = entry.getBoundingClientRect();
        build(typeof item.submenu === 'function' ? item.submenu() : item.submenu, r.right, r.top, level + 1);
      }
    });
    entry.addEventListener('click', (event) => {
      event.stopPropagation();
      if (item.disabled || item.submenu) return;
      closeMenus();
      item.action();
    });
    menu.appendChild(entry);
  }
  document.body.appendChild(menu);
  const r = menu.getBoundingClientRect();
  menu.style.left = `${Math.max(0, Math.min(x, innerWidth - r.width - 4))}px`;
  menu.style.top = `${Math.max(0, Math.min(y, innerHeight - r.height - 4))}px`;
  openRoot.push(menu);
  return menu;
}

export function showMenu(x, y, items) {
  closeMenus();
  openRoot = [];
  build(items, x, y, 0);
}

addEventListener('pointerdown', (event) => {
  if (openRoot && !event.target.closest('.context-menu')) closeMenus();
}, true);
addEventListener('keydown', (event) => { if (event.key === 'Escape') closeMenus(); });
