/** The toolbar's live status: queue length and connection from the server's events, and failed nodes as toasts. */
import { toast } from './toast.js';

export function showServerStatus(api) {
  const queueSize = document.getElementById('queue-size');
  const connection = document.getElementById('connection');
  api.addEventListener('status', (e) => { queueSize.textContent = `queue: ${e.detail.status?.exec_info?.queue_remaining ?? 0}`; });
  api.addEventListener('open', () => connection.classList.remove('offline'));
  api.addEventListener('close', () => connection.classList.add('offline'));
  api.addEventListener('execution_error', (e) => toast(`${e.detail.node_type} #${e.detail.node_id} failed: ${e.detail.exception_message}`, { kind: 'error' }));
}
