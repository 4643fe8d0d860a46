// Stage: which of libvirt's host files QEMU needs in its own mount namespace. QEMU runs in a
// mount namespace derived from the pod's, but libvirt names host files on its command line
// (`-object {"qom-type":"secret",...,"file":"/var/lib/libvirt/qemu/domain-3-vm1/master-key.aes"}`,
// channel sockets under .../channel/target/domain-3-vm1/). Mounting libvirt's whole tree into
// pods would show every domain's keys to every pod; instead the enter helper carries exactly the
// per-domain directories this argv names (cloned on the host with open_tree, attached in QEMU's
// namespace only). Any other path under a libvirt root is refused: it is another domain's, or a
// shared file we do not carry. The enter helper re-checks on the host, without following
// symlinks, that each directory is owned by the VM's uid: libvirt chowns a domain's directory
// to its DAC label, so carrying it gives QEMU nothing its uid could not already read.
import { QkError } from './errors.ts'

export interface CarryPlan {
  /** Host directories, each strictly under one of `roots`. */
  dirs: string[]
  /** The roots those live under (libvirt_domain_roots that are used). */
  roots: string[]
}

// A per-domain directory as libvirt 9 names it: domain-<id>-<short name>, directly under a root
// or under <root>/channel/target/ (virtio-serial channel sockets).
const DOMAIN_DIR = /^(?:channel\/target\/)?domain-\d{1,9}-[A-Za-z0-9._+-]{1,64}$/

export function carryPlan(argv: readonly string[], roots: readonly string[]): CarryPlan {
  const dirs = new Set<string>()
  const used = new Set<string>()
  for (const arg of argv) {
    for (const root of roots) {
      for (const path of pathsUnder(arg, root)) {
        const rel = path.slice(root.length + 1)
        const parts = rel.split('/')
        const depth = parts[0] === 'channel' ? 3 : 1
        const dir = parts.slice(0, depth).join('/')
        if (!DOMAIN_DIR.test(dir) || parts.slice(depth).some((p) => p === '..' || p === '.')) {
          throw new QkError('ERR_CARRY_OUTSIDE', `QEMU's argv names ${JSON.stringify(path.slice(0, 200))}, which is not inside a domain-N-NAME directory under ${root}`,
            { path: path.slice(0, 200) })
        }
        dirs.add(`${root}/${dir}`)
        used.add(root)
      }
    }
  }
  return { dirs: [...dirs].sort(), roots: roots.filter((r) => used.has(r)) }
}

// What may stand right before a path in QEMU's option syntax: the element's start, a JSON
// string's quote, an option separator, `key=` or `unix:`.
const BOUNDARY = ['', '"', ',', '=', ':']

/**
 * Every occurrence of ROOT/... in one argv element, up to the characters that end a path in
 * QEMU's option syntax (`,` separates options, `"` ends a JSON string). A path that ends in a
 * backslash, a doubled comma (QEMU's escaped comma) or a control character is refused rather
 * than guessed at.
 */
function pathsUnder(arg: string, root: string): string[] {
  const out: string[] = []
  let from = 0
  for (;;) {
    const i = arg.indexOf(root, from)
    if (i < 0) return out
    from = i + root.length
    const prev = i === 0 ? '' : arg[i - 1]!
    const next = arg[from] ?? ''
    // Only a path that starts here counts (start of the element, or after `"`, `,`, `=`, `:`);
    // `/x/var/lib/libvirt/qemu/...` is another host path and `.../qemu-other` another name.
    if (!BOUNDARY.includes(prev) || !['/', ...BOUNDARY].includes(next)) continue
    if (next !== '/') {
      throw new QkError('ERR_CARRY_OUTSIDE', `QEMU's argv names ${root} itself; only domain-N-NAME directories under it are carried`, { path: root })
    }
    let end = from
    while (end < arg.length && !',"'.includes(arg[end]!)) end++
    const path = arg.slice(i, end).replace(/\/+$/, '')
    if (/[\\\0-\x1f]/.test(path) || arg.slice(end, end + 2) === ',,') {
      throw new QkError('ERR_CARRY_OUTSIDE', `QEMU's argv names a path under ${root} with characters qemu-kube does not carry`, { path: path.slice(0, 200) })
    }
    out.push(path)
  }
}
