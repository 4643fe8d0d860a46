// The few Linux system calls Node does not expose, bound with koffi, plus plain open/read/close
// for the /proc scan (Node's fs adds ~0.4 µs of validation per call; a node has 10k+ processes).
// Loaded only on the paths that touch the kernel (never by `check-config`).
// Syscall numbers 424/434/437 are the same on every architecture Linux added them to after 5.1.
import { loadKoffi } from './koffi-load.ts'
import { QkError } from './errors.ts'

const SYS_pidfd_send_signal = 424
const SYS_pidfd_open = 434
const SYS_openat2 = 437

// Node's fs.constants lacks O_PATH (asm-generic value, x86_64 and arm64 alike). Node adds
// O_CLOEXEC to every open itself, so it is never spelled out in this code base.
export const O_PATH = 0o10000000
export const RESOLVE_NO_MAGICLINKS = 0x02
export const RESOLVE_IN_ROOT = 0x10
const F_GETFD = 1
const F_SETFD = 2

export interface Sys {
  pidfdOpen(pid: number): number
  /** 0 while the pinned process lives; otherwise the errno (ESRCH once it has exited). */
  pidfdSignalZero(pidfd: number): number
  /** Returns the fd, or -errno. */
  openat2(dirfd: number, path: string, flags: number, resolve: number): number
  clearCloexec(fd: number): void
  execve(path: string, argv: readonly string[], env: readonly string[]): never
  /** openat(2) with a NUL-terminated path in a buffer; the fd, or -1. Adds no O_CLOEXEC. */
  openatZ(dirfd: number, path: Uint8Array, flags: number): number
  /** read(2) into buf; the count, or -1. */
  read(fd: number, buf: Uint8Array, len: number): number
  close(fd: number): number
  /** flock(2); 0, or -1 (EWOULDBLOCK with LOCK_NB when another holds it). */
  flock(fd: number, op: number): number
}

let cached: Sys | undefined
let lib: { koffi: typeof import('koffi'); libc: ReturnType<typeof import('koffi').load> } | undefined

/** koffi and libc, loaded once for the process (the agent's socket calls bind more functions on it). */
export function libc(): NonNullable<typeof lib> {
  if (lib === undefined) {
    const koffi = loadKoffi()
    lib = { koffi, libc: koffi.load('libc.so.6') }
  }
  return lib
}

export function sys(): Sys {
  cached ??= bind()
  return cached
}

function bind(): Sys {
  const { koffi, libc: lc } = libc()
  const syscall = lc.func('long syscall(long, ...)')
  const fcntl = lc.func('int fcntl(int, int, int)')
  const execve = lc.func('int execve(const char *, const char **, const char **)')
  const openat = lc.func('int openat(int, const void *, int)')
  const read = lc.func('long read(int, void *, unsigned long)')
  const close = lc.func('int close(int)')
  const flock = lc.func('int flock(int, int)')
  // Anonymous: koffi's type names are process-wide, and a named type could collide.
  const openHow = koffi.struct({ flags: 'uint64', mode: 'uint64', resolve: 'uint64' })
  const openHowPtr = koffi.pointer(openHow)
  const howSize = koffi.sizeof(openHow)

  const fail = (call: string): never => {
    throw new QkError('ERR_OS', `${call} failed: errno ${koffi.errno()}`, { syscall: call, errno: koffi.errno() })
  }

  return {
    pidfdOpen(pid) {
      const fd = Number(syscall(SYS_pidfd_open, 'int', pid, 'uint', 0))
      return fd >= 0 ? fd : -koffi.errno()
    },
    pidfdSignalZero(pidfd) {
      const r = Number(syscall(SYS_pidfd_send_signal, 'int', pidfd, 'int', 0, 'void *', null, 'uint', 0))
      return r === 0 ? 0 : koffi.errno()
    },
    openat2(dirfd, path, flags, resolve) {
      const how = { flags, mode: 0, resolve }
      const fd = Number(syscall(SYS_openat2, 'int', dirfd, 'str', path, openHowPtr, how, 'size_t', howSize))
      return fd >= 0 ? fd : -koffi.errno()
    },
    clearCloexec(fd) {
      const flags = fcntl(fd, F_GETFD, 0) as number
      if (flags < 0) fail(`fcntl(${fd}, F_GETFD)`)
      if (fcntl(fd, F_SETFD, flags & ~1) < 0) fail(`fcntl(${fd}, F_SETFD)`)
    },
    execve(path, argv, env) {
      execve(path, [...argv, null], [...env, null])
      return fail(`execve(${path})`)
    },
    openatZ: (dirfd, path, flags) => openat(dirfd, path, flags) as number,
    read: (fd, buf, len) => Number(read(fd, buf, len)),
    close: (fd) => close(fd) as number,
    flock: (fd, op) => flock(fd, op) as number,
  }
}
