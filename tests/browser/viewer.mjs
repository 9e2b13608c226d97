// Opens a page in Debian's headless Chromium, waits until it sets `window.result`, prints it as
// JSON on stdout. Page console lines go to stderr.
//
//   node tests/browser/viewer.mjs URL [TIMEOUT_SECONDS]
//
// WAIT (a JS expression, default `window.result !== undefined`) and RESULT (a JS expression,
// may be a promise, default `window.result`) in the environment drive other pages.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, timeout = '60'] = process.argv.slice(2);
if (!url) {
  console.error('usage: viewer.mjs URL [TIMEOUT_SECONDS]');
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), 'hybridlive-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
    // Loopback-only networks: let WebRTC use 127.0.0.1 and show real host candidates.
    '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
  ],
});
let status = 0;
try {
  const page = await context.newPage();
  page.on('console', (msg) => console.error(`page: ${msg.text()}`));
  page.on('pageerror', (err) => console.error(`page error: ${err.message}`));
  await page.goto(url);
  const wait = process.env.WAIT || 'window.result !== undefined';
  const result = process.env.RESULT || 'window.result';
  await page.waitForFunction(wait, null, { timeout: Number(timeout) * 1000 });
  console.log(JSON.stringify(await page.evaluate(result)));
} catch (err) {
  console.error(String(err));
  status = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
