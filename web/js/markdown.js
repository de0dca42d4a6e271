/**
 * Markdown for MarkdownNote and node help pages, rendered so that a shared workflow file cannot
 * inject anything: the whole text is HTML-escaped first, and only then is a small subset turned into
 * tags: headings, paragraphs, bold and italic, inline and fenced code, bullet and numbered lists,
 * tables, quotes, rules, `<br>` line breaks, and links whose target is http(s), opened in a new tab
 * with rel="noopener noreferrer". Everything else (raw HTML, other link schemes) stays on the page as
 * the text it is. Pictures are shown only when the caller names the folder they live in
 * (`assetBase`, for the help pages the server serves) and only from a relative path inside it;
 * otherwise their alt text stands in, so a note can never make the browser fetch anything.
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
const RULE = /^\s*(?:-{3,}|\*{3,}|_{3,})\s*$/;
/** Matched on escaped text, where `>` already reads `&gt;`. */
const QUOTE = /^\s*&gt;\s?(.*)$/;
const TABLE_ROW = /^\s*\|.*\|\s*$/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$/;
/** No scheme, not absolute, no `..` part: a path that stays inside the folder it is joined to. */
const RELATIVE_PATH = /^(?![a-z][a-z0-9+.-]*:)(?!\/)(?!(?:.*\/)?\.\.(?:\/|$))[^\s?#]+$/i;

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function emphasis(text) {
  return text
    .replace(/(\*\*|__)(?=\S)(.+?)\1/g, '<strong>$2</strong>')
    .replace(/\*(?=[^\s*])([^*]+?)\*/g, '<em>$1</em>')
    .replace(/(?<!\w)_(?=[^\s_])([^_]+?)_(?!\w)/g, '<em>$1</em>');
}

function image(alt, src, assetBase) {
  if (!assetBase || !RELATIVE_PATH.test(src)) return alt;
  return `<img src="${assetBase}${src.replace(/^(?:\.\/)+/, '')}" alt="${alt}" loading="lazy">`;
}

/** One escaped line of text: code spans first (their content is literal), then pictures, links, emphasis. */
function inline(text, assetBase) {
  const parked = [];
  const park = (html) => `\u0000${parked.push(html) - 1}\u0000`;
  const out = emphasis(text
    .replace(/`([^`]+)`/g, (_, code) => park(`<code>${code}</code>`))
    .replace(/!\[([^\]]*)\]\(([^)\s]*)\)/g, (_, alt, src) => park(image(alt, src, assetBase)))
    .replace(/\[([^\]]+)\]\(([^)\s]*)\)/g, (_, label, href) => (SAFE_HREF.test(href)
      ? park(`<a href="${href}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`)
      : label))
    .replace(/&lt;br\s*\/?&gt;/gi, () => park('<br>')));
  const restore = (html) => html.replace(PARKED, (_, i) => restore(parked[Number(i)]));
  return restore(out);
}

const cells = (row) => row.trim().replace(/^\|/, '').replace(/\|$/, '').split('|').map((cell) => cell.trim());

/** A header row, its rule and the body rows from `lines[start]` on; returns the HTML and the next index. */
function table(lines, start, assetBase) {
  const row = (line, tag) => `<tr>${cells(line).map((cell) => `<${tag}>${inline(cell, assetBase)}</${tag}>`).join('')}</tr>`;
  let end = start + 2;
  while (end < lines.length && TABLE_ROW.test(lines[end])) end++;
  const body = lines.slice(start + 2, end).map((line) => row(line, 'td')).join('');
  return [`<table><thead>${row(lines[start], 'th')}</thead><tbody>${body}</tbody></table>`, end];
}

/**
 * The HTML for `source`; every character of it came either from escaped text or from the rules above.
 * `options.assetBase` is the URL folder (ending in '/') that a help page's relative pictures are in.
 */
export function renderMarkdown(source, options = {}) {
  const assetBase = options?.assetBase ?? null;
  // A NUL typed into the text must not pass for a parked span.
  const lines = escapeHtml(String(source ?? '').replace(/\u0000/g, '\uFFFD')).split(/\r?\n/);
  const html = [];
  let paragraph = [];
  let list = null;
  let quote = [];
  const endParagraph = () => {
    if (paragraph.length) html.push(`<p>${paragraph.join('<br>')}</p>`);
    paragraph = [];
  };
  const endList = () => {
    if (list) html.push(`<${list.tag}>${list.items.map((item) => `<li>${item}</li>`).join('')}</${list.tag}>`);
    list = null;
  };
  const endQuote = () => {
    if (quote.length) html.push(`<blockquote><p>${quote.join('<br>')}</p></blockquote>`);
    quote = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const item = BULLET.exec(line) || NUMBERED.exec(line);
    const heading = HEADING.exec(line);
    const quoted = QUOTE.exec(line);
    const tableStart = TABLE_ROW.test(line) && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]);
    if (quoted) {
      endParagraph();
      endList();
      if (quoted[1].trim()) quote.push(inline(quoted[1], assetBase));
      continue;
    }
    endQuote();
    if (!FENCE.test(line) && !heading && !item && !tableStart && !RULE.test(line) && line.trim()) {
      endList();
      paragraph.push(inline(line, assetBase));
      continue;
    }
    endParagraph();
    if (item) {
      const tag = BULLET.test(line) ? 'ul' : 'ol';
      if (list && list.tag !== tag) endList();
      list = list || { tag, items: [] };
      list.items.push(inline(item[1], assetBase));
      continue;
    }
    endList();
    if (heading) {
      html.push(`<h${heading[1].length}>${inline(heading[2], assetBase)}</h${heading[1].length}>`);
    } else if (tableStart) {
      const [tableHtml, next] = table(lines, i, assetBase);
      html.push(tableHtml);
      i = next - 1;
    } else if (RULE.test(line)) {
      html.push('<hr>');
    } else if (FENCE.test(line)) {
      const code = [];
      while (++i < lines.length && !FENCE.test(lines[i])) code.push(lines[i]);
      html.push(`<pre><code>${code.join('\n')}</code></pre>`);
    }
  }
  endParagraph();
  endList();
  endQuote();
  return html.join('');
}
