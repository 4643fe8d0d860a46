// Stage: the pod's copy of the token. Kubernetes gave the pod this Secret; finding the same bytes
// inside the target's mount namespace proves this launch is for that pod. The pod's files are
// hostile: the path may be a symlink aimed at a host file, a FIFO that never answers, a device
// that never ends. So:
// - resolution starts at /proc/PID/root and RESOLVE_IN_ROOT keeps every symlink, absolute or
//   `../..`, inside the pod's root; RESOLVE_NO_MAGICLINKS refuses /proc/*/fd-style jumps out.
// - the final component may be a symlink: Kubernetes mounts `token -> ..data/token`, and
//   RESOLVE_IN_ROOT confines that hop too, so O_NOFOLLOW (which would refuse every real pod)
//   adds nothing and is not used.
// - the pod chooses what sits at the path, so root looks before it opens: an O_PATH descriptor
//   (no open(2) of a FIFO or device ever happens: that alone can release a blocked writer or
//   run a driver's open), fstat on it: a regular file, owned by root (Kubernetes writes Secret
//   volumes as root), on a filesystem in pod_secret_fs_types (a Secret volume is a tmpfs);
//   only then is that same file reopened for reading through /proc/self/fd/N, and checked to be
//   the same inode;
// - at most MAX_SECRET + 1 bytes are read, so a huge file cannot exhaust memory.
import { closeSync, constants, fstatSync, openSync, readSync, statfsSync, type Stats } from 'node:fs'
import { timingSafeEqual } from 'node:crypto'
import { QkError, errnoOf } from './errors.ts'
import { O_PATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS } from './sys.ts'
import { SHARED } from '../shared/constants.ts'

export const MAX_SECRET = SHARED.MAX_TOKEN_BYTES

/** statfs f_type of the filesystems pod_secret_fs_types may name (linux/magic.h). */
export const FS_MAGIC = {
  tmpfs: 0x01021994,
  ramfs: 0x858458f6,
  ext4: 0xef53,
  xfs: 0x58465342,
  btrfs: 0x9123683e,
  overlay: 0x794c7630,
} as const
export type FsType = keyof typeof FS_MAGIC

export interface SecretRules {
  fsTypes: readonly FsType[]
  /** Who must own the file: root. Unit tests that run unprivileged pass their own uid. */
  owner?: number
}

export interface Openat2 {
  openat2(dirfd: number, path: string, flags: number, resolve: number): number
}

const ENOENT = 2
const ENOTDIR = 20
const ELOOP = 40
const EXDEV = 18
const ENXIO = 6

/**
 * An O_PATH fd of `path` as pid's mount namespace resolves it (inside its root, symlinks
 * resolved there, never against the host's root, no magic links), or -errno.
 */
export function openInPodRoot(procRoot: string, pid: number, path: string, ops: Openat2): number {
  let root: number
  try {
    root = openSync(`${procRoot}/${pid}/root`, O_PATH | constants.O_DIRECTORY)
  } catch (err) {
    // The pod may have died this instant; the caller's recheck tells that apart from a bug.
    throw new QkError('ERR_OS', `open(${procRoot}/${pid}/root) failed: ${errnoOf(err) ?? 'error'}`, { pid })
  }
  try {
    return ops.openat2(root, path, O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
  } finally {
    closeSync(root)
  }
}

/** Reads the secret as the pod sees it at `path`. The caller re-checks the pin afterwards. */
export function readPodSecret(procRoot: string, pid: number, path: string, ops: Openat2, rules: SecretRules): Buffer {
  const pathFd = openInPodRoot(procRoot, pid, path, ops)
  if (pathFd < 0) throw openError(-pathFd, path, pid)
  let st: Stats
  try {
    st = fstatSync(pathFd)
    checkFile(st, pathFd, path, pid, rules)
  } catch (err) {
    closeSync(pathFd)
    throw err
  }
  let fd: number
  try {
    fd = openSync(`/proc/self/fd/${pathFd}`, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY)
  } catch (err) {
    throw new QkError('ERR_OS', `reopening ${path} in pid ${pid}'s root failed: ${errnoOf(err) ?? 'error'}`, { pid, path })
  } finally {
    closeSync(pathFd)
  }
  try {
    const again = fstatSync(fd)
    if (again.dev !== st.dev || again.ino !== st.ino) {
      throw new QkError('ERR_SECRET_UNSAFE', `${path} in pid ${pid}'s root changed between its check and its read`, { pid, path })
    }
    const buf = Buffer.alloc(MAX_SECRET + 1)
    let n = 0
    for (let r = 1; r > 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, null)
    if (n > MAX_SECRET) {
      throw new QkError('ERR_SECRET_TOO_BIG', `expected at most ${MAX_SECRET} bytes at ${path}, got more`, { pid, path })
    }
    return buf.subarray(0, n)
  } finally {
    closeSync(fd)
  }
}

function checkFile(st: Stats, pathFd: number, path: string, pid: number, rules: SecretRules): void {
  const where = `${path} in pid ${pid}'s root`
  if (!st.isFile()) {
    throw new QkError('ERR_SECRET_NOT_REGULAR', `expected a regular file at ${where}, got ${kindOf(st)}`, { pid, path })
  }
  const owner = rules.owner ?? 0
  if (st.uid !== owner) {
    throw new QkError('ERR_SECRET_UNSAFE', `expected ${where} to be owned by uid ${owner}, got uid ${st.uid}`, { pid, path })
  }
  // statfs through our own descriptor's magic link: the filesystem of exactly the file checked.
  const type = Number(statfsSync(`/proc/self/fd/${pathFd}`).type)
  if (!rules.fsTypes.some((name) => FS_MAGIC[name] === type)) {
    throw new QkError('ERR_SECRET_UNSAFE',
      `expected ${where} on ${rules.fsTypes.join(' or ')} (pod_secret_fs_types), got filesystem type 0x${type.toString(16)}`, { pid, path })
  }
}

/** Constant time in the token's bytes. One trailing newline in the file is allowed. */
export function secretMatches(podCopy: Buffer, token: string): boolean {
  let pod = podCopy
  if (pod.at(-1) === 0x0a) pod = pod.subarray(0, -1)
  const ours = Buffer.from(token, 'utf8')
  // Lengths differ: spend the same time anyway, then say no. A token's length is not secret.
  const sameLength = pod.length === ours.length
  const equal = timingSafeEqual(sameLength ? pod : ours, ours)
  return sameLength && equal
}

function openError(errno: number, path: string, pid: number): QkError {
  const where = `${path} in pid ${pid}'s root`
  switch (errno) {
    case ENOENT:
    case ENOTDIR:
      return new QkError('ERR_SECRET_MISSING', `expected the pod's token at ${where}, got no such file`, { pid, path })
    case EXDEV:
    case ELOOP:
      return new QkError('ERR_SECRET_ESCAPE', `resolving ${where} left the pod's root or met a magic link (errno ${errno})`, { pid, path })
    case ENXIO:
      return new QkError('ERR_SECRET_NOT_REGULAR', `expected a regular file at ${where}, got a socket or device`, { pid, path })
    default:
      return new QkError('ERR_OS', `openat2(${where}) failed: errno ${errno}`, { pid, path, errno })
  }
}

function kindOf(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO'
  if (st.isCharacterDevice()) return 'a character device'
  if (st.isBlockDevice()) return 'a block device'
  if (st.isDirectory()) return 'a directory'
  if (st.isSocket()) return 'a socket'
  return 'something else'
}
