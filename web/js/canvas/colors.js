/** Socket colours by type: the same type always has the same colour, so wiring can be read at a glance. */
const TYPE_COLORS = {
  MODEL: '#b39ddb', CLIP: '#ffd54f', VAE: '#ef5350', CONDITIONING: '#ffa726', LATENT: '#f48fb1',
  IMAGE: '#64b5f6', MASK: '#81c784', INT: '#4db6ac', FLOAT: '#aed581', STRING: '#a1887f', BOOLEAN: '#90a4ae',
  CLIP_VISION: '#ffe082', CONTROL_NET: '#26a69a', UPSCALE_MODEL: '#9575cd', SAMPLER: '#e57373', SIGMAS: '#ce93d8',
  NOISE: '#bdbdbd', GUIDER: '#80cbc4', COMBO: '#90a4ae',
};

/** Unknown (plugin) types get a stable colour from a hash of their name. */
export function typeColor(type) {
  if (TYPE_COLORS[type]) return TYPE_COLORS[type];
  let h = 0;
  for (const ch of String(type)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 55%, 62%)`;
}

export const THEME = {
  background: '#1b1d21', grid: '#23262b', gridMajor: '#2b2f35',
  node: '#2b2e34', nodeTitle: '#353941', nodeBorder: '#15171a', selected: '#e8eaed',
  text: '#d7dae0', textDim: '#8b919b', widget: '#202226', widgetText: '#c9ccd2',
  running: '#4caf50', error: '#ff5252', bypass: 'rgba(156, 39, 176, 0.35)', muted: 0.35,
  group: '#3f789e', link: '#8d96a3', boundary: 'rgba(60, 66, 78, 0.55)', reroute: '#e8eaed',
};

export const GROUP_COLORS = ['#3f789e', '#a1309b', '#b58b2a', '#8a5a3a', '#335533', '#4a4a8a', '#444444'];
