/**
 * The canvas transform, stored like the workflow file's `extra.ds`: screen = (world + offset) * scale.
 * Zooming keeps the world point under the cursor fixed, which is what makes zoom feel anchored.
 */
export const MIN_SCALE = 0.1;
export const MAX_SCALE = 4;
/** Fitting shows a whole graph; it never magnifies a small one past its natural size. */
const FIT_MAX_SCALE = 1;
/** Screen pixels kept free around a fitted graph, so its edges clear the panel tabs and the window edge. */
const FIT_MARGIN = 40;

/** The scale at which world rectangle `rect` fits the screen area `area`, within the margin and the limits. */
export function fitScale([, , w, h], [, , aw, ah]) {
  const room = (screen, world) => Math.max(1, screen - 2 * FIT_MARGIN) / Math.max(1, world);
  return Math.min(FIT_MAX_SCALE, Math.max(MIN_SCALE, Math.min(room(aw, w), room(ah, h))));
}

export class View {
  constructor() {
    this.scale = 1;
    this.offset = [0, 0];
  }

  toWorld(sx, sy) {
    return [sx / this.scale - this.offset[0], sy / this.scale - this.offset[1]];
  }

  toScreen(wx, wy) {
    return [(wx + this.offset[0]) * this.scale, (wy + this.offset[1]) * this.scale];
  }

  zoomAt(factor, sx, sy) {
    const [wx, wy] = this.toWorld(sx, sy);
    this.scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale * factor));
    this.offset = [sx / this.scale - wx, sy / this.scale - wy];
  }

  panBy(dxScreen, dyScreen) {
    this.offset = [this.offset[0] + dxScreen / this.scale, this.offset[1] + dyScreen / this.scale];
  }

  /** The world rectangle under the screen rectangle [x, y, w, h]. */
  worldRect([sx, sy, sw, sh]) {
    return [...this.toWorld(sx, sy), sw / this.scale, sh / this.scale];
  }

  /** The world rectangle that a `width`×`height` screen shows, less `inset` screen pixels on each side. */
  visibleRect(width, height, inset = 0) {
    return this.worldRect([inset, inset, Math.max(0, width - 2 * inset), Math.max(0, height - 2 * inset)]);
  }

  centerOn(wx, wy, width, height) {
    this.offset = [width / 2 / this.scale - wx, height / 2 / this.scale - wy];
  }

  /** Zoom and centre so the world rectangle `rect` fills the screen area `area` ([x, y, w, h] both), within the margin. */
  fit(rect, area) {
    const [x, y, w, h] = rect;
    const [ax, ay, aw, ah] = area;
    this.scale = fitScale(rect, area);
    this.offset = [(ax + aw / 2) / this.scale - (x + w / 2), (ay + ah / 2) / this.scale - (y + h / 2)];
  }

  toDs() {
    return { scale: this.scale, offset: [...this.offset] };
  }

  fromDs(ds) {
    if (!ds) return;
    this.scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, Number(ds.scale) || 1));
    const off = ds.offset || [0, 0];
    this.offset = [Number(off[0] ?? off['0']) || 0, Number(off[1] ?? off['1']) || 0];
  }
}
