// Reads hybridlive capture stamps (see crates/stamp/src/lib.rs for the format) from H.264
// access units in Annex B form, as RTCRtpReceiver.createEncodedStreams() hands them over.

const UUID = [0x68, 0x79, 0x62, 0x72, 0x69, 0x64, 0x4c, 0x49, 0x9e, 0x5a, 0x71, 0x3c, 0xd2, 0x0b, 0x86, 0xf4];

function nextStart(bytes, from) {
  for (let k = from; k + 3 <= bytes.length; k++) {
    if (bytes[k] === 0 && bytes[k + 1] === 0 && bytes[k + 2] === 1) return k + 3;
  }
  return -1;
}

/** The NAL units of an Annex B buffer up to and including the first slice (not scanned). */
function* nalUnits(bytes) {
  let start = nextStart(bytes, 0);
  while (start >= 0 && start < bytes.length) {
    const type = bytes[start] & 0x1f;
    if (type >= 1 && type <= 5) {
      yield { type, start, end: bytes.length };
      return;
    }
    const next = nextStart(bytes, start);
    let end = next < 0 ? bytes.length : next - 3;
    while (end > start && bytes[end - 1] === 0) end--;
    yield { type, start, end };
    start = next;
  }
}

function unescape(bytes) {
  const out = [];
  let zeros = 0;
  for (const b of bytes) {
    if (zeros >= 2 && b === 3) { zeros = 0; continue; }
    out.push(b);
    zeros = b === 0 ? zeros + 1 : 0;
  }
  return out;
}

function readVarint(rbsp, pos) {
  let value = 0;
  for (;;) {
    if (pos.i >= rbsp.length) return -1;
    const b = rbsp[pos.i++];
    value += b;
    if (b !== 0xff) return value;
  }
}

/**
 * The first stamp of an H.264 access unit, or null.
 * @returns {{captureNs: bigint, captureMs: number, frame: number, streamId: string} | null}
 */
export function findStamp(bytes) {
  for (const unit of nalUnits(bytes)) {
    if (unit.type >= 1 && unit.type <= 5) return null;
    if (unit.type !== 6) continue;
    const rbsp = unescape(bytes.subarray(unit.start + 1, unit.end));
    const pos = { i: 0 };
    while (pos.i < rbsp.length && !(rbsp.length - pos.i === 1 && rbsp[pos.i] === 0x80)) {
      const type = readVarint(rbsp, pos);
      const size = readVarint(rbsp, pos);
      if (type < 0 || size < 0 || pos.i + size > rbsp.length) break;
      const payload = rbsp.slice(pos.i, pos.i + size);
      pos.i += size;
      if (type !== 5 || size < 30 || !UUID.every((b, k) => payload[k] === b)) continue;
      const stamp = stampFromUserData(payload.slice(16));
      if (stamp) return stamp;
    }
  }
  return null;
}

/** The UUID of the stamp's user data unregistered SEI, as hls.js spells it in its samples. */
export const STAMP_UUID = UUID.map((b) => b.toString(16).padStart(2, '0')).join('')
  .replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');

/**
 * A stamp from the user data that follows the UUID in the SEI payload (what hls.js hands over
 * as `userDataBytes` in FRAG_PARSING_USERDATA samples), or null.
 * @returns {{captureNs: bigint, captureMs: number, frame: number, streamId: string} | null}
 */
export function stampFromUserData(data) {
  if (data.length < 14 || data[0] === 0) return null;
  let captureNs = 0n;
  for (let k = 1; k < 9; k++) captureNs = (captureNs << 8n) | BigInt(data[k]);
  const frame = ((data[9] << 24) | (data[10] << 16) | (data[11] << 8) | data[12]) >>> 0;
  const idLen = data[13];
  if (14 + idLen > data.length) return null;
  const streamId = new TextDecoder().decode(new Uint8Array(Array.from(data.slice(14, 14 + idLen))));
  return { captureNs, captureMs: Number(captureNs / 1000n) / 1000, frame, streamId };
}
