/** Every output image of this session, newest first; click for the full-size view. */
import { openLightbox } from './lightbox.js';

export class Gallery {
  constructor(root, api, execution) {
    this.root = root;
    this.api = api;
    execution.addEventListener('images', (e) => this.add(e.detail));
  }

  add(images) {
    const grid = this.root.querySelector('.gallery-grid');
    for (const image of images) {
      const url = this.api.viewUrl(image);
      const img = Object.assign(document.createElement('img'), { src: url, title: image.filename, className: 'gallery-image' });
      img.addEventListener('click', () => openLightbox(url, image.filename));
      grid.prepend(img);
    }
  }
}
