// One WebRTC viewer in Debian's headless Chromium, for tests and benchmarks that shape its link:
// plays BASE's `/whep` with the runner's own `/assets/whep-player.js` and prints, once a second,
// one JSON line on stdout with the video inbound-rtp statistics, the glass-to-glass latency of
// every frame shown since the line before and the picture size changes shown since then (wall
// clock ms). Ends after SECONDS (the session DELETEd).
//
//   node tests/browser/shaped-viewer.mjs BASE SECONDS
//
// BASE is `http://SERVER:PORT` (no trailing slash). The page is the driver's own, written into
// a document of the runner's origin, so the runner's modules load as they do for its own
// viewer page. Page console lines and errors go to stderr.
import { launch } from './chromium.mjs';

const [base, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg);
if (!base || !(seconds > 0)) {
  console.error('usage: shaped-viewer.mjs BASE SECONDS');
  process.exit(2);
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>shaped viewer</title>
<video id="v" autoplay muted playsinline></video>
<script type="module">
import { playWhep } from '/assets/whep-player.js';
window.latencies = [];
window.states = [];
window.sizes = [];
const video = document.getElementById('v');
// When the picture size changes (a rung switch reaches the screen), on the wall clock.
let shownHeight = 0;
const onFrame = (now, meta) => {
  if (meta.height !== shownHeight) {
    shownHeight = meta.height;
    window.sizes.push({ utcMs: Date.now(), width: meta.width, height: meta.height });
  }
  video.requestVideoFrameCallback(onFrame);
};
video.requestVideoFrameCallback(onFrame);
// Not a top-level await: the document's load would wait for the whole WHEP exchange.
playWhep(video, '/whep', {
  onLatency: (ms) => window.latencies.push(ms),
  onState: (state, detail) => window.states.push({ state, detail }),
}).then((player) => { window.player = player; }, (err) => { window.failed = String(err.message || err); });
</script>`;

// Read once a second: what a viewer would notice (size, frames, freezes) and what the link did.
const TICK = `(async () => {
  const s = window.player ? await window.player.stats('video') : null;
  const pick = (k) => (s && s[k] !== undefined ? s[k] : null);
  const latencies = (window.latencies || []).splice(0);
  const states = (window.states || []).splice(0);
  const sizes = (window.sizes || []).splice(0);
  return {
    connected: !!(window.player && window.player.connected),
    failed: window.failed || null,
    frameWidth: pick('frameWidth'), frameHeight: pick('frameHeight'),
    framesDecoded: pick('framesDecoded'), framesDropped: pick('framesDropped'),
    freezeCount: pick('freezeCount'), totalFreezesDuration: pick('totalFreezesDuration'),
    bytesReceived: pick('bytesReceived'), keyFramesDecoded: pick('keyFramesDecoded'),
    packetsLost: pick('packetsLost'), pliCount: pick('pliCount'), nackCount: pick('nackCount'),
    decoderImplementation: pick('decoderImplementation'),
    latencies, states, sizes,
  };
})()`;

const { context, close } = await launch([
  '--autoplay-policy=no-user-gesture-required',
  // Real host candidates (not mDNS names, which webrtcbin cannot resolve).
  '--disable-features=WebRtcHideLocalIpsWithMdns',
]);
let status = 0;
let errors = 0;
try {
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (msg) => console.error(`page: ${msg.text()}`));
  page.on('pageerror', (err) => { errors++; console.error(`page error: ${err.message}`); });
  // A document of the runner's own origin (and address space), rewritten: a page from
  // elsewhere may not load the runner's modules from a private address.
  await page.goto(`${base}/api/status`);
  await page.setContent(PAGE, { waitUntil: 'domcontentloaded' });
  const start = Date.now();
  let next = start + 1000;
  while (Date.now() - start < seconds * 1000) {
    await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
    next += 1000;
    const report = await page.evaluate(TICK);
    console.log(JSON.stringify({ t: (Date.now() - start) / 1000, errors, ...report }));
    if (report.failed) throw new Error(`WHEP failed: ${report.failed}`);
  }
  await page.evaluate('window.player && window.player.stop()');
} catch (err) {
  console.error(String(err));
  status = 1;
} finally {
  await close();
}
process.exit(status);
