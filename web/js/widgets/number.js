/**
 * Number widgets honour min/max/step/round from the input's options (docs/compatibility.md §1.5): INT values snap to
 * whole steps counted from min, FLOAT values snap to `round` (or the step) and are cleaned of binary
 * float noise so 0.1 + 0.2 shows as 0.3.
 */
export function clampNumber(widget, value) {
  const o = widget.options;
  const min = o.min ?? -Infinity;
  const max = o.max ?? Infinity;
  let v = Math.min(max, Math.max(min, Number(value)));
  if (!Number.isFinite(v)) v = Number.isFinite(min) ? min : 0;
  if (widget.kind === 'int') {
    const step = o.step || 1;
    const base = Number.isFinite(min) ? min : 0;
    v = base + Math.round((v - base) / step) * step;
    if (v > max) v -= step;
    return Math.round(v);
  }
  const snap = o.round === false ? 0 : o.round || o.step || 0;
  if (snap > 0) v = Math.round(v / snap) * snap;
  const digits = snap > 0 ? Math.min(10, Math.max(0, Math.ceil(-Math.log10(snap) - 1e-9))) : 10;
  return Math.min(max, Math.max(min, Number(v.toFixed(digits))));
}

export function stepNumber(widget, value, direction) {
  const step = widget.options.step || (widget.kind === 'int' ? 1 : 0.1);
  return clampNumber(widget, Number(value) + direction * step);
}

/** Horizontal drag: one step per 6 screen pixels, as fine as the arrows and as fast as a scrub. */
export function dragNumber(widget, startValue, dxScreen) {
  const step = widget.options.step || (widget.kind === 'int' ? 1 : 0.1);
  return clampNumber(widget, Number(startValue) + Math.trunc(dxScreen / 6) * step);
}
