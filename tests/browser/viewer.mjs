// Opens pages in Debian's headless Chromium (one browser, one tab per URL, all at once), waits
// until each sets `window.result`, prints the results as JSON on stdout: the object itself for
// one URL, an array in URL order for several. Page console lines go to stderr.
//
//   node tests/browser/viewer.mjs URL [URL...] [TIMEOUT_SECONDS]
//
// WAIT (a JS expression, default `window.result !== undefined`) and RESULT (a JS expression,
// may be a promise, default `window.result`) in the environment drive other pages.
import { launch } from './chromium.mjs';

const args = process.argv.slice(2);
const urls = args.filter((a) => !/^\d+(\.\d+)?$/.test(a));
const timeout = args.find((a) => /^\d+(\.\d+)?$/.test(a)) || '60';
if (!urls.length) {
  console.error('usage: viewer.mjs URL [URL...] [TIMEOUT_SECONDS]');
  process.exit(2);
}
const { context, close } = await launch([
  '--autoplay-policy=no-user-gesture-required',
  // Tabs other than the first keep full-rate timers and video frame callbacks.
  '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
  // Loopback-only networks: let WebRTC use 127.0.0.1 and show real host candidates.
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
]);
let status = 0;
try {
  const wait = process.env.WAIT || 'window.result !== undefined';
  const result = process.env.RESULT || 'window.result';
  const results = await Promise.all(urls.map(async (url, i) => {
    const page = i === 0 && context.pages().length ? context.pages()[0] : await context.newPage();
    const tag = urls.length > 1 ? `page ${i + 1}` : 'page';
    page.on('console', (msg) => console.error(`${tag}: ${msg.text()}`));
    page.on('pageerror', (err) => console.error(`${tag} error: ${err.message}`));
    await page.goto(url);
    await page.waitForFunction(wait, null, { timeout: Number(timeout) * 1000, polling: 200 });
    return page.evaluate(result);
  }));
  console.log(JSON.stringify(urls.length > 1 ? results : results[0]));
} catch (err) {
  console.error(String(err));
  status = 1;
} finally {
  await close();
}
process.exit(status);
