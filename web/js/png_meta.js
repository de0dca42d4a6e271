/**
 * Text chunks of a PNG (tEXt, and uncompressed iTXt): SaveImage stores `prompt` and `workflow` there as
 * JSON (docs/compatibility.md §2.3). Compressed iTXt and zTXt are skipped: our server and ComfyUI never write them.
 */
const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export class PngFormatError extends Error {}

export function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new PngFormatError('not a PNG file (bad signature)');
  const view = new DataView(buffer);
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8');
  const texts = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === 'tEXt') {
      const zero = data.indexOf(0);
      texts[latin1.decode(data.subarray(0, zero))] = latin1.decode(data.subarray(zero + 1));
    } else if (type === 'iTXt') {
      const zero = data.indexOf(0);
      const compressed = data[zero + 1];
      const langEnd = data.indexOf(0, zero + 3);
      const transEnd = data.indexOf(0, langEnd + 1);
      if (!compressed) texts[utf8.decode(data.subarray(0, zero))] = utf8.decode(data.subarray(transEnd + 1));
    } else if (type === 'IEND') {
      break;
    }
    offset += 12 + length;
  }
  return texts;
}
