/**
 * The node search: fuzzy matching over display names, class names, categories and descriptions.
 * Scoring favours what people type: a prefix of the name beats a substring, which beats letters in
 * order; matches in the name count more than in the category or description, and among equal matches
 * advanced, testing and deprecated nodes come last.
 */
import { inputSpecs, outputSpecs, typesCompatible } from './node_defs.js';

/** Score of `query` as a subsequence of `text`: 0 when it is not one; consecutive and word-start hits add. */
export function fuzzyScore(query, text) {
  const q = query.toLowerCase();
  const t = String(text || '').toLowerCase();
  if (!q) return 1;
  if (t.startsWith(q)) return 100 + q.length;
  const at = t.indexOf(q);
  if (at >= 0) return 60 + q.length - at * 0.1;
  let score = 0;
  let ti = 0;
  let run = 0;
  for (const ch of q) {
    const found = t.indexOf(ch, ti);
    if (found < 0) return 0;
    run = found === ti ? run + 1 : 0;
    const wordStart = found === 0 || /[\s_/().-]/.test(t[found - 1]) || (text[found] >= 'A' && text[found] <= 'Z');
    score += 1 + run * 2 + (wordStart ? 3 : 0);
    ti = found + 1;
  }
  return score;
}

function isSpecialised(def) {
  const category = String(def.category || '');
  return category.startsWith('advanced') || category.startsWith('_for_testing') || Boolean(def.deprecated);
}

/** `filter`: {type, fromOutput} keeps nodes that can take (or give) that type. */
export function searchNodes(defs, query, filter = null, limit = 40) {
  const results = [];
  for (const def of Object.values(defs)) {
    if (filter) {
      const ok = filter.fromOutput
        ? inputSpecs(def).some((i) => typesCompatible(filter.type, i.type))
        : outputSpecs(def).some((o) => typesCompatible(o.type, filter.type));
      if (!ok) continue;
    }
    const match = Math.max(fuzzyScore(query, def.display_name) * 1.2, fuzzyScore(query, def.name) * 1.1,
      fuzzyScore(query, def.category) * 0.6, fuzzyScore(query, def.description) * 0.3);
    // Among equal matches, advanced, testing and deprecated nodes come after the everyday ones
    // ("save": Save Image before Save Checkpoint, which sits under advanced/).
    const score = match > 0 && isSpecialised(def) ? match - 1 : match;
    if (score > 0) results.push({ def, score });
  }
  results.sort((a, b) => b.score - a.score || a.def.display_name.localeCompare(b.def.display_name));
  return results.slice(0, limit).map((r) => r.def);
}

/** Opens the dialog at screen (x, y); resolves with the chosen node type or null. */
export function openSearch(defs, x, y, { filter = null, initial = '' } = {}) {
  return new Promise((resolve) => {
    const dialog = document.createElement('div');
    dialog.className = 'search-dialog';
    dialog.innerHTML = '<input class="search-input" placeholder="Search nodes…" spellcheck="false"><div class="search-filter"></div><ul class="search-results"></ul>';
    const input = dialog.querySelector('input');
    const list = dialog.querySelector('ul');
    if (filter) dialog.querySelector('.search-filter').textContent = `${filter.fromOutput ? 'takes' : 'gives'} ${filter.type}`;
    input.value = initial;
    let items = [];
    let active = 0;
    const close = (value) => { dialog.remove(); removeEventListener('pointerdown', outside, true); resolve(value); };
    const outside = (event) => { if (!dialog.contains(event.target)) close(null); };
    const render = () => {
      items = searchNodes(defs, input.value.trim(), filter);
      active = Math.min(active, Math.max(0, items.length - 1));
      list.replaceChildren(...items.map((def, i) => {
        const li = document.createElement('li');
        li.className = i === active ? 'active' : '';
        li.dataset.type = def.name;
        li.innerHTML = '<span class="name"></span><span class="category"></span>';
        li.querySelector('.name').textContent = def.display_name;
        li.querySelector('.category').textContent = def.category;
        li.title = def.description || '';
        li.addEventListener('click', () => close(def.name));
        return li;
      }));
    };
    input.addEventListener('input', () => { active = 0; render(); });
    input.addEventListener('keydown', (event) => {
      event.stopPropagation();
      if (event.key === 'Escape') close(null);
      else if (event.key === 'ArrowDown') { active = Math.min(items.length - 1, active + 1); render(); event.preventDefault(); }
      else if (event.key === 'ArrowUp') { active = Math.max(0, active - 1); render(); event.preventDefault(); }
      else if (event.key === 'Enter' && items[active]) close(items[active].name);
    });
    document.body.appendChild(dialog);
    dialog.style.left = `${Math.max(4, Math.min(x, innerWidth - dialog.offsetWidth - 4))}px`;
    dialog.style.top = `${Math.max(4, Math.min(y, innerHeight - 380))}px`;
    setTimeout(() => addEventListener('pointerdown', outside, true), 0);
    render();
    input.focus();
  });
}
