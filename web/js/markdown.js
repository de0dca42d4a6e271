/**
 * Markdown for MarkdownNote, rendered so that a shared workflow file cannot inject anything: the
 * whole text is HTML-escaped first, and only then is a small subset turned into tags: headings,
 * paragraphs, bold and italic, inline and fenced code, bullet and numbered lists, and links whose
 * target is http(s), opened in a new tab with rel="noopener noreferrer". Everything else (raw HTML,
 * other link schemes) stays on the page as the text it is.
 */
const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Checked after escaping, so the href holds no quote that could end its attribute. */
const SAFE_HREF = /^https?:\/\/\S+$/i;
/** Spans already turned into HTML wait behind this mark, so later rules cannot rewrite their insides. */
const PARKED = /\u0000(\d+)\u0000/g;
const FENCE = /^\s*```/;
const HEADING = /^(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function emphasis(text) {
  return text
    .replace(/(\*\*|__)(?=\S)(.+?)\1/g, '<strong>$2</strong>')
    .replace(/\*(?=[^\s*])([^*]+?)\*/g, '<em>$1</em>')
    .replace(/(?<!\w)_(?=[^\s_])([^_]+?)_(?!\w)/g, '<em>$1</em>');
}

/** One escaped line of text: code spans first (their content is literal), then links, then emphasis. */
function inline(text) {
  const parked = [];
  const park = (html) => `\u0000${parked.push(html) - 1}\u0000`;
  const out = emphasis(text
    .replace(/`([^`]+)`/g, (_, code) => park(`<code>${code}</code>`))
    .replace(/\[([^\]]+)\]\(([^)\s]*)\)/g, (_, label, href) => (SAFE_HREF.test(href)
      ? park(`<a href="${href}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`)
      : label)));
  const restore = (html) => html.replace(PARKED, (_, i) => restore(parked[Number(i)]));
  return restore(out);
}

/** The HTML for `source`; every character of it came either from escaped text or from the rules above. */
export function renderMarkdown(source) {
  // A NUL typed into the text must not pass for a parked span.
  const lines = escapeHtml(String(source ?? '').replace(/\u0000/g, '\uFFFD')).split(/\r?\n/);
  const html = [];
  let paragraph = [];
  let list = null;
  const endParagraph = () => {
    if (paragraph.length) html.push(`<p>${paragraph.join('<br>')}</p>`);
    paragraph = [];
  };
  const endList = () => {
    if (list) html.push(`<${list.tag}>${list.items.map((item) => `<li>${item}</li>`).join('')}</${list.tag}>`);
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const item = BULLET.exec(line) || NUMBERED.exec(line);
    const heading = HEADING.exec(line);
    if (!FENCE.test(line) && !heading && !item && line.trim()) {
      endList();
      paragraph.push(inline(line));
      continue;
    }
    endParagraph();
    if (item) {
      const tag = BULLET.test(line) ? 'ul' : 'ol';
      if (list && list.tag !== tag) endList();
      list = list || { tag, items: [] };
      list.items.push(inline(item[1]));
      continue;
    }
    endList();
    if (heading) {
      html.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`);
    } else if (FENCE.test(line)) {
      const code = [];
      while (++i < lines.length && !FENCE.test(lines[i])) code.push(lines[i]);
      html.push(`<pre><code>${code.join('\n')}</code></pre>`);
    }
  }
  endParagraph();
  endList();
  return html.join('');
}
