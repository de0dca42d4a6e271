/** Full-size view of one output image; click or Escape closes it. */
export function openLightbox(url, caption = '') {
  const box = document.createElement('div');
  box.className = 'lightbox';
  const img = Object.assign(document.createElement('img'), { src: url, alt: caption });
  const text = Object.assign(document.createElement('div'), { className: 'caption', textContent: caption });
  box.append(img, text);
  const close = () => { box.remove(); removeEventListener('keydown', onKey, true); };
  const onKey = (e) => { if (e.key === 'Escape') { e.stopPropagation(); close(); } };
  box.addEventListener('click', close);
  addEventListener('keydown', onKey, true);
  document.body.appendChild(box);
}
