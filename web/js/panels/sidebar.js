/**
 * The sidebar: the node library, queue, gallery, saved-workflow and template panels, and the tabs that show
 * one at a time (a second click closes it). Lists that can go stale are refreshed as their tab opens,
 * and the canvas is resized to the room the panel leaves.
 */
import { Gallery } from './gallery.js';
import { LibraryPanel } from './library.js';
import { QueuePanel } from './queue_panel.js';
import { TemplatesPanel } from './templates.js';
import { WorkflowsPanel } from './workflows.js';

const panel = (name) => document.getElementById(`panel-${name}`);

export function openSidebar(session) {
  const { api, defs, editor, execution } = session;
  session.workflows = new WorkflowsPanel(panel('workflows'), api, (json, path) => session.open(json, path));
  session.queuePanel = new QueuePanel(panel('queue'), api, (json) => session.open(json));
  new Gallery(panel('gallery'), api, execution);
  session.templates = new TemplatesPanel(document.getElementById('tabs'), document.getElementById('workspace'), api,
    (json, name) => session.open(json, name));
  new LibraryPanel(panel('library'), defs, (type) => {
    const { controller } = session;
    editor.addNode(type, editor.view.toWorld(controller.width / 2 - 100, controller.height / 2 - 50));
  });
  for (const tab of document.querySelectorAll('.tab')) tab.addEventListener('click', () => toggleTab(session, tab));
}

function toggleTab(session, tab) {
  const open = tab.classList.contains('active');
  document.querySelectorAll('.tab, .panel').forEach((el) => el.classList.remove('active'));
  if (!open) {
    tab.classList.add('active');
    panel(tab.dataset.panel).classList.add('active');
    if (tab.dataset.panel === 'workflows') session.workflows.refresh();
    if (tab.dataset.panel === 'queue') session.queuePanel.refresh();
    if (tab.dataset.panel === 'templates') session.templates.refresh();
  }
  session.controller.resize();
}
