/**
 * Drawing of one widget row. Numbers and combos get arrow ends (click to step), booleans a toggle,
 * text its value, multiline a box with as many lines as its (resizable) height holds, upload a button.
 * A widget fed by a link is drawn greyed with "linked" in place of its value, as its stored value is
 * not what will run.
 */
import { THEME } from './colors.js';

const TEXT_LINE_H = 15;

export function formatNumber(widget, value) {
  if (widget.kind === 'int') return String(value);
  const precision = widget.options.round || widget.options.step || 0.01;
  const digits = Math.min(6, Math.max(0, Math.ceil(-Math.log10(precision) - 1e-9)));
  return Number(value).toFixed(digits);
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, r);
}

function clipText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + '…').width <= width) lo = mid; else hi = mid - 1;
  }
  return text.slice(0, lo) + '…';
}

function arrows(ctx, rect) {
  const cy = rect.y + rect.h / 2;
  ctx.fillStyle = THEME.textDim;
  ctx.beginPath(); ctx.moveTo(rect.x + 6, cy); ctx.lineTo(rect.x + 12, cy - 5); ctx.lineTo(rect.x + 12, cy + 5); ctx.fill();
  const r = rect.x + rect.w;
  ctx.beginPath(); ctx.moveTo(r - 6, cy); ctx.lineTo(r - 12, cy - 5); ctx.lineTo(r - 12, cy + 5); ctx.fill();
}

export function drawWidget(ctx, rect, value, state) {
  const { widget } = rect;
  const cy = rect.y + rect.h / 2;
  ctx.globalAlpha = state.linked ? 0.45 : 1;
  roundRect(ctx, rect.x, rect.y, rect.w, rect.h, widget.kind === 'string' && widget.options.multiline ? 4 : rect.h / 2);
  ctx.fillStyle = THEME.widget;
  ctx.fill();
  ctx.strokeStyle = state.error ? THEME.error : '#3a3e45';
  ctx.lineWidth = state.error ? 2 : 1;
  ctx.stroke();
  ctx.font = '12px sans-serif';
  ctx.textBaseline = 'middle';
  const label = widget.name;
  if (widget.kind === 'upload') {
    ctx.fillStyle = THEME.widgetText;
    ctx.textAlign = 'center';
    ctx.fillText('choose file to upload', rect.x + rect.w / 2, cy);
    ctx.globalAlpha = 1;
    return;
  }
  if (widget.kind === 'string' && widget.options.multiline) {
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    ctx.fillStyle = THEME.widgetText;
    const lines = String(state.linked ? 'linked' : value ?? '').split('\n');
    const fitting = Math.max(1, Math.floor((rect.h - 4) / TEXT_LINE_H));
    lines.slice(0, fitting).forEach((line, i) => ctx.fillText(clipText(ctx, line, rect.w - 12), rect.x + 6, rect.y + 5 + i * TEXT_LINE_H));
    ctx.globalAlpha = 1;
    return;
  }
  const stepped = widget.kind === 'int' || widget.kind === 'float' || widget.kind === 'combo';
  if (stepped && !state.linked) arrows(ctx, rect);
  const inset = stepped ? 18 : 10;
  let shown;
  if (state.linked) shown = 'linked';
  else if (widget.kind === 'int' || widget.kind === 'float') shown = formatNumber(widget, value);
  else if (widget.kind === 'boolean') shown = value ? 'true' : 'false';
  else shown = String(value ?? '');
  const room = rect.w - inset * 2 - (widget.kind === 'boolean' && !state.linked ? 40 : 0);
  shown = clipText(ctx, shown, room * 0.7);
  ctx.textAlign = 'left';
  ctx.fillStyle = state.error ? THEME.error : THEME.textDim;
  ctx.fillText(clipText(ctx, label, room - ctx.measureText(shown).width - 10), rect.x + inset, cy);
  ctx.textAlign = 'right';
  ctx.fillStyle = THEME.widgetText;
  if (widget.kind === 'boolean' && !state.linked) {
    const tx = rect.x + rect.w - 34;
    roundRect(ctx, tx, rect.y + 5, 24, rect.h - 10, (rect.h - 10) / 2);
    ctx.fillStyle = value ? '#4c8bf5' : '#555a62';
    ctx.fill();
    ctx.fillStyle = '#fff';
    ctx.beginPath();
    ctx.arc(value ? tx + 24 - (rect.h - 10) / 2 : tx + (rect.h - 10) / 2, cy, (rect.h - 14) / 2, 0, Math.PI * 2);
    ctx.fill();
    ctx.fillStyle = THEME.widgetText;
    ctx.fillText(shown, tx - 6, cy);
  } else {
    ctx.fillText(shown, rect.x + rect.w - inset, cy);
  }
  ctx.globalAlpha = 1;
}
