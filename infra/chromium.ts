/**
 * Headless Chromium, which the UI test (test/ui-browser.test.ts) drives through playwright-core. Debian's package
 * (infra/apt.ts): Playwright's own browser download is not reachable from these machines, and a distribution build
 * is patched and security-supported.
 */
import { ensureDebianPackage } from './apt';
import type { Log } from './cache';

/** Debian bookworm-security's chromium (`apt-cache policy chromium`); bump when the security archive moves on. */
export const CHROMIUM_DEB_VERSION = '156.0.8078.108-1~deb12u1';

/** The path of the chromium executable, installing the pinned Debian package first when none is on PATH. */
export function ensureChromium(log?: Log): Promise<string> {
  return ensureDebianPackage(
    {
      name: 'chromium',
      version: CHROMIUM_DEB_VERSION,
      // Debian's package installs `chromium`, other systems `chromium-browser`.
      binaries: ['chromium', 'chromium-browser'],
      // Some 100 MB with its libraries: longer than the lock's default wait on a slow mirror.
      lockTimeoutMs: 15 * 60_000,
    },
    log
  );
}
