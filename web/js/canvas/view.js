/**
 * The canvas transform, stored like the workflow file's `extra.ds`: screen = (world + offset) * scale.
 * Zooming keeps the world point under the cursor fixed, which is what makes zoom feel anchored.
 */
export const MIN_SCALE = 0.1;
export const MAX_SCALE = 4;

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

  /** The world rectangle [x, y, w, h] that a `width`×`height` screen shows. */
  visibleRect(width, height) {
    const [x, y] = this.toWorld(0, 0);
    return [x, y, width / this.scale, height / this.scale];
  }

  centerOn(wx, wy, width, height) {
    this.offset = [width / 2 / this.scale - wx, height / 2 / this.scale - wy];
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
