/** Short messages in the corner; errors stay until dismissed so they can be read in full. */
export function toast(message, { kind = 'info', timeout = 4000 } = {}) {
  let host = document.getElementById('toasts');
  if (!host) {
    host = Object.assign(document.createElement('div'), { id: 'toasts' });
    document.body.appendChild(host);
  }
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.textContent = message;
  el.title = 'Click to dismiss';
  el.addEventListener('click', () => el.remove());
  host.appendChild(el);
  if (kind !== 'error') setTimeout(() => el.remove(), timeout);
  return el;
}
