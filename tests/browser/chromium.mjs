// Debian's headless Chromium for the browser test drivers: a fresh profile per run, the flags
// every driver needs, and the cleanup of both.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Launches Chromium with the common flags and `extraArgs`; returns the browser context and a
// `close()` that ends it and removes its profile.
export async function launch(extraArgs = []) {
  const profile = mkdtempSync(join(tmpdir(), 'hybridlive-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...extraArgs,
    ],
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}
