// The self-contained launcher image for real test pods: `FROM scratch` plus a staged tree that
// carries everything the launcher and QEMU need, so a pod works with no checkout and no registry.
//
//   CONTAINERS_CONF=FILE node scripts/launcher-image.mjs --root DIR --runroot DIR [--repo DIR]
//   -> prints {"image":"localhost/qemu-kube-launcher:<hash>","built":bool,"seconds":n,"bytes":n}
//
// test/helpers/podman.ts owns the store (root, runroot, CONTAINERS_CONF) and runs this under
// `flock`, so two test files never build at once; run by hand, hold the same lock.
//
// The tag is a hash of what the tree would contain (every path, mode, symlink target and file
// content): an unchanged tree is found in the store and nothing is staged; a changed bundle, Node
// or QEMU gives a new tag and a build (< 3 s), and older tags are removed.
//
// Image layout (root:root):
//   /usr/bin/virt-launcher                 ENTRYPOINT, static (native/launcher-shim.c): execs
//                                          node --no-warnings virt-launcher.cjs ARGS as "virt-launcher"
//   /usr/lib/virt-launcher/node            the host's /usr/bin/node (+ its ldd libraries and loader)
//   /usr/lib/virt-launcher/virt-launcher.cjs   dist/virt-launcher.cjs (npm run build)
//   /usr/lib/virt-launcher/node_modules/   koffi: only the files its loader requires (as install.sh)
//   /usr/bin/qemu-system-x86_64            + ldd libraries, /usr/lib/<triplet>/qemu/*.so (accelerator
//                                          modules), /usr/share/{qemu,seabios}, /usr/lib/ipxe
//   /var/lib/libvirt/qemu /run/libvirt/qemu /var/run/kubevirt-private/qemu-kube /etc /proc /sys /dev
//   /tmp (1777)
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync,
  symlinkSync, writeFileSync,
} from 'node:fs'
import { basename, dirname, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { removeOtherTags } from './image-tags.mjs'

export const IMAGE_NAME = 'localhost/qemu-kube-launcher'
const QEMU = '/usr/bin/qemu-system-x86_64'
const NODE = '/usr/bin/node'
const LIB = '/usr/lib/virt-launcher'
const EMPTY_DIRS = ['/var/lib/libvirt/qemu', '/run/libvirt/qemu', '/var/run/kubevirt-private/qemu-kube', '/etc', '/proc', '/sys', '/dev']

/** @typedef {{ path: string, kind: 'file', src: string, mode: number } | { path: string, kind: 'dir', mode: number } | { path: string, kind: 'symlink', target: string }} Entry */

/** Everything the image holds, as a sorted list of entries (nothing is copied yet). */
export function manifest(repo, shim) {
  const arch = { x64: 'x64', arm64: 'arm64' }[process.arch] ?? process.arch
  const triplet = execFileSync('gcc', ['-dumpmachine'], { encoding: 'utf8' }).trim().replace('-pc-', '-').replace('-unknown-', '-')
  /** @type {Map<string, Entry>} */
  const out = new Map()
  const add = (e) => out.set(e.path, e)
  const file = (path, src, mode = 0o644) => add({ path, kind: 'file', src, mode })
  const bundle = `${repo}/dist/virt-launcher.cjs`
  if (!existsSync(bundle)) throw new Error(`launcher-image: no ${bundle} (run npm run build)`)

  file('/usr/bin/virt-launcher', shim, 0o755)
  file(`${LIB}/node`, NODE, 0o755)
  file(`${LIB}/virt-launcher.cjs`, bundle)
  // koffi: the same files scripts/install.sh picks (index.cjs -> src/koffi/index.cjs ->
  // src/koffi/src/static.cjs -> @koromix/koffi-linux-ARCH -> {linux,musl}_ARCH/koffi.node).
  const koffi = `${repo}/node_modules/koffi`
  const koffiNative = `${repo}/node_modules/@koromix/koffi-linux-${arch}`
  for (const f of ['package.json', 'LICENSE.txt', 'index.cjs', 'index.js', 'src/koffi/index.cjs', 'src/koffi/index.js',
    'src/koffi/src/static.cjs', 'src/koffi/src/static.js']) file(`${LIB}/node_modules/koffi/${f}`, `${koffi}/${f}`)
  for (const f of ['package.json', 'index.js', `linux_${arch}/koffi.node`, `musl_${arch}/koffi.node`]) {
    if (existsSync(`${koffiNative}/${f}`)) file(`${LIB}/node_modules/@koromix/koffi-linux-${arch}/${f}`, `${koffiNative}/${f}`)
  }

  file(QEMU, QEMU, 0o755)
  for (const lib of [...libraries(NODE), ...libraries(QEMU)]) {
    // At the library's real directory: with a merged /usr, /lib is a symlink in the image too.
    file(`${realpathSync(dirname(lib))}/${basename(lib)}`, lib, 0o755)
  }
  // QEMU loads its accelerator ops as modules ("could not load module for type 'tcg-accel-ops'").
  for (const dir of [`/usr/lib/${triplet}/qemu`, '/usr/share/qemu', '/usr/share/seabios', '/usr/lib/ipxe']) tree(dir, add)

  // The host's top-level symlinks (/lib -> usr/lib, ...), so that ldd's paths resolve.
  for (const name of ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']) {
    try {
      if (lstatSync(`/${name}`).isSymbolicLink()) add({ path: `/${name}`, kind: 'symlink', target: readlinkSync(`/${name}`) })
    } catch {
      // not on this host
    }
  }
  for (const d of EMPTY_DIRS) add({ path: d, kind: 'dir', mode: 0o755 })
  add({ path: '/tmp', kind: 'dir', mode: 0o1777 })
  return [...out.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
}

/** The libraries `ldd` names for a program, including the loader (the line without "=>"). */
function libraries(program) {
  return execFileSync('ldd', [program], { encoding: 'utf8' }).split('\n').flatMap((line) => {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line)
    return m ? [m[1]] : []
  })
}

/** A host directory, recursively: files (their own modes), subdirectories, symlinks as symlinks. */
function tree(dir, add) {
  if (!existsSync(dir)) throw new Error(`launcher-image: no ${dir} (install qemu-system-x86)`)
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`
    if (e.isSymbolicLink()) add({ path: p, kind: 'symlink', target: readlinkSync(p) })
    else if (e.isDirectory()) {
      add({ path: p, kind: 'dir', mode: lstatSync(p).mode & 0o7777 })
      tree(p, add)
    } else if (e.isFile()) add({ path: p, kind: 'file', src: p, mode: lstatSync(p).mode & 0o777 })
  }
}

/** sha256 of the tree the manifest describes (paths, kinds, modes, symlink targets, contents). */
export function treeHash(entries) {
  const h = createHash('sha256')
  for (const e of entries) {
    h.update(`${e.path}\0${e.kind}\0${'mode' in e ? e.mode.toString(8) : ''}\0${'target' in e ? e.target : ''}\0`)
    if (e.kind === 'file') h.update(createHash('sha256').update(readFileSync(e.src)).digest())
  }
  return h.digest('hex')
}

/** Copies the manifest into dir (dir becomes the image's "/"). */
export function stage(entries, dir) {
  const mkdirs = (d) => mkdirSync(`${dir}${d}`, { recursive: true, mode: 0o755 })
  for (const e of entries) {
    mkdirs(dirname(e.path))
    const to = `${dir}${e.path}`
    if (e.kind === 'dir') {
      mkdirSync(to, { recursive: true })
      chmodSync(to, e.mode) // after mkdir: the umask would eat the sticky and write bits
    } else if (e.kind === 'symlink') symlinkSync(e.target, to)
    else {
      copyFileSync(e.src, to)
      chmodSync(to, e.mode)
    }
  }
}

/**
 * The image for the current tree: found in the store by its hash tag, or staged and built.
 * `podman` is the command prefix that selects the store (e.g. ['podman', '--root', R, '--runroot', RR]).
 */
export function ensureImage({ repo, podman, shim, workDir }) {
  const t0 = process.hrtime.bigint()
  const entries = manifest(repo, shim)
  const image = `${IMAGE_NAME}:${treeHash(entries).slice(0, 16)}`
  const run = (args, opts = {}) => execFileSync(podman[0], [...podman.slice(1), ...args], { encoding: 'utf8', ...opts })
  const bytes = () => Number(run(['image', 'inspect', '--format', '{{.Size}}', image]).trim())
  const seconds = () => Number(process.hrtime.bigint() - t0) / 1e9
  try {
    run(['image', 'exists', image], { stdio: 'ignore' })
    return { image, built: false, seconds: seconds(), bytes: bytes() }
  } catch {
    // not in the store yet: build it
  }
  mkdirSync(workDir, { recursive: true, mode: 0o700 })
  const tmp = mkdtempSync(`${workDir}/stage-`)
  try {
    const ctx = `${tmp}/root`
    mkdirSync(ctx, { mode: 0o755 })
    stage(entries, ctx)
    // Outside the context, so it is not copied into the image.
    writeFileSync(`${tmp}/Containerfile`, 'FROM scratch\nCOPY . /\nENTRYPOINT ["/usr/bin/virt-launcher"]\n')
    run(['build', '--pull=never', '--quiet', '--label', `qemu-kube.tree=${image.split(':')[1]}`, '-t', image, '-f', `${tmp}/Containerfile`, ctx],
      { stdio: ['ignore', 'ignore', 'inherit'] })
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
  removeOtherTags(run, IMAGE_NAME, image)
  return { image, built: true, seconds: seconds(), bytes: bytes() }
}

/** The static ENTRYPOINT, built by native/Makefile into dist/native (make is incremental). */
export function buildShim(repo) {
  execFileSync('make', ['-s', '-C', `${repo}/native`, `BUILD=${repo}/dist/native`, `${repo}/dist/native/launcher-shim`], { stdio: ['ignore', 'ignore', 'inherit'] })
  return `${repo}/dist/native/launcher-shim`
}

// CLI. Matched by file name, not import.meta.url: a bundle that includes this module (esbuild)
// has the bundle's own URL there, and must not run the CLI.
if (basename(process.argv[1] ?? '') === 'launcher-image.mjs') {
  const { values: o } = parseArgs({ options: { root: { type: 'string' }, runroot: { type: 'string' }, repo: { type: 'string' } } })
  if (!o.root || !o.runroot) {
    process.stderr.write('usage: CONTAINERS_CONF=FILE node scripts/launcher-image.mjs --root DIR --runroot DIR [--repo DIR]\n')
    process.exit(64)
  }
  const repo = o.repo ?? resolve(dirname(process.argv[1]), '..')
  const r = ensureImage({ repo, podman: ['podman', '--root', o.root, '--runroot', o.runroot], shim: buildShim(repo), workDir: `${o.root}/../stage` })
  process.stdout.write(`${JSON.stringify(r)}\n`)
}
