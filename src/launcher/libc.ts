// The libc calls the launcher needs and Node does not offer: waitpid for the PID-1 reaper, and
// for the QEMU link unix sockets that carry SCM_RIGHTS (Node's net module drops passed fds),
// poll and eventfd. No pidfd_send_signal: linked QEMUs live in the host's pid namespace, an
// ancestor of ours, and the kernel refuses (EINVAL) to signal a process outside the caller's pid
// namespace and its descendants; their watchers stop them (native/podlink.c). Bound once, before the launcher reports ready, so a
// missing or broken koffi is a startup error and not a failure at the first SIGCHLD or link.
// Layouts are those of LP64 Linux (x86_64 and arm64, the architectures koffi ships for here).
import { loadKoffi } from '../emulator/koffi-load.ts'
import { errnoOf, QkError } from '../emulator/errors.ts'

const AF_UNIX = 1
const SOCK_STREAM = 1
const SOCK_NONBLOCK = 0o4000
const SOCK_CLOEXEC = 0o2000000
const MSG_CMSG_CLOEXEC = 0x40000000
const MSG_DONTWAIT = 0x40
const MSG_NOSIGNAL = 0x4000
const MSG_CTRUNC = 0x8
const SOL_SOCKET = 1
const SCM_RIGHTS = 1
const EFD_CLOEXEC = 0o2000000
const EFD_NONBLOCK = 0o4000
const SO_PEERPIDFD = 77
export const POLLIN = 0x1
export const EAGAIN = 11

export interface Received {
  /** The bytes read (at most 64). */
  data: Buffer
  /** Every fd that arrived with them, already close-on-exec. */
  fds: number[]
  /** The kernel dropped control data that did not fit (fds may be missing). */
  truncated: boolean
  /** A control message other than SCM_RIGHTS arrived. */
  foreign: boolean
}

export interface Libc {
  waitpid(pid: number, flags: number): number
  /** A non-blocking AF_UNIX stream socket bound to `path` and listening; the fd, or -errno. */
  listenUnix(path: string, backlog: number): number
  /** accept4, non-blocking and close-on-exec; the fd, or -errno. */
  accept(fd: number): number
  /** One non-blocking recvmsg; the data and passed fds, or -errno. */
  recvWithFds(fd: number): Received | number
  /** One non-blocking send; the count, or -errno. */
  send(fd: number, data: Uint8Array): number
  /** A pidfd of the process that connected the socket (Linux >= 6.5), or -errno. */
  peerPidfd(fd: number): number
  close(fd: number): void
  eventfd(): number
  /** Makes an eventfd readable (wakes a poll on it). */
  signalEventfd(fd: number): void
  drainEventfd(fd: number): void
  /** poll(2) on fds for POLLIN; the revents of each, in order (empty on EINTR). */
  poll(fds: readonly number[], timeoutMs: number): number[]
  /** The same on a libuv worker thread, so a long wait leaves the event loop free. */
  pollAsync(fds: readonly number[], timeoutMs: number): Promise<number[]>
}

export function bindLibc(): Libc {
  let koffi: typeof import('koffi')
  let f
  try {
    koffi = loadKoffi()
    const libc = koffi.load('libc.so.6')
    f = {
      waitpid: libc.func('int waitpid(int, _Out_ int *, int)'),
      socket: libc.func('int socket(int, int, int)'),
      bind: libc.func('int bind(int, const void *, unsigned int)'),
      listen: libc.func('int listen(int, int)'),
      accept4: libc.func('int accept4(int, void *, void *, int)'),
      recvmsg: libc.func('long recvmsg(int, void *, int)'),
      send: libc.func('long send(int, const void *, unsigned long, int)'),
      getsockopt: libc.func('int getsockopt(int, int, int, _Out_ int *, _Inout_ unsigned int *)'),
      close: libc.func('int close(int)'),
      eventfd: libc.func('int eventfd(unsigned int, int)'),
      write: libc.func('long write(int, const void *, unsigned long)'),
      read: libc.func('long read(int, void *, unsigned long)'),
      poll: libc.func('int poll(void *, unsigned long, int)'),
    }
  } catch (e) {
    const why = errnoOf(e) ?? (e instanceof Error ? e.constructor.name : typeof e)
    throw new QkError('ERR_OS', `cannot load koffi (${why}); the launcher needs it to reap orphans and to link QEMUs`)
  }
  const k = koffi
  const fn = f
  const neg = (r: number | bigint) => (Number(r) >= 0 ? Number(r) : -k.errno())

  const pollfds = (fds: readonly number[]) => {
    const buf = Buffer.alloc(8 * Math.max(fds.length, 1))
    fds.forEach((fd, i) => {
      buf.writeInt32LE(fd, 8 * i)
      buf.writeInt16LE(POLLIN, 8 * i + 4)
    })
    return buf
  }
  const revents = (buf: Buffer, n: number) => Array.from({ length: n }, (_, i) => buf.readInt16LE(8 * i + 6))

  // recvmsg's msghdr points at an iovec and a control buffer: all in one native block, with
  // the addresses written in, because koffi passes a Buffer's memory only as a direct argument.
  const MSG = 0, IOV = 64, DATA = 96, DATA_LEN = 64, CTL = 160, CTL_LEN = 96, BLOCK = CTL + CTL_LEN
  const block = k.alloc('uint8', BLOCK)
  const base = k.address(block)
  const mem = () => Buffer.from(k.view(block, BLOCK))

  return {
    waitpid: (pid, flags) => fn.waitpid(pid, [0], flags) as number,
    listenUnix(path, backlog) {
      const addr = Buffer.alloc(110)
      addr.writeUInt16LE(AF_UNIX, 0)
      const p = Buffer.from(path)
      if (p.length > 107 || p.includes(0)) return -36 // ENAMETOOLONG
      p.copy(addr, 2)
      const fd = neg(fn.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0))
      if (fd < 0) return fd
      for (const r of [() => fn.bind(fd, addr, 2 + p.length + 1), () => fn.listen(fd, backlog)]) {
        const rc = neg(r())
        if (rc < 0) {
          fn.close(fd)
          return rc
        }
      }
      return fd
    },
    accept: (fd) => neg(fn.accept4(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC)),
    recvWithFds(fd) {
      const m = mem()
      m.fill(0)
      m.writeBigUInt64LE(base + BigInt(IOV), MSG + 16) // msg_iov
      m.writeBigUInt64LE(1n, MSG + 24) // msg_iovlen
      m.writeBigUInt64LE(base + BigInt(CTL), MSG + 32) // msg_control
      m.writeBigUInt64LE(BigInt(CTL_LEN), MSG + 40) // msg_controllen
      m.writeBigUInt64LE(base + BigInt(DATA), IOV) // iov_base
      m.writeBigUInt64LE(BigInt(DATA_LEN), IOV + 8) // iov_len
      const n = neg(fn.recvmsg(fd, block, MSG_CMSG_CLOEXEC | MSG_DONTWAIT))
      if (n < 0) return n
      const out = mem()
      const fds: number[] = []
      let foreign = false
      // struct cmsghdr: size_t len, int level, int type, then data; each aligned to 8.
      const ctlLen = Number(out.readBigUInt64LE(MSG + 40))
      for (let off = 0; off + 16 <= ctlLen;) {
        const len = Number(out.readBigUInt64LE(CTL + off))
        if (len < 16 || off + len > ctlLen) break
        if (out.readInt32LE(CTL + off + 8) === SOL_SOCKET && out.readInt32LE(CTL + off + 12) === SCM_RIGHTS) {
          for (let i = 16; i + 4 <= len; i += 4) fds.push(out.readInt32LE(CTL + off + i))
        } else {
          foreign = true
        }
        off += (len + 7) & ~7
      }
      const truncated = (out.readInt32LE(MSG + 48) & MSG_CTRUNC) !== 0
      return { data: Buffer.from(out.subarray(DATA, DATA + n)), fds, truncated, foreign }
    },
    send: (fd, data) => neg(fn.send(fd, data, data.length, MSG_DONTWAIT | MSG_NOSIGNAL)),
    peerPidfd(fd) {
      const out = [0]
      const len = [4]
      const rc = neg(fn.getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, out, len))
      return rc < 0 ? rc : out[0]!
    },
    close: (fd) => void fn.close(fd),
    eventfd: () => neg(fn.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
    signalEventfd(fd) {
      const one = Buffer.alloc(8)
      one.writeBigUInt64LE(1n)
      fn.write(fd, one, 8)
    },
    drainEventfd: (fd) => void fn.read(fd, Buffer.alloc(8), 8),
    poll(fds, timeoutMs) {
      const buf = pollfds(fds)
      return (fn.poll(buf, fds.length, timeoutMs) as number) < 0 ? [] : revents(buf, fds.length)
    },
    pollAsync(fds, timeoutMs) {
      // Native memory, not a Buffer: the worker thread writes revents after this call returns.
      const native = k.alloc('uint8', 8 * Math.max(fds.length, 1))
      const view = () => Buffer.from(k.view(native, 8 * Math.max(fds.length, 1)))
      pollfds(fds).copy(view())
      return new Promise((resolve) => {
        fn.poll.async(native, fds.length, timeoutMs, (err: unknown, rc: number) => {
          resolve(err || rc < 0 ? [] : revents(view(), fds.length))
          k.free(native)
        })
      })
    },
  }
}
