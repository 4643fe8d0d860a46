// Stage: the pod's copy of the token. Kubernetes gave the pod this Secret; finding the same bytes
// inside the target's mount namespace proves this launch is for that pod. The pod's files are
// hostile: the path may be a symlink aimed at a host file, a FIFO that never answers, a device
// that never ends. So:
// - resolution starts at /proc/PID/root and RESOLVE_IN_ROOT keeps every symlink, absolute or
//   `../..`, inside the pod's root; RESOLVE_NO_MAGICLINKS refuses /proc/*/fd-style jumps out.
// - the final component may be a symlink: Kubernetes mounts `token -> ..data/token`, and
//   RESOLVE_IN_ROOT confines that hop too, so O_NOFOLLOW (which would refuse every real pod)
//   adds nothing and is not used.
// - O_NONBLOCK so a FIFO cannot stall us; fstat must say regular file before we read a byte;
//   at most MAX_SECRET + 1 bytes are read, so /dev/zero or a huge file cannot exhaust memory.
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
import { timingSafeEqual } from 'node:crypto'
import { QkError } from './errors.ts'
import { O_PATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS } from './sys.ts'

export const MAX_SECRET = 16 * 1024

export interface Openat2 {
  openat2(dirfd: number, path: string, flags: number, resolve: number): number
}

const ENOENT = 2
const ENOTDIR = 20
const ELOOP = 40
const EXDEV = 18
const ENXIO = 6

/** Reads the secret as the pod sees it at `path`. The caller re-checks the pin afterwards. */
export function readPodSecret(procRoot: string, pid: number, path: string, ops: Openat2): Buffer {
  const root = openSync(`${procRoot}/${pid}/root`, O_PATH | constants.O_DIRECTORY)
  let fd: number
  try {
    fd = ops.openat2(root, path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY,
      RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
  } finally {
    closeSync(root)
  }
  if (fd < 0) throw openError(-fd, path, pid)
  try {
    const st = fstatSync(fd)
    if (!st.isFile()) {
      throw new QkError('ERR_SECRET_NOT_REGULAR', `expected a regular file at ${path} in pid ${pid}'s root, got ${kindOf(st)}`, { pid, path })
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

function kindOf(st: import('node:fs').Stats): string {
  if (st.isFIFO()) return 'a FIFO'
  if (st.isCharacterDevice()) return 'a character device'
  if (st.isBlockDevice()) return 'a block device'
  if (st.isDirectory()) return 'a directory'
  if (st.isSocket()) return 'a socket'
  return 'something else'
}
