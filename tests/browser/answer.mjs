// Answers a WebRTC offer in Debian's headless Chromium and reports what the browser decodes:
// for a subscriber whose signalling (an SFU's HTTP API, say) the caller does itself.
//
//   node tests/browser/answer.mjs [FRAMES] [TIMEOUT_SECONDS] < offer.json
//
// Reads the offer (`{"type": "offer", "sdp": "..."}`) from stdin and prints, one JSON object a
// line on stdout: first the answer (`{"type": "answer", "sdp": "..."}`, written once ICE
// gathering is complete, candidates included), then every 250 ms the received video's
// `{"framesDecoded", "codec" (e.g. "video/H264"), "packetsReceived", "frameWidth",
// "frameHeight"}` from getStats(). Exits 0 once FRAMES frames (default 30) have decoded, 1 when
// TIMEOUT_SECONDS (default 20) pass first.
// Page console lines and errors go to stderr.
import { launch } from './chromium.mjs';

const [frames = '30', timeout = '20'] = process.argv.slice(2);
let input = '';
for await (const chunk of process.stdin) input += chunk;
const offer = JSON.parse(input);
if (offer.type !== 'offer' || typeof offer.sdp !== 'string') {
  console.error('answer.mjs: stdin must hold {"type": "offer", "sdp": "..."}');
  process.exit(2);
}

const { context, close } = await launch([
  // Real host candidates rather than mDNS names, which an SFU may not resolve.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
]);
let status = 1;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (msg) => console.error(`page: ${msg.text()}`));
  page.on('pageerror', (err) => console.error(`page error: ${err.message}`));
  const answer = await page.evaluate(async (offer) => {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    pc.oniceconnectionstatechange = () => console.log(`ice ${pc.iceConnectionState}`);
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription(await pc.createAnswer());
    if (pc.iceGatheringState !== 'complete') {
      await new Promise((resolve) => {
        pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
      });
    }
    return { type: 'answer', sdp: pc.localDescription.sdp };
  }, offer);
  console.log(JSON.stringify(answer));

  const deadline = Date.now() + Number(timeout) * 1000;
  while (Date.now() < deadline) {
    const stats = await page.evaluate(async () => {
      const report = await window.pc.getStats();
      const video = [...report.values()].find((s) => s.type === 'inbound-rtp' && s.kind === 'video');
      if (!video) return { framesDecoded: 0, codec: null, packetsReceived: 0 };
      const codec = video.codecId && report.get(video.codecId);
      return {
        framesDecoded: video.framesDecoded || 0,
        codec: codec ? codec.mimeType : null,
        packetsReceived: video.packetsReceived || 0,
        frameWidth: video.frameWidth || 0,
        frameHeight: video.frameHeight || 0,
      };
    });
    console.log(JSON.stringify(stats));
    if (stats.framesDecoded >= Number(frames)) {
      status = 0;
      break;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  if (status) console.error(`answer.mjs: fewer than ${frames} frames decoded in ${timeout} s`);
} catch (err) {
  console.error(String(err));
} finally {
  await close();
}
process.exit(status);
