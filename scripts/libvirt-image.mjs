// A libvirtd image staged from the host's own Debian packages, for the libvirt-in-a-container
// test (test/e2e/libvirt-container.test.ts): no registry, no download.
//
//   CONTAINERS_CONF=FILE node scripts/libvirt-image.mjs --root DIR --runroot DIR
//   -> prints {"image":"localhost/qemu-kube-libvirtd:<hash>","built":bool,"seconds":n,"bytes":n,"packages":n}
//
// The tree is every file `dpkg -L` lists for the Depends/Pre-Depends closure of PACKAGES among
// the installed packages (an alternative `a | b` takes the first installed, a virtual name its
// installed provider), without documentation, plus the host's passwd/group (libvirt looks up
// qemu.conf's user and group; the front's group must be the same gid as on the host) and the
// empty directories libvirtd writes. The tag hashes the package list with versions, the files
// added here and this script: the same host gives the same tag, found in the store (no staging).
// Run under test/helpers/podman.ts's image lock (flock STORE.lock), as launcher-image.mjs.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { basename, dirname } from 'node:path'
import { parseArgs } from 'node:util'
import { removeOtherTags } from './image-tags.mjs'

export const IMAGE_NAME = 'localhost/qemu-kube-libvirtd'
export const PACKAGES = ['libvirt-daemon', 'libvirt-daemon-driver-qemu', 'libvirt-clients', 'qemu-system-x86', 'bash', 'coreutils', 'libstdc++6']
// libvirtd's state, the runtime dirs, and the mount points the test binds over.
const DIRS = [['/run', 0o755], ['/tmp', 0o1777], ['/var/tmp', 0o1777], ['/proc', 0o555], ['/sys', 0o555], ['/dev', 0o755],
  ['/etc/libvirt', 0o755], ['/var/lib/libvirt/qemu', 0o755], ['/var/log/libvirt/qemu', 0o755], ['/var/cache/libvirt/qemu', 0o755],
  ['/root', 0o700], ['/host', 0o755]]
// The host's merged-/usr links (/lib -> usr/lib, ...), recreated in the image.
const TOP_LINKS = ['/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'].filter((p) => {
  try {
    return lstatSync(p).isSymbolicLink()
  } catch {
    return false
  }
})
const SKIP = /^\/usr\/share\/(doc|man|info|locale|lintian|bug)\//

/** The installed packages PACKAGES need (Depends and Pre-Depends, transitively), sorted, with versions. */
export function closure(roots = PACKAGES) {
  const out = execFileSync('dpkg-query', ['-W', '-f', '${Package}\t${db:Status-Abbrev}\t${Version}\t${Provides}\t${Pre-Depends}, ${Depends}\n'], { encoding: 'utf8' })
  const deps = new Map()
  const version = new Map()
  const provider = new Map()
  for (const line of out.split('\n').filter(Boolean)) {
    const [name, status, ver, provides, d] = line.split('\t')
    if (!status.startsWith('ii')) continue
    deps.set(name, d)
    version.set(name, ver)
    for (const v of provides.split(',').map((s) => s.trim().split(/[ (]/)[0]).filter(Boolean)) provider.set(v, name)
  }
  const seen = new Set()
  const todo = [...roots]
  while (todo.length > 0) {
    const p = todo.pop()
    if (seen.has(p)) continue
    if (!deps.has(p)) throw new Error(`libvirt-image: package ${p} is not installed (run scripts/setup.sh)`)
    seen.add(p)
    for (const alt of deps.get(p).split(',').map((s) => s.trim()).filter(Boolean)) {
      const names = alt.split('|').map((s) => s.trim().split(/[ (]/)[0].split(':')[0])
      const hit = names.find((n) => deps.has(n)) ?? names.map((n) => provider.get(n)).find(Boolean)
      if (hit) todo.push(hit) // an unmet optional alternative (none installed): dpkg accepted it, so do we
    }
  }
  return [...seen].sort().map((p) => `${p}=${version.get(p)}`)
}

/** The paths the packages own (files, symlinks and directories), documentation left out. */
function packagePaths(pkgs) {
  const names = pkgs.map((p) => p.split('=')[0])
  const out = execFileSync('dpkg', ['-L', ...names], { encoding: 'utf8', maxBuffer: 64 << 20 })
  // Merged /usr: dpkg still names /bin/bash; stage it at /usr/bin/bash (the link comes after).
  const merged = (p) => {
    const top = TOP_LINKS.find((l) => p === l || p.startsWith(`${l}/`))
    return top === undefined ? p : `/${readlinkSync(top)}${p.slice(top.length)}`.replace('//', '/')
  }
  const paths = new Set(out.split('\n').filter((p) => p.startsWith('/') && p !== '/.' && !SKIP.test(p)).map(merged))
  return [...paths].sort()
}

function files() {
  return {
    '/etc/passwd': readFileSync('/etc/passwd', 'utf8'),
    '/etc/group': readFileSync('/etc/group', 'utf8'),
    '/etc/nsswitch.conf': 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n',
  }
}

export function ensureImage({ podman, workDir }) {
  const t0 = process.hrtime.bigint()
  const pkgs = closure()
  const extra = files()
  const h = createHash('sha256').update(pkgs.join('\n')).update(JSON.stringify(extra)).update(JSON.stringify(DIRS))
    .update(readFileSync(new URL(import.meta.url)))
  const image = `${IMAGE_NAME}:${h.digest('hex').slice(0, 16)}`
  const run = (args, opts = {}) => execFileSync(podman[0], [...podman.slice(1), ...args], { encoding: 'utf8', maxBuffer: 16 << 20, ...opts })
  const bytes = () => Number(run(['image', 'inspect', '--format', '{{.Size}}', image]).trim())
  const seconds = () => Number(process.hrtime.bigint() - t0) / 1e9
  try {
    run(['image', 'exists', image], { stdio: 'ignore' })
    return { image, built: false, seconds: seconds(), bytes: bytes(), packages: pkgs.length }
  } catch {
    // not in the store yet
  }
  mkdirSync(workDir, { recursive: true, mode: 0o700 })
  const tmp = mkdtempSync(`${workDir}/libvirtd-`)
  try {
    const root = `${tmp}/root`
    mkdirSync(root, { mode: 0o755 })
    writeFileSync(`${tmp}/list`, packagePaths(pkgs).map((p) => p.slice(1)).join('\n') + '\n')
    // tar keeps owners, modes and symlinks as dpkg left them; --no-recursion: directories as entries only.
    execFileSync('bash', ['-c', 'set -o pipefail; tar -C / --no-recursion -cf - -T "$1" | tar -C "$2" -xpf -', 'bash', `${tmp}/list`, root], { stdio: ['ignore', 'ignore', 'inherit'] })
    for (const l of TOP_LINKS) symlinkSync(readlinkSync(l), `${root}${l}`)
    for (const [d, mode] of DIRS) {
      mkdirSync(`${root}${d}`, { recursive: true })
      chmodSync(`${root}${d}`, mode)
    }
    for (const [p, text] of Object.entries(extra)) {
      mkdirSync(dirname(`${root}${p}`), { recursive: true })
      writeFileSync(`${root}${p}`, text, { mode: 0o644 })
    }
    execFileSync('bash', ['-c', 'set -o pipefail; tar -C "$1" -cf - . | "${@:2}"', 'bash', root, ...podman, 'import', '--quiet', '--change', 'CMD ["/bin/bash"]', '-', image],
      { stdio: ['ignore', 'ignore', 'inherit'] })
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
  removeOtherTags(run, IMAGE_NAME, image)
  return { image, built: true, seconds: seconds(), bytes: bytes(), packages: pkgs.length }
}

if (basename(process.argv[1] ?? '') === 'libvirt-image.mjs') {
  const { values: o } = parseArgs({ options: { root: { type: 'string' }, runroot: { type: 'string' } } })
  if (!o.root || !o.runroot) {
    process.stderr.write('usage: CONTAINERS_CONF=FILE node scripts/libvirt-image.mjs --root DIR --runroot DIR\n')
    process.exit(64)
  }
  const r = ensureImage({ podman: ['podman', '--root', o.root, '--runroot', o.runroot], workDir: `${o.root}/../stage` })
  process.stdout.write(`${JSON.stringify(r)}\n`)
}
