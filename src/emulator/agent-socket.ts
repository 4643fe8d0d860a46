// The three socket calls Node lacks, on the connection's own fd (socket._handle.fd), bound on
// the libc handle sys.ts already loaded:
//   - SO_PEERCRED: who connected (pid, uid, gid as of connect(2));
//   - SO_PEERPIDFD (Linux 6.5): a pidfd for that peer, taken by the kernel at connect time, so
//     the pid in SO_PEERCRED can be pinned without the race pidfd_open(pid) would have;
//   - sendmsg with SCM_RIGHTS: the reply's fds travel with its first byte (docs/CHAIN.md 3).
import { QkError } from './errors.ts'
import { libc } from './sys.ts'

const SOL_SOCKET = 1
const SO_PEERCRED = 17
const SO_PEERPIDFD = 77
const SCM_RIGHTS = 1
const MSG_NOSIGNAL = 0x4000

export interface PeerCred {
  pid: number
  uid: number
  gid: number
}

export interface SocketOps {
  peerCred(fd: number): PeerCred
  /** A pidfd for the peer (close it), or -errno. */
  peerPidfd(fd: number): number
  /** sendmsg(2) of buf with fds as SCM_RIGHTS; the bytes sent, or -errno (EAGAIN: nothing sent). */
  sendWithFds(fd: number, buf: Buffer, fds: readonly number[]): number
}

let cached: SocketOps | undefined

export function socketOps(): SocketOps {
  cached ??= bind()
  return cached
}

function bind(): SocketOps {
  const { koffi, libc: lc } = libc()
  const getsockopt = lc.func('int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)')
  const sendmsg = lc.func('long sendmsg(int, const void *, int)')
  // struct iovec and struct msghdr as bytes (LP64: x86_64 and arm64 alike); koffi.address
  // gives the Buffers' addresses, which stay valid while the Buffers are referenced below.
  const ptr = (b: Buffer) => koffi.address(b)

  return {
    peerCred(fd) {
      const out = Buffer.alloc(12)
      const len = [12]
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, out, len) !== 0) {
        throw new QkError('ERR_OS', `getsockopt(SO_PEERCRED) failed: errno ${koffi.errno()}`)
      }
      return { pid: out.readInt32LE(0), uid: out.readUInt32LE(4), gid: out.readUInt32LE(8) }
    },
    peerPidfd(fd) {
      const out = Buffer.alloc(4)
      const len = [4]
      if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, out, len) !== 0) return -koffi.errno()
      return out.readInt32LE(0)
    },
    sendWithFds(fd, buf, fds) {
      const iov = Buffer.alloc(16)
      iov.writeBigUInt64LE(ptr(buf), 0)
      iov.writeBigUInt64LE(BigInt(buf.length), 8)
      // struct cmsghdr { size_t len; int level; int type; int fds[] }, CMSG_SPACE-padded.
      const dataLen = 4 * fds.length
      const control = Buffer.alloc(fds.length === 0 ? 0 : 16 + ((dataLen + 7) & ~7))
      if (fds.length > 0) {
        control.writeBigUInt64LE(BigInt(16 + dataLen), 0)
        control.writeInt32LE(SOL_SOCKET, 8)
        control.writeInt32LE(SCM_RIGHTS, 12)
        fds.forEach((f, i) => control.writeInt32LE(f, 16 + 4 * i))
      }
      const msg = Buffer.alloc(56)
      msg.writeBigUInt64LE(ptr(iov), 16)
      msg.writeBigUInt64LE(1n, 24)
      if (control.length > 0) {
        msg.writeBigUInt64LE(ptr(control), 32)
        msg.writeBigUInt64LE(BigInt(control.length), 40)
      }
      const n = Number(sendmsg(fd, msg, MSG_NOSIGNAL))
      return n >= 0 ? n : -koffi.errno()
    },
  }
}
