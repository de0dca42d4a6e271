/**
 * What the server is doing to the graph, from WebSocket events (docs/compatibility.md §1.4, §C.3): which node runs, its
 * step progress, cached nodes, live previews, output images, and execution or validation errors. This
 * is display state, kept apart from the graph so it never ends up in a saved file or the undo stack.
 */
export class ExecutionState extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.promptId = null;
    this.running = null;
    this.progress = null;
    this.queueRemaining = 0;
    this.outputs = new Map();
    this.previews = new Map();
    this.errors = new Map();
    this.bind();
  }

  changed() {
    this.dispatchEvent(new Event('change'));
  }

  bind() {
    const on = (type, fn) => this.api.addEventListener(type, (e) => { fn(e.detail); this.changed(); });
    on('status', (d) => { this.queueRemaining = d.status?.exec_info?.queue_remaining ?? this.queueRemaining; });
    on('execution_start', (d) => { this.promptId = d.prompt_id; this.errors.clear(); });
    on('executing', (d) => {
      const node = d.display_node ?? d.node;
      this.running = node == null ? null : String(node);
      this.progress = null;
      if (node == null) this.previews.clear();
    });
    on('progress', (d) => { this.progress = { node: String(d.node ?? this.running), value: d.value, max: d.max }; });
    on('executed', (d) => {
      const id = String(d.display_node ?? d.node);
      const images = (d.output && d.output.images) || [];
      const prior = d.merge ? this.outputs.get(id) || [] : [];
      this.outputs.set(id, [...prior, ...images]);
      this.previews.delete(id);
      this.dispatchEvent(new CustomEvent('images', { detail: images }));
    });
    on('execution_success', () => { this.running = null; this.progress = null; });
    on('execution_interrupted', () => { this.running = null; this.progress = null; });
    on('execution_error', (d) => {
      this.running = null;
      this.progress = null;
      this.errors.set(String(d.node_id), { message: `${d.exception_type}: ${d.exception_message}`, inputs: new Map(), type: d.node_type });
      markInstances(this.errors);
    });
    on('b_preview', (d) => {
      const id = String(d.meta.display_node_id ?? d.meta.node_id ?? this.running);
      const old = this.previews.get(id);
      if (old) URL.revokeObjectURL(old);
      this.previews.set(id, URL.createObjectURL(d.blob));
    });
  }

  /** `node_errors` of a POST /prompt reply, shown on the nodes and inputs they name (docs/compatibility.md §1.3). */
  showValidation(nodeErrors) {
    this.errors.clear();
    for (const [id, entry] of Object.entries(nodeErrors || {})) {
      const inputs = new Map();
      const lines = [];
      for (const error of entry.errors || []) {
        const text = error.details ? `${error.message}: ${error.details}` : error.message;
        lines.push(text);
        const name = error.extra_info && error.extra_info.input_name;
        if (name) inputs.set(name, text);
      }
      this.errors.set(String(id), { message: lines.join('\n'), inputs, type: entry.class_type });
    }
    markInstances(this.errors);
    this.changed();
  }

  clearErrors() {
    this.errors.clear();
    this.changed();
  }

  /** Image URL for a node: its live preview while running, else its last output. */
  imageFor(id) {
    const key = String(id);
    if (this.previews.has(key)) return { url: this.previews.get(key), count: 1 };
    const images = this.outputs.get(key);
    if (images && images.length) return { url: this.api.viewUrl(images[images.length - 1]), count: images.length };
    return null;
  }
}

/**
 * A node inside a subgraph has the prompt id "<instance>:<inner id>" (nested: "57:3:8"), so its
 * error also marks every instance around it, each naming the inner node and its message: the
 * instance is what shows on the canvas until the subgraph is opened.
 */
function markInstances(errors) {
  // Marked afresh each time: what an earlier call added goes first.
  for (const [id, entry] of [...errors]) { if (entry.inner) errors.delete(id); else entry.message = entry.own ?? entry.message; }
  const inner = [...errors].filter(([id]) => id.includes(':'));
  for (const [id, error] of inner) {
    const parts = id.split(':');
    for (let depth = parts.length - 1; depth > 0; depth--) {
      const outer = parts.slice(0, depth).join(':');
      const entry = errors.get(outer) || { message: '', inputs: new Map(), inner: true };
      entry.own ??= entry.message;
      const name = `${error.type || 'node'} #${parts.slice(depth).join(':')}`;
      const lines = (error.own ?? error.message).split('\n').map((line) => `${name}: ${line}`);
      entry.message = [entry.message, ...lines].filter(Boolean).join('\n');
      errors.set(outer, entry);
    }
  }
}
