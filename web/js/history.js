/**
 * Undo/redo as a stack of serialised graphs. A snapshot per committed edit is simple and exact (every
 * edit, including ones added later, is undoable without writing an inverse); a 300-node graph is about
 * 150 kB of JSON, so a bounded stack of 100 stays small.
 */
export class UndoHistory {
  constructor(limit = 100) {
    this.limit = limit;
    this.past = [];
    this.future = [];
    this.current = null;
  }

  reset(snapshot) {
    this.past = [];
    this.future = [];
    this.current = snapshot;
  }

  /** Records `snapshot` as the new state; identical snapshots (a click that moved nothing) are ignored. */
  commit(snapshot) {
    if (snapshot === this.current) return false;
    if (this.current !== null) this.past.push(this.current);
    if (this.past.length > this.limit) this.past.shift();
    this.future = [];
    this.current = snapshot;
    return true;
  }

  undo() {
    if (!this.past.length) return null;
    this.future.push(this.current);
    this.current = this.past.pop();
    return this.current;
  }

  redo() {
    if (!this.future.length) return null;
    this.past.push(this.current);
    this.current = this.future.pop();
    return this.current;
  }
}
