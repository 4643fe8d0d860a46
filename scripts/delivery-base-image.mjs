// The offline base image initcontainer/Dockerfile's build stage runs on (its NODE_IMAGE), made
// from Debian's repository and the host's Node, so the installer image builds with no registry.
//
//   CONTAINERS_CONF=FILE node scripts/delivery-base-image.mjs --root DIR --runroot DIR [--mirror URL]
//   -> prints {"image":"localhost/qemu-kube-build-base:<hash>","built":bool,"seconds":n,"bytes":n}
//
// test/helpers/delivery.ts runs this in test/helpers/podman.ts's store, under that store's
// flock: one build at a time. Run by hand, hold the same lock.
//
// What it holds: `mmdebstrap --variant=minbase` of bookworm with gcc, libc6-dev and make (so the
// Dockerfile's build stage finds them and skips apt), plus the host's /usr/bin/node and its npm
// at /usr/local (where the official node images keep them), and the host's CA bundle as
// NODE_EXTRA_CA_CERTS (npm ci in the build stage reaches the registry through whatever TLS
// the host trusts, e.g. an egress proxy's CA). The tag is a hash of the recipe and
// of the Node and npm files: the same recipe on the same host finds the image in the store; a new
// Node gives a new tag (older tags removed). A fresh machine builds it: ~40 s, ~90 MB download.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { basename } from 'node:path'
import { parseArgs } from 'node:util'
import { removeOtherTags } from './image-tags.mjs'

export const BASE_IMAGE_NAME = 'localhost/qemu-kube-build-base'
const SUITE = 'bookworm'
// What make-stage.sh's native build needs (native/Makefile links the front statically).
const INCLUDE = ['gcc', 'libc6-dev', 'make']
const NODE = '/usr/bin/node'
const NPM = '/usr/lib/node_modules/npm'
const CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt'

/** sha256 of every file under dir (paths and contents), for the tag. */
function hashTree(h, dir) {
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = `${dir}/${e.name}`
    if (e.isDirectory()) hashTree(h, p)
    else if (e.isFile()) h.update(`${p}\0`).update(readFileSync(p))
  }
}

/** The tag: the recipe (suite, variant, packages, mirror, this script) and the host's Node and npm. */
export function recipeHash(mirror) {
  const h = createHash('sha256')
  h.update(JSON.stringify({ SUITE, INCLUDE, mirror, variant: 'minbase' }))
  h.update(readFileSync(import.meta.filename))
  h.update(readFileSync(NODE))
  h.update(readFileSync(CA_BUNDLE))
  hashTree(h, NPM)
  return h.digest('hex').slice(0, 16)
}

export function ensureBaseImage({ podman, mirror, workDir }) {
  const t0 = process.hrtime.bigint()
  const image = `${BASE_IMAGE_NAME}:${recipeHash(mirror)}`
  const run = (args, opts = {}) => execFileSync(podman[0], [...podman.slice(1), ...args], { encoding: 'utf8', ...opts })
  const result = (built) => ({
    image, built, seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    bytes: Number(run(['image', 'inspect', '--format', '{{.Size}}', image]).trim()),
  })
  try {
    run(['image', 'exists', image], { stdio: 'ignore' })
    return result(false)
  } catch {
    // not in the store: build it
  }
  mkdirSync(workDir, { recursive: true, mode: 0o700 })
  const tmp = mkdtempSync(`${workDir}/base-`)
  try {
    // The hooks run on the host with the new root as $1: Node and npm where node images keep them.
    execFileSync('mmdebstrap', ['--variant=minbase', '--quiet', `--include=${INCLUDE.join(',')}`,
      '--customize-hook=install -D -m 0755 /usr/bin/node "$1/usr/local/bin/node"',
      `--customize-hook=mkdir -p "$1/usr/local/lib/node_modules" && cp -a ${NPM} "$1/usr/local/lib/node_modules/npm"`,
      '--customize-hook=ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm"',
      `--customize-hook=install -D -m 0644 ${CA_BUNDLE} "$1/usr/local/share/qemu-kube-build/ca-certificates.crt"`,
      // No apt lists or caches in the image (they are only for the build).
      '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
      SUITE, `${tmp}/rootfs.tar`, mirror], { stdio: ['ignore', 'ignore', 'inherit'] })
    if (statSync(`${tmp}/rootfs.tar`).size === 0) throw new Error('delivery-base-image: mmdebstrap wrote an empty tar')
    run(['import', '--quiet', '--change', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      '--change', 'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/qemu-kube-build/ca-certificates.crt', '--change', 'CMD ["/bin/bash"]', `${tmp}/rootfs.tar`, image], { stdio: ['ignore', 'ignore', 'inherit'] })
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
  removeOtherTags(run, BASE_IMAGE_NAME, image)
  return result(true)
}

if (basename(process.argv[1] ?? '') === 'delivery-base-image.mjs') {
  const { values: o } = parseArgs({ options: { root: { type: 'string' }, runroot: { type: 'string' }, mirror: { type: 'string' } } })
  if (!o.root || !o.runroot) {
    process.stderr.write('usage: CONTAINERS_CONF=FILE node scripts/delivery-base-image.mjs --root DIR --runroot DIR [--mirror URL]\n')
    process.exit(64)
  }
  const r = ensureBaseImage({ podman: ['podman', '--root', o.root, '--runroot', o.runroot], mirror: o.mirror ?? 'http://deb.debian.org/debian',
    workDir: `${o.root}/../stage` })
  process.stdout.write(`${JSON.stringify(r)}\n`)
}
