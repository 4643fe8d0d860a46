// The launcher as its own bundle, built from the source under test (dist/ is whatever another
// build last left there). Same esbuild settings as scripts/build.mjs for the launcher, koffi
// external: built under node_modules/.cache, koffi resolves from the repo's node_modules; built
// under the system temp dir, it does not resolve at all (the "koffi cannot load" case).
import { build } from 'esbuild'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { resolve } from 'node:path'
import type { Test } from 'tap'

export const REPO = resolve(import.meta.dirname, '../..')

export async function bundleLauncher(t: Test, withKoffi = true): Promise<string> {
  mkdirSync(`${REPO}/node_modules/.cache`, { recursive: true })
  const dir = mkdtempSync(withKoffi ? `${REPO}/node_modules/.cache/qk-launcher-` : `${tmpdir()}/qk-launcher-`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const outfile = `${dir}/virt-launcher.cjs`
  await build({
    entryPoints: [`${REPO}/src/launcher/main.ts`], outfile, bundle: true, platform: 'node', target: 'node20', format: 'cjs',
    external: ['koffi'], logLevel: 'warning',
    define: { QK_BUILD: '{}', 'import.meta.url': '__qk_url', 'import.meta.dirname': '__dirname' },
    banner: { js: 'const __qk_url = require("node:url").pathToFileURL(__filename).href;' },
  })
  return outfile
}
