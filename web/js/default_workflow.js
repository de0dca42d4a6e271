/**
 * The first-open graphs, written as v0.4 files so they go through the same loader as any other
 * workflow. With a checkpoint: SD1.5 text-to-image as in docs/compatibility.md Appendix A, on the first checkpoint
 * the server lists. Without one: upscaling the sample photograph with a bundled Real-ESRGAN model
 * (both placed by `loom serve`), so a new user gets a real picture before downloading anything.
 */
export const DEMO_CHECKPOINT_COMMAND = '.venv/bin/loom tiny-checkpoint models/checkpoints/tiny-sd15.safetensors';
/** The sample photograph `loom serve` puts in the input folder (server/starter.py). */
export const SAMPLE_IMAGE = 'loom_sample_coffee.png';
/** The bundled upscaler preferred for photographs, when the server lists it. */
export const PHOTO_UPSCALER = 'RealESRGAN_x4plus.param';

const node = (id, type, pos, size, inputs, outputs, widgets_values) => ({
  id, type, pos, size, flags: {}, order: 0, mode: 0, inputs, outputs,
  properties: { 'Node name for S&R': type }, widgets_values });
const input = (name, type, link) => ({ name, type, link });
const output = (name, type, links) => ({ name, type, links });

export function defaultWorkflow(checkpoint = 'v1-5-pruned-emaonly-fp16.safetensors') {
  return {
    last_node_id: 9, last_link_id: 9,
    nodes: [
      node(4, 'CheckpointLoaderSimple', [26, 474], [315, 98], [], [output('MODEL', 'MODEL', [1]), output('CLIP', 'CLIP', [3, 5]), output('VAE', 'VAE', [8])], [checkpoint]),
      node(5, 'EmptyLatentImage', [473, 609], [315, 106], [], [output('LATENT', 'LATENT', [2])], [512, 512, 1]),
      node(6, 'CLIPTextEncode', [415, 186], [422, 164], [input('clip', 'CLIP', 3)], [output('CONDITIONING', 'CONDITIONING', [4])], ['a photo of a cat']),
      node(7, 'CLIPTextEncode', [413, 389], [425, 180], [input('clip', 'CLIP', 5)], [output('CONDITIONING', 'CONDITIONING', [6])], ['blurry']),
      node(3, 'KSampler', [863, 186], [315, 262], [input('model', 'MODEL', 1), input('positive', 'CONDITIONING', 4), input('negative', 'CONDITIONING', 6), input('latent_image', 'LATENT', 2)], [output('LATENT', 'LATENT', [7])], [42, 'randomize', 20, 8, 'euler', 'normal', 1]),
      node(8, 'VAEDecode', [1209, 188], [210, 46], [input('samples', 'LATENT', 7), input('vae', 'VAE', 8)], [output('IMAGE', 'IMAGE', [9])], []),
      node(9, 'SaveImage', [1451, 189], [210, 270], [input('images', 'IMAGE', 9)], [], ['ComfyUI']),
    ],
    links: [[1, 4, 0, 3, 0, 'MODEL'], [2, 5, 0, 3, 3, 'LATENT'], [3, 4, 1, 6, 0, 'CLIP'], [4, 6, 0, 3, 1, 'CONDITIONING'],
      [5, 4, 1, 7, 0, 'CLIP'], [6, 7, 0, 3, 2, 'CONDITIONING'], [7, 3, 0, 8, 0, 'LATENT'], [8, 4, 2, 8, 1, 'VAE'], [9, 8, 0, 9, 0, 'IMAGE']],
    groups: [], config: {}, extra: { ds: { scale: 0.75, offset: [10, -100] } }, version: 0.4,
  };
}

/** Load the sample photo, upscale it with `model`, save the result. */
export function upscaleWorkflow(model, image = SAMPLE_IMAGE) {
  return {
    last_node_id: 4, last_link_id: 3,
    nodes: [
      node(1, 'LoadImage', [40, 230], [315, 330], [], [output('IMAGE', 'IMAGE', [1]), output('MASK', 'MASK', [])], [image, 'image']),
      node(2, 'UpscaleModelLoader', [40, 110], [315, 58], [], [output('UPSCALE_MODEL', 'UPSCALE_MODEL', [2])], [model]),
      node(3, 'ImageUpscaleWithModel', [420, 150], [260, 46], [input('upscale_model', 'UPSCALE_MODEL', 2), input('image', 'IMAGE', 1)],
        [output('IMAGE', 'IMAGE', [3])], []),
      node(4, 'SaveImage', [740, 150], [400, 420], [input('images', 'IMAGE', 3)], [], ['loom_upscaled']),
    ],
    links: [[1, 1, 0, 3, 1, 'IMAGE'], [2, 2, 0, 3, 0, 'UPSCALE_MODEL'], [3, 3, 0, 4, 0, 'IMAGE']],
    groups: [], config: {}, extra: { ds: { scale: 1, offset: [0, 0] } }, version: 0.4,
  };
}

/** The graph a new page opens with: text-to-image when a checkpoint exists, else the upscale demo. */
export function firstWorkflow(checkpoints, upscalers) {
  if (checkpoints.length || !upscalers.length) return defaultWorkflow(checkpoints[0]);
  return upscaleWorkflow(upscalers.includes(PHOTO_UPSCALER) ? PHOTO_UPSCALER : upscalers[0]);
}

export function missingCheckpointMessage(modelsFolder = 'models/checkpoints') {
  return `No checkpoint found in ${modelsFolder}/. Put a Stable Diffusion 1.5 .safetensors file there, `
    + `or make a tiny demo checkpoint with: ${DEMO_CHECKPOINT_COMMAND} (random weights: it makes noise, not pictures). `
    + 'Until then, the upscale workflow below gives a real result: press Queue.';
}
