/**
 * Keyboard shortcuts, one table for both the key handling and the help overlay, so the overlay can
 * never list a shortcut that does not work. `combo` is modifiers joined by '+', then the key
 * (event.key, lower-cased); "mod" is Ctrl, or Cmd on a Mac.
 */
export const KEYMAP = [
  { combo: 'mod+enter', command: 'queue', label: 'Queue the workflow' },
  { combo: 'mod+z', command: 'undo', label: 'Undo' },
  { combo: 'mod+shift+z', command: 'redo', label: 'Redo' },
  { combo: 'mod+y', command: 'redo', label: 'Redo' },
  { combo: 'mod+c', command: 'copy', label: 'Copy selected nodes' },
  { combo: 'mod+v', command: 'paste', label: 'Paste at the pointer' },
  { combo: 'mod+shift+v', command: 'pasteWithInputs', label: 'Paste, keeping input links' },
  { combo: 'mod+d', command: 'duplicate', label: 'Duplicate selected nodes' },
  { combo: 'delete', command: 'delete', label: 'Delete selected nodes' },
  { combo: 'backspace', command: 'delete', label: 'Delete selected nodes' },
  { combo: 'mod+a', command: 'selectAll', label: 'Select all nodes' },
  { combo: 'mod+b', command: 'bypass', label: 'Bypass selected nodes' },
  { combo: 'mod+m', command: 'mute', label: 'Mute selected nodes' },
  { combo: 'alt+c', command: 'collapse', label: 'Collapse or expand selected nodes' },
  { combo: 'mod+g', command: 'group', label: 'Group selected nodes' },
  { combo: 'mod+s', command: 'save', label: 'Save the workflow' },
  { combo: 'mod+o', command: 'open', label: 'Open a workflow file' },
  { combo: '.', command: 'fit', label: 'Fit the view to the selection (or all)' },
  { combo: '?', command: 'help', label: 'Show this help' },
  { combo: 'escape', command: 'escape', label: 'Close dialogs, clear the selection' },
];

export const POINTER_HELP = [
  ['Double-click canvas', 'Search and add a node (or just start typing)'],
  ['Drag canvas / Space+drag / middle-drag', 'Pan'],
  ['Wheel', 'Zoom around the pointer'],
  ['Ctrl+drag or Shift+drag on canvas', 'Rubber-band selection'],
  ['Drag output → input', 'Connect (incompatible slots are dimmed)'],
  ["Drag a node's bottom-right corner", 'Resize it (not smaller than its content)'],
  ['Drag a link off an input', 'Disconnect; drop on canvas to search compatible nodes'],
  ['Right-click', 'Menu for nodes, slots, links, groups and the canvas'],
  ['Double-click a subgraph node', 'Open it; the bar at the top leads back out'],
  ['Drag a reroute point', 'Move it (right-click it to delete it)'],
  ['Drag the dot beside a reroute point, or Shift+drag the point', 'Drag a new link out of it, through it'],
];

export function comboOf(event) {
  const parts = [];
  if (event.ctrlKey || event.metaKey) parts.push('mod');
  if (event.altKey) parts.push('alt');
  const key = event.key.toLowerCase();
  if (event.shiftKey && key.length > 1) parts.push('shift');
  else if (event.shiftKey && /^[a-z]$/.test(key)) parts.push('shift');
  parts.push(key);
  return parts.join('+');
}

export function commandFor(event) {
  const combo = comboOf(event);
  const entry = KEYMAP.find((e) => e.combo === combo);
  return entry ? entry.command : null;
}
