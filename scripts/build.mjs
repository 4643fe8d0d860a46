// `npm run build`: compile native/ and bundle src/ into one directory.
//   node scripts/build.mjs [--prefix P] [--sysconfdir S] [--node N] [--out DIR]
// The prefix, sysconfdir and node path are compiled into the setuid front (C) and the bundle
// (QK_BUILD), so an installed qemu-kube never takes a path from its caller. The default out dir
// is dist/, which is also what `npx qemu-kube` runs in a clone.
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { addCodeCache } from './code-cache.mjs'
import { loadShared, renderHeader } from './constants-header.mjs'

const { values: o } = parseArgs({
  options: {
    prefix: { type: 'string', default: '/var/lib/kubevirt/qemu-kube' },
    sysconfdir: { type: 'string', default: '/etc/kubevirt' },
    node: { type: 'string', default: '/usr/bin/node' },
    out: { type: 'string', default: 'dist' },
    'no-native': { type: 'boolean', default: false },
  },
})
const root = resolve(import.meta.dirname, '..')
const out = resolve(root, o.out)
mkdirSync(out, { recursive: true })

// The constants C shares with the TypeScript (src/shared/constants.ts), rendered before make;
// written only when it changed, so make does not rebuild for nothing.
const header = renderHeader(await loadShared(root))
const headerPath = `${root}/native/qk-constants.h`
if ((() => { try { return readFileSync(headerPath, 'utf8') } catch { return '' } })() !== header) writeFileSync(headerPath, header)
// `qemu-kube version` names the source it was built from; a tarball without .git says so.
const revision = (() => {
  try {
    return execFileSync('git', ['-C', root, 'describe', '--always', '--dirty', '--tags'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return 'unknown'
  }
})()

if (!o['no-native']) {
  execFileSync('make', ['-s', '-C', `${root}/native`, `PREFIX=${o.prefix}`, `SYSCONFDIR=${o.sysconfdir}`, `NODE=${o.node}`, `BUILD=${out}/native`],
    { stdio: 'inherit' })
}

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  // koffi loads a native module from beside its own files; it is installed next to the bundle.
  external: ['koffi'],
  minifySyntax: true,
  minifyWhitespace: true,
  legalComments: 'none',
  define: {
    QK_BUILD: JSON.stringify({ prefix: o.prefix, sysconfdir: o.sysconfdir, revision, version: JSON.parse(readFileSync(`${root}/package.json`, 'utf8')).version }),
    'import.meta.url': '__qk_url',
    'import.meta.dirname': '__dirname',
  },
  banner: { js: '#!/usr/bin/env node\nconst __qk_url = require("node:url").pathToFileURL(__filename).href;' },
  logLevel: 'warning',
}
// pino's transports run in worker threads; qemu-kube never uses them (one synchronous stderr
// destination), so the launch path does not load worker_threads, thread-stream and friends.
// sonic-boom (pino's destination) requires node:assert for one argument check; node:assert loads
// internal/util/colors, which opens process.stderr and with it the streams stack (~1.5 ms, and a
// second handle on fd 2 that nothing should write through). A plain check does the same job.
const noPinoTransport = {
  name: 'no-pino-transport',
  setup(b) {
    b.onResolve({ filter: /^(\.\/transport|\.\/lib\/transport|worker_threads)$/ }, (args) =>
      /node_modules\/pino\//.test(args.importer) ? { path: args.path, namespace: 'pino-stub' } : undefined)
    b.onResolve({ filter: /^assert$/ }, (args) =>
      /node_modules\/sonic-boom\//.test(args.importer) ? { path: args.path, namespace: 'pino-stub' } : undefined)
    b.onLoad({ filter: /.*/, namespace: 'pino-stub' }, (args) => ({
      contents: args.path === 'worker_threads'
        ? 'module.exports = { isMainThread: true }'
        : args.path === 'assert'
          ? 'module.exports = (ok, message) => { if (!ok) throw new Error(message) }'
          : 'module.exports = () => { throw new Error("pino transports are not part of qemu-kube") }',
      loader: 'js',
    }))
  },
}
await build({ ...common, plugins: [noPinoTransport], entryPoints: [`${root}/src/emulator/main.ts`], outfile: `${out}/qemu-kube.cjs` })
// The launch bundle becomes a loader plus a V8 code cache made by --node (scripts/code-cache.mjs).
const cacheNote = addCodeCache(`${out}/qemu-kube.cjs`, o.node)
if (cacheNote) console.warn(`build: ${cacheNote}`)
await build({ ...common, banner: { js: common.banner.js.replace(/^#!.*\n/, '') }, entryPoints: [`${root}/src/emulator/cli.ts`],
  outfile: `${out}/qemu-kube-cli.cjs` })
chmodSync(`${out}/qemu-kube.cjs`, 0o755)
await build({ ...common, entryPoints: [`${root}/src/launcher/main.ts`], outfile: `${out}/virt-launcher.cjs` })
// qemu-kube finds the pod by argv[0] == virt-launcher, so Node must run under that name.
// This wrapper is for a checkout only (it runs --node and finds koffi in the repository's
// node_modules). Real pods run the launcher image instead (scripts/launcher-image.mjs): Node,
// this bundle, koffi and QEMU in the image, and a static C shim (native/launcher-shim.c, built
// into native/ above) as its ENTRYPOINT doing the same exec under the same name.
writeFileSync(`${out}/virt-launcher`, `#!/bin/bash
exec -a virt-launcher ${o.node} --no-warnings "$(dirname "$(readlink -f "$0")")/virt-launcher.cjs" "$@"
`, { mode: 0o755 })
