/**
 * The server, as the editor sees it: JSON calls under /api and one WebSocket at /ws (docs/compatibility.md §C.1–C.3).
 * The client id lives in sessionStorage so a reload keeps its socket identity, and the server's `sid`
 * on the first status message wins. Binary frames carry previews: type 1 (format id + bytes) and type 4
 * (JSON metadata + bytes), the latter only after we announce supports_preview_metadata.
 */

export class ApiError extends Error {
  constructor(status, route, body) {
    super(`${route}: HTTP ${status}${body && body.error ? ` (${body.error.message || body.error})` : ''}`);
    this.status = status;
    this.route = route;
    this.body = body;
  }
}

/** What a refusal says, for a person: the server's error message and details, else the HTTP summary. */
export function refusalText(error) {
  const top = error instanceof ApiError && error.body ? error.body.error : null;
  if (!top || typeof top !== 'object') return error.message;
  return top.details ? `${top.message}: ${top.details}` : top.message || error.message;
}

const CLIENT_KEY = 'loom.clientId';

export class Api extends EventTarget {
  constructor(base = location.pathname.replace(/[^/]*$/, '').replace(/\/$/, '')) {
    super();
    this.base = base;
    this.clientId = sessionStorage.getItem(CLIENT_KEY) || null;
    this.socket = null;
    this.serverFeatures = {};
    this.reconnectDelay = 500;
    this.closed = false;
  }

  url(route) {
    return `${this.base}/api${route}`;
  }

  async fetch(route, options = {}) {
    return fetch(this.url(route), { cache: 'no-cache', ...options, headers: { 'Comfy-User': '', ...(options.headers || {}) } });
  }

  /** GET/POST returning parsed JSON; non-2xx raises ApiError with the parsed body when there is one. */
  async json(route, options = {}) {
    const response = await this.fetch(route, options);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = { error: { type: 'server_error', message: text } }; }
    if (!response.ok) throw new ApiError(response.status, route, body);
    return body;
  }

  post(route, body) {
    return this.json(route, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  }

  viewUrl(image) {
    const q = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder || '', type: image.type || 'output' });
    return this.url(`/view?${q}`);
  }

  async uploadImage(file) {
    const form = new FormData();
    form.append('image', file, file.name);
    form.append('type', 'input');
    return this.json('/upload/image', { method: 'POST', body: form });
  }

  connect() {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const query = this.clientId ? `?clientId=${encodeURIComponent(this.clientId)}` : '';
    const socket = new WebSocket(`${proto}://${location.host}${this.base}/ws${query}`);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    socket.addEventListener('open', () => {
      this.reconnectDelay = 500;
      socket.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
      this.emit('open', {});
    });
    socket.addEventListener('message', (event) => this.onMessage(event.data));
    socket.addEventListener('close', () => {
      this.emit('close', {});
      if (this.closed) return;
      setTimeout(() => this.connect(), this.reconnectDelay);
      this.reconnectDelay = Math.min(this.reconnectDelay * 2, 8000);
    });
  }

  onMessage(data) {
    if (data instanceof ArrayBuffer) { this.onBinary(data); return; }
    const message = JSON.parse(data);
    if (message.type === 'status' && message.data && message.data.sid) {
      this.clientId = message.data.sid;
      sessionStorage.setItem(CLIENT_KEY, this.clientId);
    }
    if (message.type === 'feature_flags') this.serverFeatures = message.data || {};
    this.emitServer(message.type, message.data || {});
  }

  onBinary(buffer) {
    const view = new DataView(buffer);
    const kind = view.getUint32(0);
    if (kind === 1) {
      const mime = view.getUint32(4) === 2 ? 'image/png' : 'image/jpeg';
      this.emitServer('b_preview', { blob: new Blob([buffer.slice(8)], { type: mime }), meta: {} });
    } else if (kind === 4) {
      const length = view.getUint32(4);
      const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, length)));
      this.emitServer('b_preview', { blob: new Blob([buffer.slice(8 + length)], { type: meta.image_type || 'image/jpeg' }), meta });
    }
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** A server message goes out under its own type and as one `server-event` for listeners of every type. */
  emitServer(type, detail) {
    this.emit(type, detail);
    this.emit('server-event', { type, data: detail });
  }
}
